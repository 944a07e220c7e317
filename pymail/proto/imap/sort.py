"""SORT (RFC 5256 section 3), SORT=DISPLAY (RFC 5957) and the base subject and sent
date that THREAD shares (RFC 5256 section 2), sans-IO.

Input is a list of `MessageFacts` (what the handler reads from the index row and the
stored ENVELOPE of each message); output is an ordering of them.  Nothing here reads the
store.

Invariants:

* `base_subject` is RFC 5256 section 2.1 (steps 1-6) applied to the decoded subject;
  it never returns the subj-blob of step 4 alone and is idempotent.
* Strings are compared with `collation_key` (i;unicode-casemap, RFC 5051: per
  character case folding after compatibility decomposition).
* `sent_date` is RFC 5256 section 2.2: the Date header converted to UTC, else the
  INTERNALDATE when the header is absent or unparsable.
* `sort_messages` is stable: messages equal on every criterion stay in sequence number
  order (RFC 5256 section 3, "the order is the order of the sequence number").
"""

from __future__ import annotations

import datetime as _dt
import email.header
import email.utils
import re
import unicodedata
from dataclasses import dataclass, field

from pymail.mail.mime import Address

__all__ = [
    "SORT_CRITERIA", "MessageFacts", "base_subject", "collation_key", "decode_words",
    "display_name", "extract_subject", "is_reply_or_forward", "sent_date", "sort_messages",
    "sort_response",
]

#: Sort keys (RFC 5256 section 3, RFC 5957 section 3); REVERSE is a prefix.
SORT_CRITERIA = frozenset({
    "ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO",
})


@dataclass
class MessageFacts:
    """What sorting and threading need of one message: its sequence number and UID, the
    index row's INTERNALDATE and size, and header facts (raw values, RFC 2047 words not
    decoded; None when the field is absent)."""

    sequence: int
    uid: int
    internal_date: _dt.datetime
    size: int = 0
    modseq: int = 0
    date: str | None = None
    subject: str | None = None
    from_: list[Address] = field(default_factory=list)
    to: list[Address] = field(default_factory=list)
    cc: list[Address] = field(default_factory=list)
    message_id: str | None = None
    in_reply_to: str | None = None
    references: str | None = None


def decode_words(text: str) -> str:
    """RFC 2047 encoded words decoded (malformed ones left as they are)."""
    if "=?" not in text:
        return text
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except Exception:
        return text


def _titlecase(char: str) -> str:
    """The simple titlecase mapping of one character (UnicodeData.txt field 14): the
    full mapping Python has, where it is one character (the simple one then)."""
    title = char.title()
    return title if len(title) == 1 else char


def collation_key(text: str) -> str:
    """i;unicode-casemap (RFC 5051 section 2) as a sort key: each character replaced
    by its titlecase mapping, then the whole fully decomposed (NFKD); keys compare by
    code point, which is the UTF-8 octet order the collation compares in."""
    if text.isascii():
        return text.upper()  # titlecase is upper case in ASCII; NFKD changes nothing
    return unicodedata.normalize("NFKD", "".join(map(_titlecase, text)))


# RFC 5256 section 5 (ABNF): subj-blob = "[" *BLOBCHAR "]" *WSP, BLOBCHAR excludes [ ]
_BLOB = r"\[[^\[\]]*\][ ]*"
# subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
_REFWD = r"(?:re|fwd?)[ ]*(?:" + _BLOB + r")?:"
# subj-leader = (*subj-blob subj-refwd) / WSP
_LEADER = re.compile(r"(?:(?:" + _BLOB + r")*" + _REFWD + r"|[ ]+)", re.IGNORECASE)
_BLOB_RE = re.compile(_BLOB)
# subj-trailer = "(fwd)" / WSP
_TRAILER = re.compile(r"(?:\(fwd\)|[ ])$", re.IGNORECASE)


def base_subject(subject: str | None) -> str:
    """The base subject of RFC 5256 section 2.1, before collation."""
    return extract_subject(subject)[0]


def is_reply_or_forward(subject: str | None) -> bool:
    """Whether extracting the base subject removed a subj-refwd, a "(fwd)" trailer or
    a "[fwd: ...]" wrapper (RFC 5256 section 2.1, what REFERENCES step 5 asks)."""
    return extract_subject(subject)[1]


