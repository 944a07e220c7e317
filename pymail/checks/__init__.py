"""Inbound checks (see pymail.checks.session)."""
