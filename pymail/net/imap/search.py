"""SEARCH (RFC 3501 section 6.4.4, UID SEARCH section 6.4.8; RFC 4731 ESEARCH, RFC 5182
SEARCHRES, RFC 7162 MODSEQ, RFC 5032 WITHIN) as a part of `ImapSession` (a mixin: the
session provides ``store``, ``sel``, ``rev2``, ``condstore``, ``_records``,
``_structure`` and ``send``), and `SearchContext`, the evaluation of a search tree
against one message.

Invariants:

* Keys on index rows (flags, UID, sequence numbers, dates, sizes, MODSEQ) read nothing
  else.  The others read through `fetch.MessageSource`: a message up to
  `fetch.WHOLE_MESSAGE_LIMIT` is read once, a larger one by ranges of `SEND_CHUNK`
  octets (its header block once, when it is no larger), each piece dropped before the
  next is read.  Header keys filter the header block as it comes (`HeaderFieldsFilter`)
  and hold the fields they search; BODY / TEXT read the text parts they search
  (`pymail.proto.imap.search.text_segments`) and nothing more, each piece
  transfer-decoded, charset-decoded and matched as it comes (`SegmentSearch`), stopping
  at the first match.  So a SEARCH holds at most one small message or one piece of a
  large one, and the header fields it searches, besides the index rows of the mailbox.
* The answers are those of the whole-text definition (`pymail.mail.mime.iter_text`),
  whatever the size of the message.
* A search over a large mailbox yields to the event loop every `YIELD_EVERY`
  messages, so that other clients are served while it runs.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import email.utils
import re
from typing import TYPE_CHECKING

from pymail.mail.mime import MessageStructure
from pymail.net.imap.fetch import MessageSource
from pymail.net.imap.refusals import Refusal, bad
from pymail.proto.imap import responses as r
from pymail.proto.imap.sections import HeaderFieldsFilter
from pymail.proto.imap.search import (
    FLAG_KEYS, SegmentSearch, address_texts, compare_date, esearch_modseq, header_text,
    text_segments, uses_key,
)
from pymail.proto.imap.types import Command, Search, SearchKey, SequenceSet
from pymail.store import MessageRecord

if TYPE_CHECKING:
    from pymail.net.imap.session import ImapSession

#: Messages evaluated between two yields to the event loop.
YIELD_EVERY = 200

TEXT_NOT_SUPPORTED = "Not supported"
RETURN_OPTIONS = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})


class SearchCommand:
    """SEARCH for `ImapSession` (see the module docstring)."""

    async def cmd_search(self: ImapSession, command: Command):
        # RFC 3501 section 6.4.4; RETURN options MIN MAX ALL COUNT (RFC 4731 ESEARCH) and
        # SAVE (RFC 5182 SEARCHRES); the MODSEQ key (RFC 7162 section 3.1.5).  Under
        # IMAP4rev2 every SEARCH is answered with ESEARCH (RFC 9051 section 6.4.4).
        args = command.arguments
        assert isinstance(args, Search)
        if args.charset not in (None, "UTF-8", "US-ASCII"):
            raise Refusal("Unsupported charset", r.code_badcharset(["UTF-8", "US-ASCII"]))
        options = args.return_options
        if options is not None:
            options = tuple(o.upper() for o in options) or ("ALL",)  # RFC 4731 section 3.1
            if set(options) - RETURN_OPTIONS:
                raise bad(TEXT_NOT_SUPPORTED)
        elif self.rev2:
            options = ("ALL",)
        uses_modseq = uses_key(args.key, "MODSEQ")
        if uses_modseq:
            await self._enable_condstore()  # RFC 7162 section 3.1
        sel = self.sel
        matched: list[tuple[int, int]] = []  # (sequence number, UID)
        largest_uid = sel.uids[-1] if sel.uids else 0
        records = await self._records(sel.uids)
        saved = set(sel.saved)
        # a small message is read once: its header block alone if no key needs its text
        header_only = not (uses_key(args.key, "BODY") or uses_key(args.key, "TEXT"))
        try:
            for index, u in enumerate(sel.uids):
                if index % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)  # other clients' turn
                record = records.get(u)
                if record is None:
                    continue
                context = SearchContext(self, record, index + 1, len(sel.uids), largest_uid, saved,
                                        header_only=header_only)
                if await context.matches(args.key):
                    matched.append((index + 1, u))
        except Refusal:
            if options is not None and "SAVE" in options:
                sel.saved = []  # RFC 5182 section 2.1: a failed SAVE search empties $
            raise
        numbers = [u if command.uid else seq for seq, u in matched]
        highest = None
        if uses_modseq:  # RFC 7162 section 3.1.5; with ESEARCH, of the returned ones only
            highest = esearch_modseq(options, [records[u].modseq for _, u in matched])
        if options is None:
            await self.send(r.search_response(numbers, modseq=highest))
            return "SEARCH completed"
        if "SAVE" in options:
            chosen = set(options)
            if chosen & {"MIN", "MAX"} and not chosen & {"ALL", "COUNT"}:
                # RFC 5182 section 2.4: SAVE with only MIN/MAX saves just those
                ends = [matched[0][1]] if matched and "MIN" in chosen else []
                ends += [matched[-1][1]] if matched and "MAX" in chosen else []
                sel.saved = sorted(set(ends))
            else:
                sel.saved = [u for _, u in matched]
            if set(options) == {"SAVE"}:  # RFC 5182 section 2.1: no ESEARCH at all
                return "SEARCH completed"
        results: list[tuple[str, int | list[int]]] = []
        if numbers:
            for option in ("MIN", "MAX", "ALL"):
                if option in options:
                    value = {"MIN": numbers[0], "MAX": numbers[-1], "ALL": numbers}[option]
                    results.append((option, value))
        if "COUNT" in options:
            results.append(("COUNT", len(numbers)))
        if highest is not None:
            results.append(("MODSEQ", highest))
        await self.send(r.esearch_response(command.tag, results, uid=command.uid))
        return "SEARCH completed"


class SearchContext:
    """Evaluates a search tree against one message, loading its header only when a
    header key needs it and its text parts only when BODY or TEXT does."""

    def __init__(self, session: ImapSession, record: MessageRecord, sequence: int, count: int,
                 largest_uid: int, saved: set[int], *, header_only: bool = False) -> None:
        self.session = session
        self.record = record
        self.sequence = sequence
        self.count = count
        self.largest_uid = largest_uid
        self.saved = saved  #: the UIDs of `$` (RFC 5182)
        self.header_only = header_only  #: no key reads more than the header block
        self._source: MessageSource | None = None

    async def _message(self) -> tuple[MessageStructure, MessageSource]:
        structure = await self.session._structure(self.record)
        if self._source is None:
            self._source = MessageSource(self.session.store.blobs, self.record,
                                         structure.body.body_start, header_only=self.header_only)
        return structure, self._source

    async def header_values(self, name: str) -> list[str]:
        """The values of the header fields called `name`, unfolded and decoded; the
        header block is filtered as it is read (`HeaderFieldsFilter`, the output of
        `filter_header_fields`), so only those fields are held."""
        structure, source = await self._message()
        wanted = HeaderFieldsFilter((name.upper(),))
        pieces = [wanted.feed(chunk) async for chunk in source.chunks(0, structure.body.body_start)]
        fields = b"".join(pieces) + wanted.finish()
        values = []
        for line in re.split(rb"\r?\n(?![ \t])", fields):
            if b":" in line:
                values.append(header_text(line.split(b":", 1)[1].strip()))
        return values

    async def matches(self, key: SearchKey) -> bool:
        name, args, record = key.name, key.args, self.record
        flags = {f.lower() for f in record.flags}
        if name == "AND":
            for child in args:
                assert isinstance(child, SearchKey)
                if not await self.matches(child):
                    return False
            return True
        if name == "NOT":
            return not await self.matches(args[0])  # type: ignore[arg-type]
        if name == "OR":
            return await self.matches(args[0]) or await self.matches(args[1])  # type: ignore[arg-type]
        if name == "ALL":
            return True
        # RFC 3501 section 6.4.4: RECENT, NEW (recent and unseen), OLD (not recent)
        recent = record.uid in self.session.sel.recent
        if name == "RECENT":
            return recent
        if name == "NEW":
            return recent and "\\seen" not in flags
        if name == "OLD":
            return not recent
        if name in FLAG_KEYS:
            flag, present = FLAG_KEYS[name]
            return (flag in flags) == present
        if name in ("KEYWORD", "UNKEYWORD"):
            return (str(args[0]).lower() in flags) == (name == "KEYWORD")
        if name in ("SEQUENCE", "UID"):
            sequence_set = args[0]
            assert isinstance(sequence_set, SequenceSet)
            if sequence_set.saved_result:  # RFC 5182: `$` is a set of messages
                return record.uid in self.saved
            if name == "SEQUENCE":
                return sequence_set.contains(self.sequence, self.count)
            return sequence_set.contains(record.uid, self.largest_uid)
        if name == "MODSEQ":  # RFC 7162 section 3.1.5; entry names are not kept apart
            return record.modseq >= int(args[0])  # type: ignore[arg-type]
        if name in ("OLDER", "YOUNGER"):  # RFC 5032 WITHIN, in seconds
            age = (_dt.datetime.now(_dt.timezone.utc) - record.internal_date).total_seconds()
            return age >= int(args[0]) if name == "OLDER" else age <= int(args[0])  # type: ignore[arg-type]
        if name in ("BODY", "TEXT"):
            return await self.text_contains(str(args[0]), headers=name == "TEXT")
        if name == "LARGER":
            return record.size > int(args[0])  # type: ignore[arg-type]
        if name == "SMALLER":
            return record.size < int(args[0])  # type: ignore[arg-type]
        if name in ("BEFORE", "ON", "SINCE"):
            # internal date, disregarding time and timezone (RFC 3501 section 6.4.4)
            return compare_date(name, record.internal_date.date(), args[0])  # type: ignore[arg-type]
        if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            values = await self.header_values("Date")
            try:
                sent = email.utils.parsedate_to_datetime(values[0]).date() if values else None
            except (TypeError, ValueError, IndexError):
                sent = None
            return sent is not None and compare_date(name[4:], sent, args[0])  # type: ignore[arg-type]
        if name in ("FROM", "TO", "CC", "BCC"):
            return await self._address_contains(name, str(args[0]))
        if name == "SUBJECT":
            return await self._header_contains(name, str(args[0]))
        if name == "HEADER":
            return await self._header_contains(str(args[0]), str(args[1]))
        raise bad(TEXT_NOT_SUPPORTED)

    async def text_contains(self, needle: str, *, headers: bool) -> bool:
        """BODY / TEXT: a case-insensitive substring of the decoded text parts (and the
        header blocks for TEXT), as RFC 3501 section 6.4.4 allows servers to refine;
        streamed part by part (see the module invariants)."""
        if not needle:
            return True
        structure, source = await self._message()
        folded = needle.casefold()
        for segment in text_segments(structure, headers=headers):
            search = SegmentSearch(segment, folded)
            found = False
            async for chunk in source.chunks(segment.start, segment.end):
                if search.feed(chunk):
                    found = True
                    break
            if found or search.finish():
                return True
        return False

    async def _address_contains(self, field_name: str, needle: str) -> bool:
        """FROM / TO / CC / BCC: the raw field, or an address of it as ENVELOPE parses
        it (`address_texts`: comments inside an addr-spec do not hide it)."""
        if await self._header_contains(field_name, needle):
            return True
        structure, _ = await self._message()
        attribute = "from_" if field_name == "FROM" else field_name.lower()
        folded = needle.casefold()
        return any(folded in text.casefold()
                   for text in address_texts(getattr(structure.envelope, attribute)))

    async def _header_contains(self, field_name: str, needle: str) -> bool:
        values = await self.header_values(field_name)
        if not needle:  # HEADER name "" matches every message with the field
            return bool(values)
        needle = needle.casefold()
        return any(needle in v.casefold() for v in values)
