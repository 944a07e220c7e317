"""Operations: what an admin does around the daemon — DNS records and their checks,
firewall rules, ACME certificates, `pymail doctor`.  Nothing here serves mail."""
