"""Fixtures for the outbound tests: the test internet (tests/internet.py)."""

from tests.internet import internet, internet_session  # noqa: F401  (pytest fixtures)
