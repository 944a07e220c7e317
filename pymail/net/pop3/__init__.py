"""The POP3 service: asyncio glue (`server`) driving the sans-IO command reader of
`pymail.proto.pop3` against the store through one `session.Pop3Session` per connection."""

from pymail.net.pop3.server import Pop3Service
from pymail.net.pop3.session import MaildropLocks

__all__ = ["MaildropLocks", "Pop3Service"]
