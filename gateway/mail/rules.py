"""Decide whether an inbound mail is automatic (bounce, auto-reply, list, loop): never a ticket.

Mailman style: each rule is a small class with a `name`, a `description` and `check()`;
`classify()` runs them in order and the first hit is the verdict recorded in quarantine
(SPEC §2.5). Order matters only for the `kind` reported: specific evidence (a DSN, an
out-of-office) is consulted before generic evidence (Precedence, a null reverse path).
"""

from __future__ import annotations

import email
import re
from collections.abc import Iterable
from dataclasses import dataclass
from email import policy
from typing import Protocol

from flufl.bounce import all_failures

from gateway.mail.parse import InboundMail, ParsedAttachment, header, headers_named


@dataclass(frozen=True)
class RuleContext:
    """What the rules know besides the mail itself."""

    envelope_from: str  # SMTP MAIL FROM (or Return-Path under IMAP); "" for the null path <>
    own_domains: frozenset[str]  # the gateway's mail domain(s): our Message-IDs, our X-Loop
    loop_token: str  # the X-Loop value we put on every mail we send


@dataclass(frozen=True)
class Verdict:
    """Why a mail is not a ticket; `reason` is what the processing record shows."""

    rule: str
    reason: str  # e.g. "quarantined: Auto-Submitted: auto-replied"
    kind: str  # "bounce" | "auto_reply" | "out_of_office" | "list" | "loop"
    bounced_recipients: tuple[str, ...] = ()
    original_message_ids: tuple[str, ...] = ()
    temporary: bool = False  # a delay warning (RFC 3464 Action: delayed), not a failure


class Rule(Protocol):
    """One named check; returns a Verdict on a hit, None otherwise."""

    name: str
    description: str

    def check(self, mail: InboundMail, ctx: RuleContext) -> Verdict | None: ...


# --- shared evidence --------------------------------------------------------------------

# Local parts that only MTAs send from (RFC 5321 §4.5.5 bounces, RFC 2142 role accounts).
_DAEMON_LOCALPARTS = frozenset(
    {"mailer-daemon", "mailer_daemon", "mailerdaemon", "mail-daemon", "mdaemon", "postmaster",
     "post_master", "post-master"}
)  # fmt: skip
_DAEMON_NAME = re.compile(r"mail(er)?[\s_-]*daemon|mail delivery (sub)?system", re.IGNORECASE)
# Subjects of non-delivery and delay reports from MTAs that send no RFC 3464 DSN.
_NDR_SUBJECT = re.compile(
    r"undeliver|undelivered|returned mail|mail delivery fail|delivery status notification|"
    r"delivery fail|failure notice|could not be delivered|not (?:been )?delivered|"
    r"delivery (?:has )?failed|message delayed|delayed mail|warning: could not send|"
    r"warning: message .* delayed|not yet been delivered|failed mail|non-?deliver|"
    r"mail error|delivery report|permanent delivery failure|nameserver error|"
    r"returned to sender|unzustellbar|nicht zustellbar|non remis|no entregado|"
    r"non recapitato|onbestelbaar|не доставлено|配信できません|complaint about message from",
    re.IGNORECASE,
)
# Phrases MTAs put in the body of a plain-text bounce.
_NDR_BODY = re.compile(
    r"could not be delivered|delivery to the following recipient|failed recipients|"
    r"unable to deliver|undeliverable|permanent (?:fatal )?(?:delivery )?error|"
    r"message (?:was )?not delivered|user unknown|no such user|mailbox unavailable|"
    r"returned mail|delivery has failed",
    re.IGNORECASE,
)
_ORIGINAL_PART_TYPES = frozenset(
    {"message/rfc822", "message/global", "text/rfc822-headers", "message/rfc822-headers",
     "message/global-headers"}
)  # fmt: skip
_DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_MSG_ID = re.compile(r"<([^<>\s]{1,900})>")


def _addr_domain(value: str) -> str:
    return value.rpartition("@")[2].strip().strip(">").lower()


def _from_localpart_and_name(mail: InboundMail) -> tuple[str, str]:
    if mail.from_addr:
        return mail.from_addr.email.partition("@")[0], mail.from_addr.name
    raw = header(mail, "from") or ""
    # The From: of a defective header is not trusted as an author, but it still tells
    # whether an MTA wrote the mail ("MAILER-DAEMON <>" has no addr-spec at all).
    match = re.search(r"([\w.+-]+)@", raw)
    return (match.group(1).lower() if match else ""), raw


