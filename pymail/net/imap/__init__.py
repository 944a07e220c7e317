"""The IMAP service: asyncio glue (`server`) driving the sans-IO command reader of
`pymail.proto.imap` against the store through one `session.ImapSession` per connection."""

from pymail.net.imap.server import ImapService

__all__ = ["ImapService"]
