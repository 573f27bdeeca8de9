"""Render one notice for one recipient into a complete RFC 5322 message."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template, select_autoescape
from markupsafe import Markup, escape

from gateway.domain.subjects import (
    TAG_RE,
    HeaderInjection,
    check_header,
    clean_header_text,
    strip_reply_prefixes,
    tagged_subject,
)

KINDS = (
    "ack",
    "new_ticket",
    "new_message",
    "status_change",
    "escalation",
    "feedback_request",
    "reminder",
    "refusal",
    "attachments_not_kept",
)
# Keys of Notice.extra that a kind's templates read; checked before rendering so a missing
# one is a clear error rather than a half-rendered mail.
# ("escalation" reads an optional "level".)
REQUIRED_EXTRA: Mapping[str, tuple[str, ...]] = {
    "feedback_request": ("question",),
    "reminder": ("number", "of"),
    "refusal": ("reason",),
    "attachments_not_kept": ("not_kept",),
}
# RFC 3834 §5 and RFC 5436: the values an automatic message may carry.
AUTO_SUBMITTED_VALUES = frozenset({"auto-generated", "auto-replied", "auto-notified"})
# The footer shows the latest few status changes; the whole history is on `ticket show`.
HISTORY_LINES = 5
# RFC 5322 §3.6.4 leaves References unbounded, but some servers refuse very long headers;
# keep the root (the requester's first mail) and the most recent ones, as mail clients do.
MAX_REFERENCES = 20

_REF_RE = re.compile(r"TKT-\d{1,18}")
# RFC 5322 §3.6.4 msg-id without the angle brackets: visible ASCII, one "@", no brackets.
_MSG_ID_RE = re.compile(r"[!-;=?-~]+@[!-;=?-~]+")
_TEXT_CONTROLS_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029]")
_MAX_7BIT_LINE = 78  # RFC 5322 §2.1.1 SHOULD


@dataclass(frozen=True)
class HistoryLine:
    status: str
    actor: str
    at: datetime
    remark: str


@dataclass(frozen=True)
class CommandResult:
    command: str
    applied: bool
    reason: str


@dataclass(frozen=True)
class Notice:
    """Everything one recipient may see of one event; visibility was decided by the caller."""

    kind: str  # one of KINDS
    ticket_ref: str  # "TKT-7"
    subject: str  # ticket subject (untagged)
    status: str
    target: str  # human label of the target (department name or person)
    requester: str  # label
    recipient_email: str
    recipient_name: str
    role: str  # requester | assignee | owner | higher_authority | rc | rhc
    from_address: str
    from_name: str
    reply_address: str  # signed Reply-To for this recipient
    message_id: str  # without <>; fixed when the outbox row is written
    in_reply_to: str | None
    references: tuple[str, ...]  # oldest first
    thread_index: str
    auto_submitted: str | None  # None for relayed human messages
    date: datetime
    loop_token: str  # value of X-Loop
    actor: str = ""
    body: str = ""  # already visibility-filtered
    remark: str = ""
    history: tuple[HistoryLine, ...] = ()
    applied_commands: tuple[CommandResult, ...] = ()
    commands_hint: tuple[str, ...] = ()
    extra: Mapping[str, str] = field(default_factory=dict)


def templates_dir() -> Path:
    """The repository's ``templates/`` folder."""
    return Path(__file__).resolve().parents[2] / "templates"


def _header_text(s: str) -> str:
    """Clean header text, with "=?" defused so it cannot be read as an RFC 2047 encoded word.

    On Python without the CVE-2024-6923 fix, ``msg["Subject"] = "=?UTF-8?Q?=0A?=Bcc: x"`` is
    decoded to a real newline by the header registry and written out as a new header line.
    A word joiner (U+2060) keeps the text as the reader sees it and breaks the syntax.
    """
    return clean_header_text(s).replace("=?", "=\u2060?")


def _body_text(s: str) -> str:
    """Multi-line text for a body part: one newline convention, no control characters."""
    text = s.replace("\r\n", "\n").replace("\r", "\n")
    return _TEXT_CONTROLS_RE.sub("", text).strip("\n")


def _msg_id(value: str) -> str | None:
    bare = value.strip()
    if bare.startswith("<") and bare.endswith(">"):
        bare = bare[1:-1]
    return bare if _MSG_ID_RE.fullmatch(bare) else None


def _address(name: str, addr: str) -> Address:
    check_header("Address", addr)
    return Address(display_name=_header_text(name), addr_spec=addr.strip())


def _when(at: datetime) -> str:
    moment = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _label(status: str) -> str:
    return status.replace("_", " ").lower()


def _nl2br(text: str) -> Markup:
    return Markup("<br>\n").join(escape(line) for line in text.split("\n"))


def _cte(text: str) -> str:
    plain = text.isascii() and all(len(line) <= _MAX_7BIT_LINE for line in text.splitlines())
    return "7bit" if plain else "quoted-printable"