def _from_is_null(mail: InboundMail) -> bool:
    raw = header(mail, "from") or ""
    return bool(re.search(r"<\s*>\s*$", raw))


def _is_daemon_sender(mail: InboundMail) -> bool:
    local, name = _from_localpart_and_name(mail)
    return local in _DAEMON_LOCALPARTS or bool(_DAEMON_NAME.search(name)) or _from_is_null(mail)


def _has_part(mail: InboundMail, types: Iterable[str]) -> bool:
    wanted = frozenset(types)
    return any(a.content_type in wanted for a in mail.attachments)


def _text_sample(mail: InboundMail, limit: int = 20_000) -> str:
    return mail.text[:limit]


def _ids_in_headers(data: bytes) -> tuple[str, ...]:
    """Message-ID of an attached original (whole message or only its headers)."""
    try:
        headers = email.message_from_bytes(data[: 256 * 1024], policy=policy.compat32)
        value = headers.get("Message-ID")
    except Exception:  # noqa: BLE001 - an unreadable original just yields no id
        return ()
    return tuple(_MSG_ID.findall(str(value))) if value else ()


def original_message_ids(mail: InboundMail) -> tuple[str, ...]:
    """Message-IDs of the mail a report is about: the attached original first, then
    In-Reply-To / References (Exchange and others thread their NDRs)."""
    ids: list[str] = []
    for part in mail.attachments:
        if part.content_type in _ORIGINAL_PART_TYPES:
            ids.extend(_ids_in_headers(part.data))
    ids.extend(mail.in_reply_to)
    ids.extend(mail.references)
    return tuple(dict.fromkeys(i for i in ids if i))


def _dsn_fields(part: ParsedAttachment) -> list[dict[str, str]]:
    """Per-recipient field blocks of an RFC 3464 message/delivery-status body."""
    text = part.data.decode("utf-8", "replace").replace("\r\n", "\n")
    blocks: list[dict[str, str]] = []
    for chunk in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in re.sub(r"\n[ \t]+", " ", chunk).split("\n"):
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip().lower()] = value.strip()
        if fields:
            blocks.append(fields)
    return blocks


def _recipient_of(fields: dict[str, str]) -> str | None:
    # RFC 3464 §2.3.1: Original-Recipient is the address as *we* wrote it; Final-Recipient
    # may be a rewritten local mailbox (an alias expanded on the far side).
    for key in ("original-recipient", "final-recipient"):
        value = fields.get(key)
        if value:
            addr = value.partition(";")[2].strip() if ";" in value else value
            addr = addr.strip().strip("<>").lower()
            if "@" in addr:
                return addr
    return None


def bounce_details(mail: InboundMail) -> tuple[tuple[str, ...], bool]:
    """Bounced recipients and whether the report is only a delay warning.

    RFC 3464 delivery-status blocks are read first (Action: failed vs delayed); then
    X-Failed-Recipients (Exim, Gmail); then flufl.bounce's detectors for the dozens of
    non-standard formats (Mailman's own bounce scanner).
    """
    failed: list[str] = []
    delayed: list[str] = []
    for part in mail.attachments:
        if part.content_type in _DSN_TYPES:
            for fields in _dsn_fields(part):
                addr = _recipient_of(fields)
                if addr is None:
                    continue
                action = fields.get("action", "failed").lower()
                # RFC 3463 §3.1: a 4.x.x status is a transient condition, whatever the Action.
                transient = fields.get("status", "").strip().startswith("4")
                is_delay = action.startswith("delayed") or transient
                (delayed if is_delay else failed).append(addr)
    for value in headers_named(mail, "x-failed-recipients"):
        failed.extend(a.strip().lower() for a in re.split(r"[,\s]+", value) if "@" in a)
    if not failed and not delayed:
        try:
            temporary, permanent = all_failures(email.message_from_bytes(mail.raw))
        except Exception:  # noqa: BLE001 - a detector bug must not lose the quarantine
            temporary, permanent = frozenset(), frozenset()
        failed.extend(_decode_addresses(permanent))
        delayed.extend(_decode_addresses(temporary))
    # Detectors that scan text can mistake the original's Message-ID for an address.
    ids = {i.lower() for i in original_message_ids(mail)}
    recipients = tuple(a for a in dict.fromkeys(failed or delayed) if a not in ids)
    return recipients, not failed and bool(delayed or _looks_like_delay(mail))


