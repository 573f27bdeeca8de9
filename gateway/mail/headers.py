"""What the SMTP edge reads of a mail before it is queued: the header block only, no MIME parse."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email import policy
from email.parser import BytesHeaderParser

from gateway.domain.lifecycle import Channel
from gateway.mail.parse import message_ids, parse_addresses
from gateway.mail.translate import dedupe_key
from gateway.service.commands import QueueMail


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


# Two line ends in a row (LF LF, LF CR, CR CR; a CR LF is one): an empty line, at or after
# the end of the header block (the parser may stop earlier, at a line that is no field).
_EMPTY_LINE = re.compile(rb"\n\r|\r\r|\n\n")


def read_headers(raw: bytes) -> MailHeaders:
    """The header block of `raw` (BytesHeaderParser stops at the first empty line). Only the
    bytes up to the first empty line are handed to the parser: it would decode the whole mail
    and keep the body as a str, five copies of a large mail (issue 12)."""
    empty = _EMPTY_LINE.search(raw)
    head = raw[: empty.end() + 1] if empty else raw
    msg = BytesHeaderParser(policy=policy.compat32).parsebytes(head)

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


def queue_mail(
    raw: bytes,
    head: MailHeaders,
    *,
    envelope_from: str,
    envelope_rcpts: Sequence[str],
    channel: Channel = Channel.EMAIL,
) -> QueueMail:
    """What an edge hands to the inbound queue for `raw`, whose headers `head` it has read:
    the envelope (lower-cased), the dedupe key, the Message-ID and the Message-IDs it names."""
    author = head.from_email or envelope_from.lower()
    return QueueMail(
        channel=channel,
        envelope_from=envelope_from.lower(),
        envelope_rcpts=tuple(r.lower() for r in envelope_rcpts),
        raw=raw,
        raw_sha256=head.raw_sha256,
        dedupe_key=dedupe_key(author, head.message_id, head.raw_sha256),
        message_id=head.message_id,
        sender=author,
        refs=head.refs,
    )