class Renderer:
    """Jinja2 templates in, message bytes out; templates only substitute and loop."""

    def __init__(self, templates_dir: Path) -> None:
        self._env = Environment(
            loader=FileSystemLoader(str(templates_dir)),
            autoescape=select_autoescape(
                enabled_extensions=("html.j2",), default_for_string=False, default=False
            ),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self._env.filters["when"] = _when
        self._env.filters["label"] = _label
        self._env.filters["nl2br"] = _nl2br
        # A missing or broken template fails here, at start-up, not on the first mail.
        self._templates: dict[tuple[str, str], Template] = {
            (kind, part): self._env.get_template(f"{kind}.{part}.j2")
            for kind in KINDS
            for part in ("txt", "html")
        }

    def render(self, notice: Notice) -> bytes:
        """The whole message, CRLF line ends, ready for SMTP."""
        if notice.kind not in KINDS:
            raise ValueError(f"unknown notice kind {notice.kind!r}")
        missing = [k for k in REQUIRED_EXTRA.get(notice.kind, ()) if k not in notice.extra]
        if missing:
            raise ValueError(f"{notice.kind} notice lacks extra {', '.join(missing)}")
        context = self._context(notice)
        text = self._templates[(notice.kind, "txt")].render(context)
        html = self._templates[(notice.kind, "html")].render(context)

        msg = EmailMessage(policy=email_policy.SMTP)
        for name, value in self._headers(notice):
            msg[name] = value
        msg.set_content(text, subtype="plain", charset="utf-8", cte=_cte(text))
        msg.add_alternative(html, subtype="html", charset="utf-8", cte=_cte(html))
        for part in msg.iter_parts():
            # add_alternative builds the part as a whole message; MIME-Version belongs on top.
            del part["MIME-Version"]
        expected = Counter(name.lower() for name in msg)
        for name, header in msg.items():
            check_header(name, str(header))  # the decoded value, after RFC 2047
        data = msg.as_bytes(policy=email_policy.SMTP)
        self._verify_serialised(data, expected)
        return data

    @staticmethod
    def _verify_serialised(data: bytes, expected: Counter[str]) -> None:
        # Defence in depth for CVE-2024-6923: parse what we wrote and insist it has exactly
        # the header lines we set, each free of line breaks once decoded.
        parsed = message_from_bytes(data, policy=email_policy.default)
        if Counter(name.lower() for name in parsed) != expected:
            raise HeaderInjection("serialised headers differ from the headers set")
        for name, header in parsed.items():
            check_header(name, str(header))

    def _headers(self, n: Notice) -> list[tuple[str, str | Address]]:
        if not _REF_RE.fullmatch(n.ticket_ref):
            raise ValueError(f"bad ticket reference {n.ticket_ref!r}")
        message_id = _msg_id(n.message_id)
        if message_id is None:
            raise ValueError(f"bad Message-ID {n.message_id!r}")
        if n.auto_submitted is not None and n.auto_submitted not in AUTO_SUBMITTED_VALUES:
            raise ValueError(f"bad Auto-Submitted value {n.auto_submitted!r}")
        date = n.date if n.date.tzinfo is not None else n.date.replace(tzinfo=UTC)
        topic = _header_text(TAG_RE.sub(" ", strip_reply_prefixes(clean_header_text(n.subject))))

        headers: list[tuple[str, str | Address]] = [
            ("From", _address(n.from_name, n.from_address)),
            # Only this recipient: copies get their own mail, hidden ones are never named.
            ("To", _address(n.recipient_name, n.recipient_email)),
            ("Reply-To", _address(n.from_name, n.reply_address)),
            ("Subject", _header_text(tagged_subject(n.ticket_ref, n.subject))),
            ("Date", format_datetime(date)),
            ("Message-ID", f"<{message_id}>"),
        ]
        # A malformed id from someone's client is left out of the chain, not worth a lost mail.
        parent = _msg_id(n.in_reply_to) if n.in_reply_to else None
        if parent:
            headers.append(("In-Reply-To", f"<{parent}>"))
        chain = [ref for ref in (_msg_id(r) for r in n.references) if ref]
        if len(chain) > MAX_REFERENCES:
            chain = chain[:1] + chain[-(MAX_REFERENCES - 1) :]
        if chain:
            headers.append(("References", " ".join(f"<{ref}>" for ref in chain)))
        # Outlook threads by Thread-Topic/Thread-Index (MS-OXOMSG 2.2.1.3, 2.2.1.5).
        headers.append(("Thread-Topic", topic))
        headers.append(("Thread-Index", clean_header_text(n.thread_index)))
        if n.auto_submitted is not None:
            # RFC 3834 §5: marks the mail as automatic so responders do not answer it.
            headers.append(("Auto-Submitted", n.auto_submitted))
        # MS-OXCMAIL 2.1.3.2.20: ask Exchange/Outlook not to send OOF or receipts back.
        headers.append(("X-Auto-Response-Suppress", "All"))
        headers.append(("X-Loop", _header_text(n.loop_token)))
        headers.append(("X-Ticketgate-Ticket", n.ticket_ref))
        for name, value in headers:
            check_header(name, str(value))
        return headers

    @staticmethod
    def _context(n: Notice) -> dict[str, object]:
        one_line = clean_header_text
        return {
            "kind": n.kind,
            "ticket_ref": n.ticket_ref,
            "subject": one_line(strip_reply_prefixes(n.subject)),
            "status": one_line(n.status),
            "target": one_line(n.target),
            "requester": one_line(n.requester),
            "recipient_name": one_line(n.recipient_name) or n.recipient_email,
            "role": n.role,
            "actor": one_line(n.actor),
            "from_name": one_line(n.from_name),
            "body": _body_text(n.body),
            "remark": _body_text(n.remark),
            "history": tuple(
                HistoryLine(
                    status=one_line(h.status),
                    actor=one_line(h.actor),
                    at=h.at,
                    remark=one_line(h.remark),
                )
                for h in n.history[-HISTORY_LINES:]
            ),
            "applied_commands": tuple(
                CommandResult(
                    command=one_line(c.command), applied=c.applied, reason=one_line(c.reason)
                )
                for c in n.applied_commands
            ),
            "commands_hint": tuple(one_line(c) for c in n.commands_hint),
            "extra": {k: _body_text(v) for k, v in n.extra.items()},
        }
