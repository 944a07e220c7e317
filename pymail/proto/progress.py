"""What a line protocol's command reader is waiting for, as the IMAP and POP3 readers
report it (``progress()``), sans-IO.

The connection (`pymail.net.listen.Deadlines`) turns it into a deadline: nothing of a
new command yet -> the idle (autologout) timer; part of a command line -> the command
deadline counted from the line's first byte; literal data -> the minimum data rate.
"""

from __future__ import annotations

from dataclasses import dataclass

#: `ReadProgress.phase` values.
WAITING_FOR_COMMAND = "command"  # nothing of a new command yet
READING_LINE = "line"  # part of a command line (or of a line being discarded)
READING_LITERAL = "literal"  # literal data (or a {n+} literal being discarded)


@dataclass(frozen=True)
class ReadProgress:
    """What the reader waits for: `phase`; in a literal, which one (`literal_number`,
    counting from 1 per reader) and how many of its octets came (`literal_received`)."""

    phase: str
    literal_number: int = 0
    literal_received: int = 0