def _decode_addresses(values: Iterable[bytes | str]) -> list[str]:
    out = []
    for value in values:
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        text = text.strip().strip("<>").lower()
        if re.fullmatch(r"[^\s@<>]+@[\w.-]+\.[a-z]{2,}", text):
            out.append(text)
    return sorted(out)


_DELAY_SUBJECT = re.compile(
    r"delayed|not yet been delivered|could not send message for past|still being retried|"
    r"warning",
    re.IGNORECASE,
)


def _looks_like_delay(mail: InboundMail) -> bool:
    return bool(_DELAY_SUBJECT.search(mail.subject))


def _bounce(rule: str, reason: str, mail: InboundMail) -> Verdict:
    recipients, temporary = bounce_details(mail)
    return Verdict(
        rule=rule,
        reason=f"quarantined: {reason}",
        kind="bounce",
        bounced_recipients=recipients,
        original_message_ids=original_message_ids(mail),
        temporary=temporary,
    )


def _verdict(rule: str, reason: str, kind: str, mail: InboundMail) -> Verdict:
    return Verdict(
        rule=rule,
        reason=f"quarantined: {reason}",
        kind=kind,
        original_message_ids=mail.in_reply_to + mail.references,
    )


# --- the rules --------------------------------------------------------------------------


class OwnLoop:
    """X-Loop carries our own token: our mail came back (RFC 3834 §5 loop detection)."""

    name = "own-loop"
    description = "X-Loop names this gateway"

    def check(self, mail: InboundMail, ctx: RuleContext) -> Verdict | None:
        token = ctx.loop_token.strip().lower()
        for value in headers_named(mail, "x-loop"):
            if token and value.strip().lower() == token:
                return _verdict(self.name, f"X-Loop: {value}", "loop", mail)
        return None


class OwnMessageId:
    """The Message-ID was minted on our own domain: this is a mail we sent."""

    name = "own-message-id"
    description = "Message-ID on the gateway's own domain"

    def check(self, mail: InboundMail, ctx: RuleContext) -> Verdict | None:
        if not mail.message_id or "@" not in mail.message_id:
            return None
        domain = _addr_domain(mail.message_id)
        for own in ctx.own_domains:
            own = own.lower()
            if domain == own or domain.endswith("." + own):
                return _verdict(self.name, f"Message-ID <{mail.message_id}> is ours", "loop", mail)
        return None


class MultipartReport:
    """RFC 6522 multipart/report: DSN (RFC 3464), MDN (RFC 8098), ARF (RFC 5965)."""

    name = "multipart-report"
    description = "multipart/report (delivery status, read receipt, abuse feedback)"

    def check(self, mail: InboundMail, ctx: RuleContext) -> Verdict | None:
        if mail.content_type != "multipart/report" and mail.content_type not in _DSN_TYPES:
            return None
        report = mail.report_type or "delivery-status"
        reason = f"multipart/report; report-type={report}"
        if report == "disposition-notification":  # a read receipt is an automatic answer
            return _verdict(self.name, reason, "auto_reply", mail)
        return _bounce(self.name, reason, mail)


class NonStandardBounce:
    """Bounces without a proper multipart/report: MTA senders, NDR subjects, Exim headers."""

    name = "non-standard-bounce"
    description = "non-delivery report from an MTA that sends no RFC 3464 DSN"

    def check(self, mail: InboundMail, ctx: RuleContext) -> Verdict | None:
        if headers_named(mail, "x-failed-recipients"):
            return _bounce(self.name, "X-Failed-Recipients present", mail)
        if header(mail, "x-ms-exchange-message-is-ndr") is not None:
            return _bounce(self.name, "X-MS-Exchange-Message-Is-Ndr present", mail)
        if _has_part(mail, _DSN_TYPES):
            return _bounce(self.name, "message/delivery-status part", mail)
        if _is_daemon_sender(mail):
            return _bounce(self.name, f"sent by an MTA: {header(mail, 'from')}", mail)
        if _NDR_SUBJECT.search(mail.subject) and (
            not ctx.envelope_from
            or _has_part(mail, _ORIGINAL_PART_TYPES)
            or _NDR_BODY.search(_text_sample(mail))
        ):
            return _bounce(self.name, f"non-delivery subject: {mail.subject[:80]}", mail)
        return None


