"""Sans-IO protocol machines (IMAP, later POP3 and SASL).

Invariants: modules under ``pymail.proto`` import the standard library only -- no
asyncio, no sockets, no store.  Bytes go in through ``receive_data``; events come out of
``next_event``; the ``net/`` glue does all I/O (docs/architecture.md, STYLE.md item 1).
"""
