"""Render notices into complete RFC 5322 messages: once per audience, spliced per recipient.

Recipients of one event who would see the same mail (same kind, visibility-filtered text,
hints, history: every field of the Notice but the per-recipient ones) share one rendering of
the body and of the common headers; each gets only its own `To`, signed `Reply-To` and
`Message-ID` lines. The MIME boundary is a digest of the parts, so a rendering is the same
bytes whether it was made for one recipient or for the whole audience, and across retries."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy as email_policy
from email import quoprimime
from email.headerregistry import Address
from email.parser import BytesHeaderParser
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
_MAX_LINE = 998  # RFC 5322 §2.1.1 MUST
# A header value we write ourselves: printable ASCII (spaces inside), no encoded-word syntax.
_PLAIN_HEADER_RE = re.compile(r"[!-~][ -~]*")
# What `_address` writes without the email package: a dot-atom address, an atom-only name.
_PLAIN_ADDR_RE = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
_PLAIN_NAME_RE = re.compile(r"(?:[A-Za-z0-9]+(?: [A-Za-z0-9]+)*)?")
# The headers that differ between recipients of one audience (everything else is shared).
PER_RECIPIENT_HEADERS = ("To", "Reply-To", "Message-ID")


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


def _address(name: str, addr: str) -> str | Address:
    """The header value for ``name <addr>``. A plain address (dot-atom local part, a host
    name) with a display name of letters, digits and spaces is written as is, which is what
    `Address` prints for it; anything else goes through `Address` (quoting, RFC 2047)."""
    check_header("Address", addr)
    display, spec = _header_text(name), addr.strip()
    if _PLAIN_ADDR_RE.fullmatch(spec) and _PLAIN_NAME_RE.fullmatch(display):
        return f"{display} <{spec}>" if display else spec
    return Address(display_name=display, addr_spec=spec)


def _when(at: datetime) -> str:
    moment = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _label(status: str) -> str:
    return status.replace("_", " ").lower()


def _nl2br(text: str) -> Markup:
    return Markup("<br>\n").join(escape(line) for line in text.split("\n"))


def audience(notice: Notice) -> Notice:
    """What a recipient's mail shares with the rest of its audience: the notice without the
    fields that only feed the per-recipient headers. Two notices with equal audiences render
    to the same bytes apart from `PER_RECIPIENT_HEADERS`."""
    return dataclasses.replace(
        notice, recipient_email="", recipient_name="", reply_address="", message_id="", role=""
    )


def _fold(name: str, value: str | Address) -> tuple[bytes, bool]:
    """One header field, CRLF-terminated, and whether the email package folded it.

    A printable-ASCII value without encoded-word syntax is written by us: as is when it fits
    78 octets, else folded before a space once a line would pass 78 (unfolding, RFC 5322
    §2.2.3, gives the value back). Anything else (non-ASCII names and subjects, quoting) is
    folded and RFC 2047-encoded by ``policy.SMTP``; those lines are parsed back before the
    mail leaves (`_verify_folded`)."""
    if isinstance(value, str) and "=?" not in value and _PLAIN_HEADER_RE.fullmatch(value):
        line = f"{name}: {value}"
        if len(line) <= _MAX_7BIT_LINE:
            return f"{line}\r\n".encode("ascii"), False
        words = value.split(" ")
        if "" not in words:
            lines, current = [], f"{name}:"
            for word in words:
                if len(current) + 1 + len(word) > _MAX_7BIT_LINE and current != f"{name}:":
                    lines.append(current)
                    current = ""
                current += " " + word
            lines.append(current)
            if max(len(x) for x in lines) <= _MAX_LINE:
                return ("\r\n".join(lines) + "\r\n").encode("ascii"), False
    p = email_policy.SMTP
    return p.fold_binary(name, p.header_factory(name, value)), True


def _verify_folded(lines: Sequence[bytes], names: Sequence[str]) -> None:
    # Defence in depth for CVE-2024-6923: the lines the email package folded, parsed back,
    # must be exactly the header fields we set, each free of line breaks once decoded.
    if not lines:
        return
    parsed = BytesHeaderParser(policy=email_policy.default).parsebytes(b"".join(lines) + b"\r\n")
    if Counter(n.lower() for n in parsed) != Counter(n.lower() for n in names):
        raise HeaderInjection("serialised headers differ from the headers set")
    for name, header in parsed.items():
        check_header(name, str(header))


def _cte(raw: bytes) -> str:
    plain = raw.isascii() and all(len(line) <= _MAX_7BIT_LINE for line in raw.splitlines())
    return "7bit" if plain else "quoted-printable"


def _mime_part(subtype: str, text: str) -> bytes:
    """One text part, as `EmailMessage.set_content(..., charset="utf-8")` writes it: lines
    normalised to CRLF with a final one, 7bit when that is safe, quoted-printable otherwise."""
    raw = text.encode("utf-8")
    cte = _cte(raw)
    lines = raw.splitlines()
    if cte == "7bit":
        body = b"\r\n".join(lines) + b"\r\n"
    else:
        encoded = quoprimime.body_encode(b"\n".join(lines).decode("latin-1") + "\n", _MAX_7BIT_LINE)
        body = encoded.replace("\n", "\r\n").encode("ascii")
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
    head = (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n'
    )
    return head.encode("ascii") + body


def _multipart(text: str, html: str) -> tuple[bytes, bytes]:
    """multipart/alternative of the two parts: (its header lines, its body). The boundary is
    a digest of the parts: the same content always gives the same bytes."""
    plain, rich = _mime_part("plain", text), _mime_part("html", html)
    digest = hashlib.sha256(plain + b"\0" + rich).hexdigest()
    for start in range(0, 40, 8):
        boundary = f"=_{digest[start : start + 24]}".encode("ascii")
        if b"--" + boundary not in plain and b"--" + boundary not in rich:
            break
    else:  # pragma: no cover - a digest found in its own input
        raise ValueError("no MIME boundary fits these parts")
    head = b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="' + boundary
    head += b'"\r\n'
    sep = b"--" + boundary + b"\r\n"
    return head, sep + plain + sep + rich + b"--" + boundary + b"--\r\n"


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
            # The templates are read once: without this, every `{% include %}` and
            # `{% extends %}` of every rendering asked the file system whether its template
            # changed (os.stat: 2.6 % of a PostgreSQL delivery worker, issue 17). A changed
            # template takes effect at the next start.
            auto_reload=False,
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
        """The whole message for one recipient, CRLF line ends, ready for SMTP."""
        return self.render_audience([notice])[0]

    def render_audience(self, notices: Sequence[Notice]) -> list[bytes]:
        """One message per notice, rendered once for all of them: they must share their
        `audience` (the caller groups by it). Each is byte for byte what `render` gives for
        that notice alone."""
        if not notices:
            return []
        first = notices[0]
        shared = audience(first)
        if any(audience(n) != shared for n in notices[1:]):
            raise ValueError("render_audience: the notices do not share one audience")
        if first.kind not in KINDS:
            raise ValueError(f"unknown notice kind {first.kind!r}")
        missing = [k for k in REQUIRED_EXTRA.get(first.kind, ()) if k not in first.extra]
        if missing:
            raise ValueError(f"{first.kind} notice lacks extra {', '.join(missing)}")
        context = self._context(first)
        text = self._templates[(first.kind, "txt")].render(context)
        html = self._templates[(first.kind, "html")].render(context)
        mime_head, body = _multipart(text, html)

        common: list[tuple[str, bytes | None]] = []
        folded: list[bytes] = []
        folded_names: list[str] = []
        for name, value in self._headers(first):
            if name in PER_RECIPIENT_HEADERS:
                common.append((name, None))
                continue
            line, by_package = _fold(name, value)
            common.append((name, line))
            if by_package:
                folded.append(line)
                folded_names.append(name)
        _verify_folded(folded, folded_names)

        out: list[bytes] = []
        for n in notices:
            own: dict[str, bytes] = {}
            own_folded: list[bytes] = []
            own_names: list[str] = []
            for name, value in self._recipient_headers(n):
                line, by_package = _fold(name, value)
                own[name] = line
                if by_package:
                    own_folded.append(line)
                    own_names.append(name)
            _verify_folded(own_folded, own_names)
            head = b"".join(line if line is not None else own[name] for name, line in common)
            out.append(head + mime_head + b"\r\n" + body)
        return out

    @staticmethod
    def _recipient_headers(n: Notice) -> list[tuple[str, str | Address]]:
        """The header fields of `PER_RECIPIENT_HEADERS`, checked."""
        message_id = _msg_id(n.message_id)
        if message_id is None:
            raise ValueError(f"bad Message-ID {n.message_id!r}")
        headers: list[tuple[str, str | Address]] = [
            # Only this recipient: copies get their own mail, hidden ones are never named.
            ("To", _address(n.recipient_name, n.recipient_email)),
            ("Reply-To", _address(n.from_name, n.reply_address)),
            ("Message-ID", f"<{message_id}>"),
        ]
        for name, value in headers:
            check_header(name, str(value))
        return headers

    def _headers(self, n: Notice) -> list[tuple[str, str | Address]]:
        if not _REF_RE.fullmatch(n.ticket_ref):
            raise ValueError(f"bad ticket reference {n.ticket_ref!r}")
        own = dict(self._recipient_headers(n))
        if n.auto_submitted is not None and n.auto_submitted not in AUTO_SUBMITTED_VALUES:
            raise ValueError(f"bad Auto-Submitted value {n.auto_submitted!r}")
        date = n.date if n.date.tzinfo is not None else n.date.replace(tzinfo=UTC)
        topic = _header_text(TAG_RE.sub(" ", strip_reply_prefixes(clean_header_text(n.subject))))

        headers: list[tuple[str, str | Address]] = [
            ("From", _address(n.from_name, n.from_address)),
            ("To", own["To"]),
            ("Reply-To", own["Reply-To"]),
            ("Subject", _header_text(tagged_subject(n.ticket_ref, n.subject))),
            ("Date", format_datetime(date)),
            ("Message-ID", own["Message-ID"]),
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