# Outlook/Exchange, Gmail, Apple and other clients prefix the subject of an out-of-office
# answer with these words; they are never typed by a person in front of a subject.
_OOO_PREFIX = re.compile(
    r"^\s*(?:automatic reply|automatische antwort|abwesenheitsnotiz|réponse automatique|"
    r"respuesta automática|risposta automatica|automatisch antwoord|autosvar|"
    r"automaattinen vastaus|odpowiedź automatyczna|автоматический ответ|"
    r"resposta automática|out of (?:the )?office(?: reply| autoreply)?|ooo)\s*:",
    re.IGNORECASE,
)
# Words of an absence in the subject: evidence only together with an automatic signal,
# since "Vacation request" is also a perfectly good ticket subject.
_OOO_WORDS = re.compile(
    r"out of (?:the )?office|away until|away from|on vacation|on leave|vacation|holiday|"
    r"abwesen|urlaub|außer haus|ausser haus|congés|absent|absence|fuera de la oficina|"
    r"ausente|fuori ufficio|assente|afwezig|frånvaro|fraværende|poissa|poza biurem|"
    r"нет на месте|в отпуске|不在",
    re.IGNORECASE,
)


def _automatic_signal(mail: InboundMail, ctx: RuleContext) -> str | None:
    auto = header(mail, "auto-submitted")
    if auto and auto.strip().lower() != "no":
        return f"Auto-Submitted: {auto}"
    # X-Auto-Response-Suppress is not here: it asks us not to answer, it does not mark the
    # mail as automatic (MS-OXCMAIL 2.1.3.2.20; sisimai#491). People's Outlook mail carries it.
    for name in ("x-autoreply", "x-autorespond",
                 "x-ms-exchange-inbox-rules-loop", "precedence"):  # fmt: skip
        value = header(mail, name)
        if value is not None:
            return f"{name}: {value}"
    if not ctx.envelope_from:
        return "null reverse path"
    return None


class OutOfOffice:
    """Vacation and absence notices (RFC 3834 responders, Exchange OOF, Apple vacation)."""

    name = "out-of-office"
    description = "out-of-office / vacation auto-reply"

    def check(self, mail: InboundMail, ctx: RuleContext) -> Verdict | None:
        apple = (header(mail, "x-apple-action") or "") + (header(mail, "x-apple-criteria") or "")
        if "vacation" in apple.lower():
            return _verdict(self.name, "X-Apple-Action: VACATION", "out_of_office", mail)
        if _OOO_PREFIX.search(mail.subject):
            return _verdict(self.name, f"subject: {mail.subject[:80]}", "out_of_office", mail)
        signal = _automatic_signal(mail, ctx)
        if signal and _OOO_WORDS.search(mail.subject):
            reason = f"{signal}; subject: {mail.subject[:80]}"
            return _verdict(self.name, reason, "out_of_office", mail)
        return None


_CHALLENGE_HEADERS = ("x-boxtrapper", "x-ask-info", "x-challenge", "x-spamarrest-noauth",
                      "x-tmda-confirm", "x-cr-hashedpuzzle")  # fmt: skip
_CHALLENGE_SUBJECT = re.compile(
    r"please confirm your (?:e-?mail|message)|verify your (?:e-?mail|message)|"
    r"authenticat(?:e|ion) (?:request|required)|confirm(?:ation)? (?:request|required).*message|"
    r"spam ?arrest|boxtrapper|mailbox verification",
    re.IGNORECASE,
)


class ChallengeResponse:
    """Challenge-response spam filters asking us to prove we are human."""

    name = "challenge-response"
    description = "challenge-response verification request"

    def check(self, mail: InboundMail, ctx: RuleContext) -> Verdict | None:
        for name in _CHALLENGE_HEADERS:
            if header(mail, name) is not None:
                return _verdict(self.name, f"{name} present", "auto_reply", mail)
        if _CHALLENGE_SUBJECT.search(mail.subject) and _automatic_signal(mail, ctx):
            return _verdict(self.name, f"subject: {mail.subject[:80]}", "auto_reply", mail)
        return None


class AutoSubmitted:
    """RFC 3834 §5: Auto-Submitted other than "no" marks an automatic message."""

    name = "auto-submitted"
    description = "Auto-Submitted header other than no"

    def check(self, mail: InboundMail, ctx: RuleContext) -> Verdict | None:
        value = header(mail, "auto-submitted")
        if value is not None and value.strip().lower().split("(")[0].strip() != "no":
            return _verdict(self.name, f"Auto-Submitted: {value}", "auto_reply", mail)
        return None


