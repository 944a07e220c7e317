"""Fixtures shared by the end-to-end tests.

The test internet (tests/internet.py) is imported here, once: a session-scoped fixture
imported into two conftest files would be two fixtures, i.e. two Internets at once,
each with a Postfix bound to 127.0.0.2:25, the first one answering for both.
"""

from tests.internet import internet, internet_session  # noqa: F401  (pytest fixtures)
