"""SORT and THREAD (RFC 5256 section 3, SORT=DISPLAY RFC 5957, ESORT RFC 5267 section 3)
as a part of `ImapSession` (a mixin like `pymail.net.imap.search.SearchCommand`: the
session provides ``sel``, ``_records``, ``_structure``, ``send`` and the search
evaluator `SearchContext`).

The handler is thin: it evaluates the search-criteria exactly as SEARCH does, gathers
the `MessageFacts` of the matching messages, and hands them to the pure algorithms of
`pymail.proto.imap.sort` and `pymail.proto.imap.thread`.

Invariants:

* The header facts come from the index row and the stored ENVELOPE (the cached
  `MessageStructure`, no message read); only THREAD=REFERENCES reads more, the
  References field of each matching message's header block (`SearchContext.
  header_values`, which reads that block alone).
* A large mailbox yields to the event loop every `YIELD_EVERY` messages.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pymail.net.imap.refusals import Refusal, bad
from pymail.net.imap.search import YIELD_EVERY, SearchContext
from pymail.proto.imap import responses as r
from pymail.proto.imap.search import esearch_modseq, uses_key
from pymail.proto.imap.sort import MessageFacts, sort_messages, sort_response
from pymail.proto.imap.thread import THREAD_ALGORITHMS, thread_messages, thread_response
from pymail.proto.imap.types import Command, Search, Sort, Thread

if TYPE_CHECKING:
    from pymail.net.imap.session import ImapSession

CHARSETS = ("UTF-8", "US-ASCII")
#: RETURN options of ESORT (RFC 5267 section 3) and SAVE (RFC 5182 section 2.4).
SORT_RETURN_OPTIONS = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})


class SortCommands:
    """SORT and THREAD for `ImapSession` (see the module docstring)."""

    async def _sort_matches(self: ImapSession, search: Search, *,
                            references: bool = False) -> list[MessageFacts]:
        """The facts of the messages matching `search`, in sequence order; a charset
        other than UTF-8 / US-ASCII is NO [BADCHARSET] (RFC 5256 section 3)."""
        if search.charset not in CHARSETS:
            raise Refusal("Unsupported charset", r.code_badcharset(list(CHARSETS)))
        if uses_key(search.key, "MODSEQ"):
            await self._enable_condstore()  # RFC 7162 section 3.1
        sel = self.sel
        largest_uid = sel.uids[-1] if sel.uids else 0
        records = await self._records(sel.uids)
        saved = set(sel.saved)
        header_only = not (uses_key(search.key, "BODY") or uses_key(search.key, "TEXT"))
        out: list[MessageFacts] = []
        for index, u in enumerate(sel.uids):
            if index % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)  # other clients' turn
            record = records.get(u)
            if record is None:
                continue
            context = SearchContext(self, record, index + 1, len(sel.uids), largest_uid, saved,
                                    header_only=header_only)
            if not await context.matches(search.key):
                continue
            envelope = (await self._structure(record)).envelope
            facts = MessageFacts(
                sequence=index + 1, uid=u, internal_date=record.internal_date, size=record.size,
                date=envelope.date, subject=envelope.subject, from_=envelope.from_,
                to=envelope.to, cc=envelope.cc, message_id=envelope.message_id,
                in_reply_to=envelope.in_reply_to, modseq=record.modseq)
            if references:  # RFC 5256 section 3 REFERENCES step 1
                values = await context.header_values("References")
                facts.references = " ".join(values) if values else None
            out.append(facts)
        return out

    async def cmd_sort(self: ImapSession, command: Command):
        # RFC 5256 section 3; RETURN (MIN MAX ALL COUNT) answered with ESEARCH (RFC 5267
        # section 3.2), SAVE (RFC 5182 section 2.4); MODSEQ (RFC 7162 section 3.1.5).
        args = command.arguments
        assert isinstance(args, Sort)
        options = args.search.return_options
        if options is not None:
            options = tuple(options) or ("ALL",)  # RFC 4731 section 3.1
            if set(options) - SORT_RETURN_OPTIONS:
                raise bad("Not supported")
        try:
            matched = await self._sort_matches(args.search)
        except Refusal:
            if options is not None and "SAVE" in options:
                self.sel.saved = []  # RFC 5182 section 2.1
            raise
        ordered = sort_messages(matched, list(args.criteria))
        numbers = [m.uid if command.uid else m.sequence for m in ordered]
        uses_modseq = uses_key(args.search.key, "MODSEQ")
        modseqs = [m.modseq for m in ordered]
        if options is None:
            line = sort_response(numbers)
            if uses_modseq and numbers:  # sort-data ... [SP search-sort-mod-seq]
                line = line[:-2] + b" (MODSEQ %d)\r\n" % max(modseqs)
            await self.send(line)
            return "SORT completed"
        if "SAVE" in options:  # $ is a set: the UIDs, whatever their sorted order
            chosen = set(options)
            if chosen & {"MIN", "MAX"} and not chosen & {"ALL", "COUNT"}:
                ends = [ordered[0].uid] if ordered and "MIN" in chosen else []
                ends += [ordered[-1].uid] if ordered and "MAX" in chosen else []
                self.sel.saved = sorted(set(ends))
            else:
                self.sel.saved = sorted(m.uid for m in ordered)
            if chosen == {"SAVE"}:
                return "SORT completed"
        # RFC 5267 section 3.2: MIN / MAX are the first / last in the sort order, ALL
        # the numbers in that order
        results: list[tuple[str, int | list[int]]] = []
        if numbers:
            for option in ("MIN", "MAX", "ALL"):
                if option in options:
                    value = {"MIN": numbers[0], "MAX": numbers[-1], "ALL": numbers}[option]
                    results.append((option, value))
        if "COUNT" in options:
            results.append(("COUNT", len(numbers)))
        if uses_modseq:
            highest = esearch_modseq(options, modseqs)
            if highest is not None:
                results.append(("MODSEQ", highest))
        await self.send(r.esearch_response(command.tag, results, uid=command.uid))
        return "SORT completed"

    async def cmd_thread(self: ImapSession, command: Command):
        # RFC 5256 section 3: THREAD ORDEREDSUBJECT / REFERENCES
        args = command.arguments
        assert isinstance(args, Thread)
        if args.algorithm not in THREAD_ALGORITHMS:
            raise bad("Unknown threading algorithm")
        matched = await self._sort_matches(args.search,
                                           references=args.algorithm == "REFERENCES")
        threads = thread_messages(args.algorithm, matched)
        await self.send(thread_response(
            threads, (lambda m: m.uid) if command.uid else (lambda m: m.sequence)))
        return "THREAD completed"