class XAutoreply:
    """X-Autoreply (qmail, Yahoo, many vacation programs)."""

    name = "x-autoreply"
    description = "X-Autoreply header"

    def check(self, mail: InboundMail, ctx: RuleContext) -> Verdict | None:
        value = header(mail, "x-autoreply")
        if value is not None and value.strip().lower() not in ("no", "false", "0"):
            return _verdict(self.name, f"X-Autoreply: {value}", "auto_reply", mail)
        return None


class XAutorespond:
    """X-Autorespond / X-Autoresponder (cPanel, various CRMs)."""

    name = "x-autorespond"
    description = "X-Autorespond header"

    def check(self, mail: InboundMail, ctx: RuleContext) -> Verdict | None:
        for name in ("x-autorespond", "x-autoresponder", "x-autogenerated-reply"):
            value = header(mail, name)
            if value is not None and value.strip().lower() not in ("no", "false", "0"):
                return _verdict(self.name, f"{name}: {value}", "auto_reply", mail)
        return None


class PrecedenceHeader:
    """Precedence: bulk|junk|list (RFC 2076, RFC 3834 §3.1.8) or auto_reply."""

    name = "precedence"
    description = "Precedence bulk, junk, list or auto_reply"

    def check(self, mail: InboundMail, ctx: RuleContext) -> Verdict | None:
        for name in ("precedence", "x-precedence"):
            value = (header(mail, name) or "").strip().lower()
            if value in ("bulk", "junk", "list"):
                return _verdict(self.name, f"Precedence: {value}", "list", mail)
            if value in ("auto_reply", "auto-reply", "autoreply"):
                return _verdict(self.name, f"Precedence: {value}", "auto_reply", mail)
        return None


class ListHeaders:
    """RFC 2919 List-Id or RFC 2369 List-Unsubscribe: mailing-list traffic."""

    name = "list-headers"
    description = "List-Id or List-Unsubscribe present"

    def check(self, mail: InboundMail, ctx: RuleContext) -> Verdict | None:
        for name in ("list-id", "list-unsubscribe"):
            value = header(mail, name)
            if value is not None:
                return _verdict(self.name, f"{name}: {value[:80]}", "list", mail)
        return None


class NullReversePath:
    """RFC 5321 §4.5.5: a null reverse path is used only for notifications."""

    name = "null-reverse-path"
    description = "envelope sender is <>"

    def check(self, mail: InboundMail, ctx: RuleContext) -> Verdict | None:
        if ctx.envelope_from.strip() in ("", "<>"):
            return _bounce(self.name, "null reverse path <>", mail)
        return None


RULES: tuple[Rule, ...] = (
    OwnLoop(),
    OwnMessageId(),
    MultipartReport(),
    NonStandardBounce(),
    OutOfOffice(),
    ChallengeResponse(),
    AutoSubmitted(),
    XAutoreply(),
    XAutorespond(),
    PrecedenceHeader(),
    ListHeaders(),
    NullReversePath(),
)


def classify(
    mail: InboundMail, ctx: RuleContext, *, rules: tuple[Rule, ...] = RULES
) -> Verdict | None:
    """The first rule that says this mail is automatic, or None for a mail from a person."""
    for rule in rules:
        verdict = rule.check(mail, ctx)
        if verdict is not None:
            return verdict
    return None


_SUPPRESS_VALUES = frozenset({"all", "autoreply", "oof"})


def suppresses_auto_reply(mail: InboundMail, *, envelope_from: str | None = None) -> bool:
    """Whether we must not send an automatic answer (ack, refusal) to this mail.

    True for X-Auto-Response-Suppress All/AutoReply/OOF (MS-OXCMAIL §2.2.3.2.20), for
    Auto-Submitted other than "no" and Precedence bulk/junk/list (RFC 3834 §2), and for a
    null sender (envelope, else Return-Path: <>). X-Auto-Response-Suppress alone does not
    make a mail automatic; it only asks us not to answer it automatically.
    """
    suppress = header(mail, "x-auto-response-suppress") or ""
    tokens = {t.strip().lower() for t in re.split(r"[,\s]+", suppress) if t.strip()}
    if tokens & _SUPPRESS_VALUES:
        return True
    auto = header(mail, "auto-submitted")
    if auto is not None and auto.strip().lower().split("(")[0].strip() != "no":
        return True
    if (header(mail, "precedence") or "").strip().lower() in ("bulk", "junk", "list"):
        return True
    sender = envelope_from if envelope_from is not None else mail.return_path
    return sender is not None and sender.strip() in ("", "<>")
