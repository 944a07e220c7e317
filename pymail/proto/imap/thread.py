"""THREAD (RFC 5256 section 3): the ORDEREDSUBJECT and REFERENCES algorithms (section
2.1 / 2.2 of the threading part, "THREAD=ORDEREDSUBJECT" and "THREAD=REFERENCES") and
the thread-list response syntax, sans-IO.

Input is a list of `pymail.proto.imap.sort.MessageFacts`; output a forest of `Node`
(``number`` None for a dummy), rendered by `format_threads` as RFC 5256 section 5's
``thread-list`` (``(2)(3 6 (4 23)(44 7 96))``).

Invariants:

* Every input message appears exactly once in the forest; a dummy only where RFC 5256
  keeps one (at the root, with two or more children).
* Siblings are in sent date order (RFC 5256 section 2.2), ties by sequence number; a
  dummy's date is its first child's.
* Parent links never form a loop: a link that would is not made (REFERENCES step 1).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pymail.proto.imap.sort import (
    MessageFacts, base_subject, collation_key, extract_subject, sent_date,
)

__all__ = ["THREAD_ALGORITHMS", "Node", "format_threads", "thread_messages", "thread_response"]

THREAD_ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")


@dataclass(eq=False)
class Node:
    """One container: a message (``facts``) or a dummy (None), with its children."""

    facts: MessageFacts | None = None
    children: list[Node] = field(default_factory=list)
    parent: Node | None = None

    def first_message(self) -> MessageFacts | None:
        """The message, or a dummy's first child's (RFC 5256 section 2.2 step 5)."""
        node: Node | None = self
        while node is not None and node.facts is None:
            node = node.children[0] if node.children else None
        return None if node is None else node.facts

    def add_child(self, child: Node) -> None:
        if child.parent is not None:
            child.parent.children.remove(child)
        child.parent = self
        self.children.append(child)

    def has_descendant(self, other: Node) -> bool:
        stack = list(self.children)
        while stack:
            node = stack.pop()
            if node is other:
                return True
            stack += node.children
        return False


def _date_key(node: Node) -> tuple:
    facts = node.first_message()
    return (sent_date(facts), facts.sequence) if facts else (None, 0)


def _sort_siblings(nodes: list[Node]) -> None:
    """Sort every list of siblings by sent date, depth first (REFERENCES step 6); the
    children first, so that a dummy's first child is known."""
    for node in nodes:
        _sort_siblings(node.children)
    nodes.sort(key=_date_key)


def ordered_subject(messages: list[MessageFacts]) -> list[Node]:
    """ORDEREDSUBJECT (RFC 5256 section 3, "poor man's threading"): messages sorted by
    base subject then sent date, one thread per base subject, threads in the order of
    their first message's sent date; the second message is the child of the first and
    later ones its siblings, so there are no grandchildren."""
    keyed = sorted(messages, key=lambda m: (collation_key(base_subject(m.subject)),
                                            sent_date(m), m.sequence))
    threads: list[Node] = []
    current = None
    for facts in keyed:
        subject = collation_key(base_subject(facts.subject))
        if threads and subject == current:
            threads[-1].add_child(Node(facts))
        else:
            threads.append(Node(facts))
            current = subject
    threads.sort(key=_date_key)
    return threads


_MSG_ID = re.compile(r"<[^<>]*>")


def _ids(value: str | None) -> list[str]:
    """The msg-ids of a References / In-Reply-To / Message-ID value, in order."""
    return [m.group() for m in _MSG_ID.finditer(value or "") if len(m.group()) > 2]


def references(messages: list[MessageFacts]) -> list[Node]:
    """REFERENCES (RFC 5256 section 3, after JWZ): steps 1-6 as the RFC words them."""
    table: dict[str, Node] = {}
    for facts in messages:
        # (1) the message's own id; none, or one seen already, gets a unique one
        own = _ids(facts.message_id)
        key = own[0] if own else ""
        if not key or (key in table and table[key].facts is not None):
            key = f"\0unique-{facts.uid}"
        container = table.setdefault(key, Node())
        container.facts = facts
        # (1) the references: References, else the first msg-id of In-Reply-To
        refs = _ids(facts.references) or _ids(facts.in_reply_to)[:1]
        refs = [ref for ref in refs if ref != key]
        # (1B) link each reference to the next, unless already linked or a loop
        previous = None
        for ref in refs:
            node = table.setdefault(ref, Node())
            if (previous is not None and node.parent is None and node is not previous
                    and not node.has_descendant(previous)):
                previous.add_child(node)
            previous = node
        # (1C) the message's parent is the last reference, replacing any link it had
        if previous is not None and previous is not container \
                and not container.has_descendant(previous):
            previous.add_child(container)
        elif previous is None and container.parent is not None:
            container.parent.children.remove(container)
            container.parent = None
    # (2) the root set; (3) the id table is no longer needed
    roots = [node for node in table.values() if node.parent is None]
    # (4) prune dummies
    roots = _prune(roots, at_root=True)
    for node in roots:
        node.parent = None
    # (5) gather together root threads with the same base subject
    roots = _group_by_subject(roots)
    # (6) sort each set of siblings by sent date
    _sort_siblings(roots)
    return roots


