"""SEARCH (RFC 3501 section 6.4.4) without the store, sans-IO: the text that BODY and
TEXT search, as a stream in bounded memory, and the small rules the evaluator in
`pymail.net.imap.search` applies to index rows and header fields.

BODY / TEXT match when the search string, case-folded, is a substring of one of the
message's searchable texts (as RFC 3501 allows a server to refine the match): each
text/* part decoded from its Content-Transfer-Encoding and charset, recursing into
encapsulated messages, and for TEXT each header block (decoded as UTF-8), every run of
white space that holds a line break counted as one space (`unfold`), so a phrase
wrapped across lines still matches.  `pymail.mail.mime.iter_text` is the same text made
whole.

* `text_segments` lists where those texts are in the raw message (`TextSegment`: a
  byte range, its transfer encoding and its codec); it never reads the message.
* `SegmentSearch` takes one segment's octets in chunks of any size and says whether
  the needle occurs: transfer-decoded chunk by chunk (`sections.TransferDecoder`),
  charset-decoded incrementally (`pymail.mail.charsets.text_decoder`), unfolded and
  case-folded as it streams (`TextMatcher`), and matched with an overlap of
  ``len(needle) - 1`` characters across chunks.

Invariants:

* The answer is the same as ``needle.casefold() in unfold(text).casefold()`` on each
  whole text from `iter_text`, whatever the chunking (the unit tests check it with
  random messages and chunkings).  Case folding is per character, and white space is
  white space before and after it, so folding chunk by chunk is folding the whole.
* Memory is bounded by the chunk, the needle and `RUN_HOLD`: besides the decoders'
  small states (`TransferDecoder`: a line of quoted-printable up to ``LINE_HOLD``),
  `TextMatcher` keeps ``len(needle) - 1`` characters of overlap and the white space
  run at the end of what it has seen (whether it holds a line break decides what it
  becomes): at most `RUN_HOLD` characters of it, beyond that its first and last
  ``len(needle)`` characters with a character the needle lacks between them -- every
  match that reaches into such a run from outside is kept, and a match inside the run
  is looked for as it grows.
* Time is linear in the text: no regular expression that can backtrack over a run of
  white space (``\\s*\\r?\\n\\s*`` was quadratic in it: 16,000 spaces took 2 s).
"""

from __future__ import annotations

import codecs
import datetime as _dt
import email.header
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pymail.mail.charsets import text_charset, text_decoder
from pymail.mail.mime import Address, MessageStructure, UnknownTransferEncoding
from pymail.proto.imap.sections import TransferDecoder
from pymail.proto.imap.types import SearchKey

__all__ = [
    "FLAG_KEYS", "RUN_HOLD", "SegmentSearch", "TextMatcher", "TextSegment", "address_texts",
    "compare_date", "esearch_modseq",
    "header_text", "text_segments", "unfold", "uses_key",
]

#: White space characters a `TextMatcher` holds at most as they are (see the invariants).
RUN_HOLD = 4096


@dataclass(frozen=True)
class TextSegment:
    """One searchable text: ``raw[start:end]``, with Content-Transfer-Encoding
    `encoding` (an identity one for a header block), decoded with the codec `charset`."""

    start: int
    end: int
    encoding: str
    charset: str


def text_segments(message: MessageStructure, *, headers: bool) -> list[TextSegment]:
    """The searchable texts of a message, the parts `iter_text` yields, in its order."""
    out = []
    if headers:
        out.append(TextSegment(message.body.header_start, message.body.body_start, "8bit", "utf-8"))
    stack = [message.body]
    while stack:
        part = stack.pop(0)
        if part.parts:
            stack[0:0] = part.parts
            continue
        if part.message is not None:
            out += text_segments(part.message, headers=headers)
            continue
        if part.type != "text":
            continue
        out.append(TextSegment(part.body_start, part.end, part.encoding,
                               text_charset(part.params.get("charset", "us-ascii"))))
    return out


