"""Sans-IO pieces of SMTP (RFC 5321): DATA content decoding (`data`)."""
