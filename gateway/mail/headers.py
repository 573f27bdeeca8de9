"""What the SMTP edge reads of a mail before it is queued: the header block only, no MIME parse."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from email import policy
from email.parser import BytesHeaderParser

_HEADER_END = re.compile(rb"\r?\n\r?\n")

from gateway.mail.parse import message_ids, parse_addresses


@dataclass(frozen=True)
class MailHeaders:
    """The headers that decide a mail's fate at the edge."""

    from_email: str | None  # None when From is missing, defective or names several mailboxes
    message_id: str | None
    refs: tuple[str, ...]  # In-Reply-To, then References newest first
    auth_results: tuple[str, ...]
    raw_sha256: str


def _author(values: list[str]) -> str | None:
    """The one mailbox of the From header(s), read as the parser reads it; None unless there
    is exactly one."""
    found = parse_addresses("from", values, [])
    return found[0].email if found is not None and len(found) == 1 else None


def read_headers(raw: bytes) -> MailHeaders:
    """The header block of `raw`: the bytes up to the first empty line, parsed alone (the
    body, attachments and all, is not even decoded)."""
    end = _HEADER_END.search(raw)
    block = raw[: end.end()] if end is not None else raw
    msg = BytesHeaderParser(policy=policy.compat32).parsebytes(block)

    items = [(str(k).lower(), str(v)) for k, v in msg.raw_items()]

    def values(name: str) -> list[str]:
        return [v for k, v in items if k == name]

    from_email = _author(values("from"))
    ids = message_ids(values("message-id")[0]) if values("message-id") else ()
    in_reply_to = message_ids(" ".join(values("in-reply-to")))
    references = message_ids(" ".join(values("references")))
    refs = tuple(dict.fromkeys((*in_reply_to, *reversed(references))))
    return MailHeaders(
        from_email=from_email,
        message_id=ids[0] if ids else None,
        refs=refs,
        auth_results=tuple(" ".join(v.split()) for v in values("authentication-results")),
        raw_sha256=hashlib.sha256(raw).hexdigest(),
    )
