"""What the IMAP intake queues for a fetched message: its envelope as the delivering MTA left it.

There is no SMTP session under IMAP: the envelope is read from the headers the last delivery
added. The sender is the first `Return-Path` (`<>` for a bounce: the null reverse path); the
recipients are those of `Delivered-To`, `X-Original-To` and `Envelope-To` that the gateway
owns (SPEC §2.2: one not in To/Cc was Bcc'd, an RHC), plus the department(s) the mailbox
serves, so that a mail whose headers do not name the mailbox's address still reaches it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from email import policy
from email.parser import BytesHeaderParser

from gateway.domain.lifecycle import Channel
from gateway.mail.headers import queue_mail as build_queue_mail
from gateway.mail.headers import read_headers
from gateway.mail.parse import parse_addresses
from gateway.service.commands import QueueMail

ENVELOPE_HEADERS = ("delivered-to", "x-original-to", "envelope-to")
_EMPTY_LINE = re.compile(rb"\r?\n\r?\n")


def envelope_of(raw: bytes) -> tuple[str | None, list[str]]:
    """(Return-Path or None when there is none, the envelope recipients the headers name)."""
    end = _EMPTY_LINE.search(raw)
    head = raw[: end.end()] if end else raw
    msg = BytesHeaderParser(policy=policy.compat32).parsebytes(head)
    items = [(str(k).lower(), str(v)) for k, v in msg.raw_items()]
    return_path: str | None = None
    for k, v in items:
        if k == "return-path":
            inner = v.strip()
            inner = inner[1:-1] if inner.startswith("<") and inner.endswith(">") else inner
            return_path = inner.strip()
            break  # the first is the one the last delivery added
    rcpts: list[str] = []
    for name in ENVELOPE_HEADERS:
        for value in (v for k, v in items if k == name):
            # Parsed as an address list (the parser knows these names only as unstructured
            # text), one value at a time: a defective one costs only itself.
            for addr in parse_addresses("to", [value], []) or ():
                low = addr.email.lower()
                if low and low not in rcpts:
                    rcpts.append(low)
    return return_path, rcpts


def queue_mail(
    raw: bytes,
    *,
    departments: Sequence[str],
    is_ours: Callable[[str], bool],
) -> QueueMail:
    """The queue's view of one fetched message: `is_ours(address)` says whether an envelope
    header's address is one of the gateway's (department, employee, reply address)."""
    head = read_headers(raw)
    return_path, named = envelope_of(raw)
    rcpts = [a for a in named if is_ours(a)]
    for d in departments:
        if d.lower() not in rcpts:
            rcpts.append(d.lower())
    sender = return_path if return_path is not None else (head.from_email or "")
    return build_queue_mail(
        raw, head, envelope_from=sender, envelope_rcpts=rcpts, channel=Channel.EMAIL
    )
