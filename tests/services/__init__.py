"""Real helper services (S3, PostgreSQL, ...) started on loopback for the tests."""