def _prune(nodes: list[Node], *, at_root: bool) -> list[Node]:
    """REFERENCES step 4: a dummy without children goes; a dummy with children is
    replaced by them, except at the root with more than one child."""
    out: list[Node] = []
    for node in nodes:
        node.children = _prune(node.children, at_root=False)
        for child in node.children:
            child.parent = node
        if node.facts is not None:
            out.append(node)
        elif not node.children:
            continue
        elif at_root and len(node.children) > 1:
            out.append(node)
        else:
            out += node.children  # promoted to this level (at the root: one child)
    return out


def _group_by_subject(roots: list[Node]) -> list[Node]:
    """REFERENCES step 5 (A-C): root threads whose base subjects match are merged."""
    def subject_of(node: Node) -> tuple[str, bool]:
        facts = node.first_message() if node.facts is None else node.facts
        subject = facts.subject if facts else None
        base, reply = extract_subject(subject)
        return collation_key(base), reply

    # (5A/B) the subject table
    table: dict[str, Node] = {}
    for node in roots:
        subject, reply = subject_of(node)
        if not subject:
            continue
        old = table.get(subject)
        # replaced if this is a dummy and the table's is not, or the table's is a
        # reply or forward and this is not
        if (old is None or (node.facts is None and old.facts is not None)
                or (subject_of(old)[1] and not reply
                    and (old.facts is not None or node.facts is None))):
            table[subject] = node
    # (5C) merge, in root set order
    out: list[Node] = []
    for node in roots:
        if node.parent is not None:  # put under a new dummy already
            continue
        subject, reply = subject_of(node)
        old = table.get(subject) if subject else None
        if old is None or old is node:
            out.append(node)
            continue
        if old.facts is None and node.facts is None:  # both dummies: children to the one
            for child in list(node.children):
                old.add_child(child)
        elif old.facts is None:  # the table's is a dummy: this becomes its child
            old.add_child(node)
        elif node.facts is not None and reply and not subject_of(old)[1]:
            old.add_child(node)  # a reply to the table's, which is not one
        else:  # both replies or neither: siblings under a new dummy in the table's place
            dummy = Node()
            for i, n in enumerate(out):
                if n is old:
                    out[i] = dummy
                    break
            else:  # the table's comes later in the root set; skipped when reached
                out.append(dummy)
            dummy.add_child(old)
            dummy.add_child(node)
            table[subject] = dummy
    return [n for n in out if n.parent is None]


ALGORITHMS: dict[str, Callable[[list[MessageFacts]], list[Node]]] = {
    "ORDEREDSUBJECT": ordered_subject, "REFERENCES": references,
}


def thread_messages(algorithm: str, messages: list[MessageFacts]) -> list[Node]:
    """The thread forest of `messages` by `algorithm` (one of `THREAD_ALGORITHMS`)."""
    return ALGORITHMS[algorithm.upper()](messages)


def format_threads(threads: list[Node], number: Callable[[MessageFacts], int]) -> bytes:
    """RFC 5256 section 5: ``thread-list`` for each thread, `number` giving the
    sequence number or UID of a message.  thread-members = nz-number *(SP nz-number)
    [SP thread-nested]; thread-nested = 2*thread-list: a chain of single children is
    a run of numbers, two or more children each their own parenthesised list."""
    def members(node: Node) -> str:
        parts: list[str] = []
        while True:
            if node.facts is not None:
                parts.append(str(number(node.facts)))
            if len(node.children) == 1:
                node = node.children[0]
                continue
            if node.children:
                parts.append("".join(f"({members(child)})" for child in node.children))
            return " ".join(parts)

    return "".join(f"({members(root)})" for root in threads).encode("ascii")


def thread_response(threads: list[Node], number: Callable[[MessageFacts], int]) -> bytes:
    """``* THREAD (2)(3 6 (4 23)(44 7 96))`` (RFC 5256 section 4), ``* THREAD`` when
    nothing matched."""
    body = format_threads(threads, number)
    return b"* THREAD" + (b" " + body if body else b"") + b"\r\n"