def unfold(text: str) -> str:
    """`text` with every maximal run of white space (``str.isspace``, what ``\\s``
    matches) that holds a line feed replaced by one space; linear time."""
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    middle = [line for line in (line.strip() for line in lines[1:-1]) if line]
    return " ".join([lines[0].rstrip(), *middle, lines[-1].lstrip()])


class TextMatcher:
    """Whether `needle` (already case-folded, not empty) occurs in ``unfold(text)
    .casefold()`` for a text fed in pieces (``feed`` ... ``finish``); ``found`` once it
    does.  See the module invariants for what it holds."""

    def __init__(self, needle: str, *, run_hold: int = RUN_HOLD) -> None:
        assert needle
        self.needle = needle
        self.found = False
        self._overlap = len(needle) - 1
        self._tail = ""  # the last `_overlap` characters matched
        # a character the needle lacks (case-folded too), put where a long white space
        # run is cut short
        self._cut = next(chr(c) for c in itertools.count()
                         if chr(c) not in needle and chr(c).casefold() == chr(c))
        self._run_hold = max(run_hold, 2 * len(needle) + 2)
        self._reset_run()

    def _reset_run(self) -> None:
        self._run_size = 0  # white space characters in the run held (0: none)
        self._run_break = False  # it holds a line feed: it becomes one space
        self._run = ""  # its characters, while short
        self._run_head = ""  # once long: its first and last len(needle) characters
        self._run_end = ""
        self._run_inner = False  # once long: the needle occurs inside it

    def feed(self, text: str) -> bool:
        if self.found or not text:
            return self.found
        body = text.lstrip()
        if len(body) < len(text):
            self._hold(text[:len(text) - len(body)])
        if not body:
            return False
        core = body.rstrip()
        out = self._release() + unfold(core)  # core starts and ends with non-space
        self._match(out)
        if len(core) < len(body):
            self._hold(body[len(core):])
        return self.found

    def finish(self) -> bool:
        if not self.found:
            self._match(self._release())
        return self.found

    def _hold(self, space: str) -> None:
        """More of the white space run at the end of what was fed."""
        self._run_size += len(space)
        if self._run_break or "\n" in space:
            self._run_break, self._run, self._run_head, self._run_end = True, "", "", ""
            return
        if not self._run_head:
            self._run += space
            if len(self._run) <= self._run_hold:
                return
            space, self._run = self._run, ""
            self._run_head = space[:len(self.needle)]
            scan = space
        else:
            scan = self._run_end + space
        # white space is its own case fold: the run is matched as it is
        if self.needle in scan:
            self._run_inner = True
        self._run_end = scan[-len(self.needle):]

    def _release(self) -> str:
        """The held run as the unfolded text has it (non-space follows, or the end)."""
        if not self._run_size:
            return ""
        if self._run_break:
            out = " "
        elif self._run_head:
            if self._run_inner:
                self.found = True
            out = self._run_head + self._cut + self._run_end
        else:
            out = self._run
        self._reset_run()
        return out

    def _match(self, text: str) -> None:
        if not text:
            return
        window = self._tail + text.casefold()
        if self.needle in window:
            self.found = True
        self._tail = window[-self._overlap:] if self._overlap else ""


class SegmentSearch:
    """One `TextSegment` searched for `needle` (case-folded, not empty): ``feed`` its
    octets in order, in chunks of any size, then ``finish``; each says whether the
    needle was found (the caller may stop feeding once it was)."""

    def __init__(self, segment: TextSegment, needle: str) -> None:
        try:
            self._transfer: TransferDecoder | None = TransferDecoder(segment.encoding)
        except UnknownTransferEncoding:  # searched raw, as iter_text does
            self._transfer = None
        self._chars: codecs.IncrementalDecoder = text_decoder(segment.charset)
        self._matcher = TextMatcher(needle)

    def feed(self, data: bytes) -> bool:
        if self._transfer is not None:
            data = self._transfer.feed(data)
        return self._matcher.feed(self._chars.decode(data))

    def finish(self) -> bool:
        rest = self._transfer.finish() if self._transfer is not None else b""
        self._matcher.feed(self._chars.decode(rest, final=True))
        return self._matcher.finish()


