"""Commands the channels hand to the service, and the results they get back."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.domain.lifecycle import Channel


@dataclass(frozen=True)
class AttachmentData:
    filename: str
    content_type: str
    data: bytes
    sha256: str
    inline: bool = False


@dataclass(frozen=True)
class DroppedFile:
    """An attachment the mail carried that was not kept: `size` bytes, over `limit` per file
    (`per_file`) or for all attachments of the mail together."""

    filename: str
    size: int
    limit: int
    per_file: bool

    def note(self) -> str:
        """What the sender and the ticket are told, e.g. `scan.pdf (31 MB) was not kept: over
        the 10 MB limit per file`."""
        scope = "per file" if self.per_file else "for all attachments of one mail"
        return (
            f"{self.filename} ({human_size(self.size)}) was not kept: "
            f"over the {human_size(self.limit)} limit {scope}"
        )


def human_size(n: int) -> str:
    """Bytes for people: `31 MB`, `1.5 MB`, `700 KB`, `12 bytes` (binary multiples)."""
    for unit, factor in (("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= factor:
            v = n / factor
            return f"{v:.0f} {unit}" if v >= 10 or v == int(v) else f"{v:.1f} {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class CommandSpec:
    """One requested action with its arguments (from a body command, the CLI or Slack)."""

    action: str
    args: tuple[str, ...] = ()
    remark: str = ""
    raw: str = ""


@dataclass(frozen=True)
class RaiseTicket:
    requester: str  # email
    to: str  # department address or employee email / gateway address
    subject: str
    body: str = ""
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    category: str = ""  # "A" or "A/B"
    priority: str = ""
    channel: Channel = Channel.CLI
    device: dict[str, Any] = field(default_factory=dict)
    attachments: tuple[AttachmentData, ...] = ()


@dataclass(frozen=True)
class Act:
    ref: str  # TKT-n
    actor: str  # email
    action: str
    args: tuple[str, ...] = ()
    remark: str = ""
    body: str = ""  # for reply / respond / message
    channel: Channel = Channel.CLI


@dataclass(frozen=True)
class Quarantine:
    rule: str
    reason: str
    kind: str
    bounced_recipients: tuple[str, ...] = ()
    original_message_ids: tuple[str, ...] = ()
    temporary: bool = False  # a delay warning (Action: delayed / 4.x.x), not a failure


@dataclass(frozen=True)
class FeedbackAnswer:
    """What an answer to a feedback request says: a rating 1–5 (None: no clear one) and the
    comment, the quoted request cut off (gateway/mail/feedback_answer.py reads it)."""

    rating: int | None
    comment: str


@dataclass(frozen=True)
class ReceiveMail:
    """A parsed inbound mail with its envelope, ready for the intake rules of SPEC §2.2–2.5."""

    channel: Channel
    envelope_from: str
    envelope_rcpts: tuple[str, ...]
    dedupe_key: str
    message_id: str | None
    raw: bytes
    raw_sha256: str
    from_email: str | None  # None when From is missing or defective: never authorises
    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str
    text: str
    html: str | None
    attachments: tuple[AttachmentData, ...]
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    commands: tuple[CommandSpec, ...]
    quarantine: Quarantine | None
    dmarc: str | None  # "pass" | "fail" | other, from a trusted authserv-id; None when none
    suppress_auto_reply: bool
    device: dict[str, Any] = field(default_factory=dict)
    defects: tuple[str, ...] = ()
    # Attachments over smtp.max_attachment_bytes or max_total_attachment_bytes, not kept.
    dropped_attachments: tuple[DroppedFile, ...] = ()
    # The mail read as an answer to a feedback request; used only when it is sent to a
    # feedback reply address (issue 13).
    feedback: FeedbackAnswer | None = None


@dataclass(frozen=True)
class QueueMail:
    """A mail as an edge (SMTP, IMAP) hands it to the inbound queue: raw bytes, the envelope,
    and what the headers say (its dedupe key, Message-ID and the Message-IDs it names)."""

    channel: Channel
    envelope_from: str
    envelope_rcpts: tuple[str, ...]
    raw: bytes
    raw_sha256: str
    dedupe_key: str
    message_id: str | None
    sender: str
    refs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Queued:
    """The queue's answer to one mail: a new record, or the record of an earlier delivery."""

    record_id: int
    duplicate: bool
    outcome: str
    rule: str


@dataclass(frozen=True)
class SenderStanding:
    """What the edge may know of a From address before the mail is queued."""

    employee: bool
    active: bool
    org_domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class QueuedMail:
    """A queued mail handed to the runner: its record and its envelope."""

    record_id: int
    at: datetime
    channel: Channel
    envelope_from: str
    envelope_rcpts: tuple[str, ...]
    raw: bytes
    attempts: int
    released: bool = False  # put back by `quarantine release`: the flood guards let it pass


@dataclass(frozen=True)
class ParsedMail:
    """A queued mail after parsing: the command, or the error that parsing raised."""

    mail: QueuedMail
    cmd: ReceiveMail | None
    error: str = ""


@dataclass(frozen=True)
class CommandResult:
    command: str
    applied: bool
    reason: str = ""


@dataclass(frozen=True)
class IntakeResult:
    """What became of an inbound mail; the channel turns it into its own reply."""

    outcome: str  # ticket | message | quarantined | refused | deferred
    rule: str
    ticket_ref: str | None = None
    code: int = 250
    text: str = "2.0.0 OK"
    commands: tuple[CommandResult, ...] = ()
