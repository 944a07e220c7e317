"""FETCH (RFC 3501 section 6.4.5, UID FETCH section 6.4.8, RFC 3516 BINARY, RFC 7162
MODSEQ and CHANGEDSINCE) as a part of `ImapSession` (a mixin: the session provides
``store``, ``sel``, ``condstore``, ``_enable_condstore``, ``rev2``, ``fetch_sections``,
``_resolve``, ``_records``, ``_structure``, ``_remember_flags``, ``_shown_flags``,
``_announce_keywords`` and ``send``), in bounded memory.

Invariants:

* One FETCH asks for at most ``limits.fetch_sections`` body sections (BODY[...],
  BINARY[...], BINARY.SIZE[...], RFC822, RFC822.HEADER, RFC822.TEXT); more get ``BAD``
  before anything is read.
* Each message's response is planned before its first octet goes out: the range and
  transform of every section (`pymail.proto.imap.sections.plan_section`) and the
  length of its value -- a first pass over the range for a transformed value
  (HEADER.FIELDS of a header block, a decoded BINARY) or a BINARY that may hold NUL --,
  remembered per message, so a section naming no part is NIL and an unknown encoding a
  clean ``NO [UNKNOWN-CTE]``.
* A message of at most `WHOLE_MESSAGE_LIMIT` octets is read once (whole, or only its
  header block when only header sections are asked: Thunderbird's per-message
  HEADER.FIELDS is one small ranged read) and sliced.  A larger message is never held:
  its sections are read with ``BlobStore.get_range`` in `SEND_CHUNK` pieces, and each
  piece is sent -- and drained, within ``limits.send_timeout`` -- before the next is
  read.  So a FETCH holds at most one small message or one piece, plus the connection's
  write buffer, however many sections or messages it asks for.
* Small responses are gathered across messages and sent in pieces of about
  `SEND_CHUNK`; the complete ones are sent before a failure is answered.
* No ``{n}`` literal holds NUL: BODY[] and RFC822 values send it as `NUL_STAND_IN`,
  BINARY values that hold one go as ``~{n}`` literal8 (RFC 3516 section 4.2).
* Once a literal has started, a failure of the blob store (or a blob shorter than its
  index row) cannot be answered in the protocol: the connection is closed, logged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from pymail.mail.mime import MessageStructure, UnknownTransferEncoding
from pymail.net.imap.refusals import Logout, Refusal, bad
from pymail.net.listen import SEND_CHUNK
from pymail.proto.imap import bodystructure
from pymail.proto.imap import responses as r
from pymail.proto.imap.sections import (
    SectionPlan, SectionStream, is_section, literal_head, plan_section,
)
from pymail.proto.imap.types import Command, Fetch, FetchAttribute
from pymail.store import BlobStore, MessageRecord, NotFound, StorageError

if TYPE_CHECKING:
    from pymail.net.imap.session import ImapSession

log = logging.getLogger("pymail.imap")

#: Messages up to this size are read whole once per FETCH; larger ones in pieces.
WHOLE_MESSAGE_LIMIT = 1024 * 1024

TEXT_TOO_MANY_SECTIONS = "Too many body sections in one FETCH"
TEXT_UNKNOWN_CTE = "Unknown Content-Transfer-Encoding"
TEXT_NOT_SUPPORTED = "Not supported"


class BrokenBlob(StorageError):
    """The blob store gave fewer octets than the index row promised, or none."""


class MessageSource:
    """The octets of one stored message, as the FETCH of it needs them: a small message
    read once (whole, or its header block if `header_only`), a large one by ranges."""

    def __init__(self, blobs: BlobStore, record: MessageRecord, header_end: int, *,
                 header_only: bool) -> None:
        self.blobs = blobs
        self.key = record.blob_key
        self.size = record.size
        self.header_end = header_end
        self.header_only = header_only
        self._held: bytes | None = None  # the whole message, or its header block
        self._held_end = 0

    async def _read(self, start: int, end: int) -> bytes:
        if self._held is None and self.size <= WHOLE_MESSAGE_LIMIT:
            if self.header_only and end <= self.header_end:
                self._held, self._held_end = await self.blobs.get_range(self.key, 0, self.header_end), self.header_end
            else:
                self._held, self._held_end = await self.blobs.get(self.key), self.size
        if self._held is not None and end <= self._held_end:
            return self._held[start:end]
        if self._held is None and end <= self.header_end <= SEND_CHUNK:
            # a large message's header block: one read for all its header sections
            self._held, self._held_end = await self.blobs.get_range(self.key, 0, self.header_end), self.header_end
            return self._held[start:end]
        return await self.blobs.get_range(self.key, start, end - start)

    async def read(self, start: int, end: int) -> bytes:
        try:
            return await self._read(start, end)
        except NotFound:
            raise BrokenBlob(f"blob {self.key} is missing") from None

    async def chunks(self, start: int, end: int) -> AsyncIterator[bytes]:
        """``raw[start:end]`` in pieces of at most `SEND_CHUNK`, read one at a time."""
        for position in range(start, end, SEND_CHUNK):
            stop = min(position + SEND_CHUNK, end)
            data = await self.read(position, stop)
            if len(data) != stop - position:
                raise BrokenBlob(f"blob {self.key} has fewer octets than its {self.size}")
            yield data


class FetchOutput:
    """The FETCH responses of one command on their way out: small pieces gathered,
    large ones (a literal's chunks) sent as they come."""

    def __init__(self, session: ImapSession) -> None:
        self.session = session
        self.buffer = bytearray()

    def write(self, data: bytes) -> None:
        self.buffer += data

    async def send_chunk(self, data: bytes) -> None:
        if len(self.buffer) + len(data) < SEND_CHUNK:
            self.buffer += data
            return
        await self.flush()
        await self.session.send(data)

    async def message_done(self) -> None:
        if len(self.buffer) >= SEND_CHUNK:
            await self.flush()

    async def flush(self) -> None:
        if self.buffer:
            data, self.buffer = bytes(self.buffer), bytearray()
            await self.session.send(data)


#: What a NUL in a BODY[] / RFC822 value is sent as.  A literal is CHAR8, NUL excluded
#: (RFC 3501 section 9), and only BINARY may use literal8 (RFC 3516 section 4.2); the
#: octets of a "Content-Transfer-Encoding: binary" part are what they are, so the NUL is
#: replaced octet for octet (the length stays), as Dovecot does.  BINARY[] sends it as
#: it is, in a ``~{n}`` literal8.
NUL_STAND_IN = b"\x80"

#: A planned section value: the plan, the value's length and whether it holds NUL.
_Planned = tuple[SectionPlan, int, bool]


class FetchCommand:
    """FETCH and UID FETCH."""

    async def cmd_fetch(self: ImapSession, command: Command):
        args = command.arguments
        assert isinstance(args, Fetch)
        if args.vanished:  # RFC 7162 section 3.2.6: needs QRESYNC, which is not offered
            raise bad("VANISHED needs QRESYNC")
        attributes = list(args.attributes)
        names = {a.name for a in attributes}
        if names & {"SAVEDATE", "EMAILID", "THREADID"}:
            raise bad(TEXT_NOT_SUPPORTED)
        if sum(1 for a in attributes if is_section(a)) > self.fetch_sections:
            raise bad(TEXT_TOO_MANY_SECTIONS)
        if args.changed_since is not None or "MODSEQ" in names:
            await self._enable_condstore()  # a CONDSTORE enabling command (RFC 7162 3.1)
            if "MODSEQ" not in names:
                attributes.append(FetchAttribute("MODSEQ"))
                names.add("MODSEQ")
        if command.uid and "UID" not in names:
            attributes.insert(0, FetchAttribute("UID"))
        sets_seen = any(
            (a.name in ("BODY", "BINARY") and a.section is not None and not a.peek)
            or a.name in ("RFC822", "RFC822.TEXT")
            for a in attributes)
        needs_structure = bool(names & {"ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822", "RFC822.HEADER",
                                        "RFC822.TEXT", "BINARY", "BINARY.SIZE"})
        sel = self.sel
        resolved = self._resolve(args.sequence_set, command.uid)
        records = await self._records([u for _, u in resolved])
        targets = [(seq, u) for seq, u in resolved if u in records]
        if args.changed_since is not None:
            targets = [(seq, u) for seq, u in targets if records[u].modseq > args.changed_since]
        if sets_seen and not sel.read_only:
            unseen = [u for _, u in targets if "\\Seen" not in records[u].flags]
            if unseen:
                update = await self.store.index.store_flags(sel.id, unseen, frozenset({"\\Seen"}), "add")
                for record in update.changed:
                    records[record.uid] = record
        announcement = self._announce_keywords(records[u].flags for _, u in targets)
        if announcement:  # RFC 3501 section 7.2.6: FLAGS before a FETCH shows a new keyword
            await self.send(announcement)
        output = FetchOutput(self)
        try:
            for seq, u in targets:
                record = records[u]
                structure = await self._structure(record) if needs_structure else None
                items, source = await self._plan_message(attributes, record, structure)
                if sets_seen and "FLAGS" not in names and sel.flags.get(u) != record.flags:
                    items.append(("FLAGS", self._shown_flags(u, record.flags)))
                    if self.condstore and "MODSEQ" not in names:
                        items.append(("MODSEQ", r.encode_modseq(record.modseq)))
                elif self.condstore and "FLAGS" in names and "MODSEQ" not in names:
                    items.append(("MODSEQ", r.encode_modseq(record.modseq)))  # RFC 7162 3.1.4.1
                self._remember_flags(u, record.flags)
                await self._write_message(output, seq, items, source)
        except (StorageError, Refusal):
            await output.flush()  # the responses complete so far, then the NO
            raise
        await output.flush()
        return "FETCH completed"

    async def _plan_message(self: ImapSession, attributes: list[FetchAttribute], record: MessageRecord,
                            structure: MessageStructure | None,
                            ) -> tuple[list[tuple[str, bytes | _Planned]], MessageSource | None]:
        """Every item of one message's response: encoded, or a planned section."""
        source: MessageSource | None = None
        planned: dict[SectionPlan, tuple[int, bool]] = {}
        plans: list[SectionPlan | None] = []
        if any(is_section(a) for a in attributes):
            assert structure is not None
            try:
                plans = [plan_section(a, structure) for a in attributes if is_section(a)]
            except UnknownTransferEncoding:
                raise Refusal(TEXT_UNKNOWN_CTE, r.UNKNOWN_CTE) from None
            plans = [p.clamped(record.size) if p is not None else None for p in plans]
            header_end = structure.body.body_start
            header_only = all(p is None or p.end <= header_end for p in plans)
            source = MessageSource(self.store.blobs, record, header_end, header_only=header_only)
        sections = iter(plans)
        items: list[tuple[str, bytes | _Planned]] = []
        for attribute in attributes:
            name = attribute.name
            if name == "UID":
                items.append(("UID", r.encode_number(record.uid)))
            elif name == "FLAGS":
                items.append(("FLAGS", self._shown_flags(record.uid, record.flags)))
            elif name == "INTERNALDATE":
                items.append(("INTERNALDATE", r.encode_internal_date(record.internal_date)))
            elif name == "RFC822.SIZE":
                items.append(("RFC822.SIZE", r.encode_number(record.size)))
            elif name == "MODSEQ":
                items.append(("MODSEQ", r.encode_modseq(record.modseq)))
            elif is_section(attribute):
                plan = next(sections)
                if plan is None:
                    items.append((_nil_name(attribute), b"NIL"))
                    continue
                assert source is not None
                if plan not in planned:
                    planned[plan] = await _measure(plan, source)
                length, nul = planned[plan]
                if plan.size_only:
                    items.append((plan.item, r.encode_number(length)))
                else:
                    items.append((plan.item, (plan, length, nul)))
            else:  # ENVELOPE, BODYSTRUCTURE, BODY: from the stored structure
                assert structure is not None
                items.append(bodystructure.fetch_body_item(attribute, b"", structure, utf8=self.rev2))
        return items, source

    async def _write_message(self: ImapSession, output: FetchOutput, seq: int,
                             items: list[tuple[str, bytes | _Planned]], source: MessageSource | None) -> None:
        output.write(b"* " + r.encode_number(seq) + b" FETCH (")
        for position, (name, value) in enumerate(items):
            output.write((b" " if position else b"") + name.encode("ascii") + b" ")
            if isinstance(value, bytes):
                output.write(value)
                continue
            plan, length, nul = value
            output.write(literal_head(length, literal8=plan.binary and nul))
            assert source is not None
            try:
                sent = 0
                async for piece in _value_pieces(plan, source):
                    sent += len(piece)
                    if not plan.binary and b"\x00" in piece:
                        piece = piece.replace(b"\x00", NUL_STAND_IN)
                    await output.send_chunk(piece)
                if sent != length:
                    raise BrokenBlob(f"section of blob {source.key} changed length")
            except (StorageError, NotFound, BrokenBlob) as error:
                # the literal is under way: only closing tells the client it is broken
                log.warning("imap FETCH: closing the connection, message unreadable mid-response: %s", error)
                raise Logout() from None
        output.write(b")\r\n")
        await output.message_done()


def _nil_name(attribute: FetchAttribute) -> str:
    if attribute.name.startswith("RFC822"):
        return attribute.name
    if attribute.name == "BINARY.SIZE":
        assert attribute.section is not None
        return f"BINARY.SIZE[{r.section_spec_text(attribute.section)}]"
    return r.fetch_item_name(attribute)


async def _value_pieces(plan: SectionPlan, source: MessageSource) -> AsyncIterator[bytes]:
    """The octets of a planned value, in the order they go out."""
    if plan.transform is None:
        start, end = plan.window()
        async for chunk in source.chunks(start, end):
            yield chunk
        return
    stream = SectionStream(plan)
    async for chunk in source.chunks(plan.start, plan.end):
        out = stream.feed(chunk)
        if out:
            yield out
        if stream.done:
            return
    out = stream.finish()
    if out:
        yield out


async def _measure(plan: SectionPlan, source: MessageSource) -> tuple[int, bool]:
    """(length, holds NUL) of a planned value; NUL only matters (and is only looked for)
    for BINARY, whose literal8 says so."""
    if plan.transform is None and not plan.binary:
        start, end = plan.window()
        return end - start, False
    length, nul = 0, False
    async for piece in _value_pieces(plan, source):
        length += len(piece)
        nul = nul or (plan.binary and b"\x00" in piece)
    return length, nul