def search_whole(raw: bytes, structure: MessageStructure, needle: str, *, headers: bool) -> bool:
    """BODY (``headers=False``) / TEXT over a whole message in memory, through the same
    objects a streamed search uses."""
    if not needle:
        return True
    folded = needle.casefold()
    for segment in text_segments(structure, headers=headers):
        search = SegmentSearch(segment, folded)
        if search.feed(raw[segment.start:segment.end]) or search.finish():
            return True
    return False


# --- the rest of the search keys ------------------------------------------------------------

#: Flag keys: the flag (lower case) and whether it must be set (RFC 3501 section 6.4.4).
FLAG_KEYS = {
    "ANSWERED": ("\\answered", True), "UNANSWERED": ("\\answered", False),
    "DELETED": ("\\deleted", True), "UNDELETED": ("\\deleted", False),
    "DRAFT": ("\\draft", True), "UNDRAFT": ("\\draft", False),
    "FLAGGED": ("\\flagged", True), "UNFLAGGED": ("\\flagged", False),
    "SEEN": ("\\seen", True), "UNSEEN": ("\\seen", False),
}


def compare_date(op: str, day: _dt.date, wanted: _dt.date) -> bool:
    """BEFORE / ON / SINCE (and their SENT forms) on dates, disregarding time and zone."""
    if op == "BEFORE":
        return day < wanted
    if op == "ON":
        return day == wanted
    return day >= wanted  # SINCE


def header_text(value: bytes) -> str:
    """A header field's value unfolded and with RFC 2047 encoded words decoded."""
    text = re.sub(r"\r?\n[ \t]", " ", value.decode("utf-8", "replace"))
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except Exception:  # malformed encoded words: search the raw text
        return text


def address_texts(addresses: Iterable[Address]) -> list[str]:
    """What SEARCH FROM/TO/CC/BCC also match besides the raw field: each address as
    ENVELOPE parses it (RFC 3501 section 7.4.2), ``mailbox@host`` and the display name
    with RFC 2047 words decoded, so comments and blanks inside an addr-spec
    (``<user-from (comment)@ (comment) domain.org>``, RFC 5322 section 3.4.1 CFWS) do
    not hide it.  Group markers are skipped."""
    out = []
    for address in addresses:
        if address.mailbox is None or address.host is None:
            continue
        spec = f"{address.mailbox}@{address.host}" if address.host else address.mailbox
        out.append(spec)
        if address.name:
            name = header_text(address.name.encode("utf-8", "surrogateescape"))
            out += [name, f"{name} <{spec}>"]
    return out


def esearch_modseq(options: tuple[str, ...] | None, modseqs: list[int]) -> int | None:
    """The MODSEQ a SEARCH with the MODSEQ key reports, for the matches' mod-sequences in
    sequence order (None: nothing matched).  RFC 7162 section 3.1.5: the highest of the
    messages *returned*; with RETURN (MIN) and/or (MAX) alone (RFC 4731 section 3.1)
    only those are returned, so it is theirs, not the highest of every match."""
    if not modseqs:
        return None
    if options is not None and set(options) & {"MIN", "MAX"} and not set(options) & {"ALL", "COUNT"}:
        ends = ([modseqs[0]] if "MIN" in options else []) + ([modseqs[-1]] if "MAX" in options else [])
        return max(ends)
    return max(modseqs)


def uses_key(key: SearchKey, name: str) -> bool:
    """Whether the search tree contains key `name`."""
    if key.name == name:
        return True
    return any(isinstance(child, SearchKey) and uses_key(child, name) for child in key.args)