def extract_subject(subject: str | None) -> tuple[str, bool]:
    """RFC 5256 section 2.1 steps 1-6: the base subject, and whether the subject was a
    reply or forward."""
    if not subject:
        return "", False
    reply = False
    # (1) encoded words decoded; tabs and line breaks to a space; runs of spaces to one
    text = re.sub(r"[ \t\r\n]+", " ", decode_words(subject))
    while True:
        # (2) remove trailing subj-trailer text, repeatedly
        while True:
            match = _TRAILER.search(text)
            if not match:
                break
            reply = reply or match.group() != " "
            text = text[:match.start()]
        # (5) repeat (3) and (4) until neither removes anything
        while True:
            before = text
            # (3) remove leading subj-leader text, repeatedly
            while True:
                match = _LEADER.match(text)
                if not match or not match.end():
                    break
                reply = reply or match.group().endswith(":")
                text = text[match.end():]
            # (4) a leading subj-blob, if what remains is not empty
            match = _BLOB_RE.match(text)
            if match and text[match.end():]:
                text = text[match.end():]
            if text == before:
                break
        # (6) "[fwd:" ... "]": drop them and go back to (2)
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text, reply = text[5:-1], True
            continue
        return text, reply


def sent_date(facts: MessageFacts) -> _dt.datetime:
    """RFC 5256 section 2.2: the Date header in UTC, or INTERNALDATE without a valid one."""
    internal = facts.internal_date
    if internal.tzinfo is None:
        internal = internal.replace(tzinfo=_dt.timezone.utc)
    if facts.date:
        try:
            parsed = email.utils.parsedate_to_datetime(facts.date)
        except (TypeError, ValueError, IndexError):
            parsed = None
        if parsed is not None:
            if parsed.tzinfo is None:  # -0000: "no zone information", taken as UTC
                parsed = parsed.replace(tzinfo=_dt.timezone.utc)
            return parsed.astimezone(_dt.timezone.utc)
    return internal.astimezone(_dt.timezone.utc)


def _first_mailbox(addresses: list[Address]) -> str:
    """The addr-mailbox of the first address (RFC 5256 section 3), "" if none."""
    for address in addresses:
        if address.host is None:  # a group marker
            continue
        return address.mailbox or ""
    return ""


def display_name(addresses: list[Address]) -> str:
    """RFC 5957 section 3: the display name of the first address (RFC 2047 decoded),
    else its addr-spec (mailbox@host); "" without an address."""
    for address in addresses:
        if address.host is None:
            continue
        if address.name:
            return decode_words(address.name)
        mailbox = address.mailbox or ""
        return f"{mailbox}@{address.host}" if address.host else mailbox
    return ""


def _key(criterion: str, facts: MessageFacts) -> object:
    if criterion == "ARRIVAL":
        date = facts.internal_date
        return date if date.tzinfo else date.replace(tzinfo=_dt.timezone.utc)
    if criterion == "DATE":
        return sent_date(facts)
    if criterion == "SIZE":
        return facts.size
    if criterion == "SUBJECT":
        return collation_key(base_subject(facts.subject))
    if criterion in ("FROM", "TO", "CC"):
        addresses = {"FROM": facts.from_, "TO": facts.to, "CC": facts.cc}[criterion]
        return collation_key(decode_words(_first_mailbox(addresses)))
    if criterion in ("DISPLAYFROM", "DISPLAYTO"):
        return collation_key(display_name(facts.from_ if criterion == "DISPLAYFROM" else facts.to))
    raise ValueError(f"unknown sort criterion {criterion}")


def sort_messages(messages: list[MessageFacts],
                  criteria: list[tuple[str, bool]]) -> list[MessageFacts]:
    """`messages` in the order of `criteria`, each ``(name, reverse)``; ties in sequence
    number order.  Sorting by the last criterion first, stably, is sorting by all."""
    out = sorted(messages, key=lambda m: m.sequence)
    for name, reverse in reversed(criteria):
        keys = {id(m): _key(name, m) for m in out}
        out.sort(key=lambda m: keys[id(m)], reverse=reverse)  # type: ignore[arg-type,return-value]
    return out


def sort_response(numbers: list[int]) -> bytes:
    """``* SORT 2 84 882`` (RFC 5256 section 4), ``* SORT`` when nothing matched."""
    return (b"* SORT" + b"".join(b" %d" % n for n in numbers)) + b"\r\n"
