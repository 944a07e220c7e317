"""Unit tests: pure functions and sans-IO protocol machines, no servers."""
