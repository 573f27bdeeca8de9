"""Decide whether an inbound mail is automatic (bounce, auto-reply, list, loop): never a ticket.

Mailman style: each rule is a small class with a `name`, a `description` and `check()`;
`classify()` runs them in order and the first hit is the verdict recorded in quarantine
(SPEC §2.5). Order matters only for the `kind` reported: specific evidence (a DSN, an
out-of-office) is consulted before generic evidence (Precedence, a null reverse path).
"""

from __future__ import annotations

import email
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email import policy
from typing import Protocol

from flufl.bounce import all_failures

from gateway.mail.flufl_detectors import first_failures
from gateway.mail.parse import InboundMail, ParsedAttachment, header, headers_named


def nobody(address: str) -> bool:
    """The default `RuleContext.is_colleague`: no address is known to be an employee's."""
    return False


@dataclass(frozen=True)
class RuleContext:
    """What the rules know besides the mail itself."""

    envelope_from: str  # SMTP MAIL FROM (or Return-Path under IMAP); "" for the null path <>
    own_domains: frozenset[str]  # the gateway's mail domain(s): our Message-IDs, our X-Loop
    loop_token: str  # the X-Loop value we put on every mail we send
    # Whether a From address is one of our active employees (the intake runner asks its
    # directory); only `FluflBounce` asks, and by default nobody is.
    is_colleague: Callable[[str], bool] = nobody


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
# Subjects of non-delivery reports in other languages (issue 16): Exchange's localised NDRs
# (ja, zh-Hans, zh-Hant, ko, ru, de, fr, es, it, pt, nl) and providers' own wordings.
_NDR_SUBJECT_LOCALISED = re.compile(
    r"配信不能|配信できません|配信エラー|送信できませんでした|配送エラー|エラーメール|"
    r"无法投递|无法传递|无法送达|投递失败|系统退信|退信|未能送达|無法傳遞|無法投遞|退件|"
    r"배달되지\s*않음|전달\s*실패|배달\s*실패|"
    r"не\s+доставлено|недоставленное\s+сообщение|не\s+удалось\s+доставить|ошибка\s+доставки|"
    r"unzustellbar|nicht\s+zustellbar|zustellung\s+fehlgeschlagen|unzustellbare|"
    r"non\s+remis|échec\s+de\s+(?:la\s+)?(?:remise|distribution)|echec\s+de\s+la\s+distribution|"
    r"remise\s+impossible|non\s+distribuable|"
    r"no\s+se\s+puede\s+entregar|mensaje\s+no\s+entregado|no\s+entregado|error\s+de\s+entrega|"
    r"non\s+recapitabile|non\s+recapitato|mancato\s+recapito|"
    r"não\s+é\s+possível\s+entregar|não\s+entregue|falha\s+na\s+entrega|"
    r"onbestelbaar|niet\s+bezorgd|kan\s+niet\s+worden\s+bezorgd",
    re.IGNORECASE,
)
# What the body of a localised NDR states (the failure, in the same languages).
_NDR_BODY_LOCALISED = (
    r"配信に失敗しました|配信できませんでした|送信できませんでした|存在しません|"
    r"无法传递到|无法投递|退信|收件人不存在|無法傳遞到|"
    r"не\s+удалось\s+доставить|не\s+было\s+доставлено|не\s+доставлено|пользователь\s+не\s+найден|"
    r"nicht\s+übermittelt\s+werden|nicht\s+zugestellt\s+werden|empfänger\s+unbekannt|"
    r"n'a\s+pas\s+pu\s+être\s+remis|n'a\s+pas\s+abouti|n'a\s+pas\s+été\s+distribué|"
    r"non\s+répertorié|adresse\s+inconnue|"
    r"no\s+se\s+(?:pudo|ha\s+podido)\s+entregar|error\s+en\s+la\s+entrega|usuario\s+desconocido|"
    r"no\s+se\s+encuentra\s+en\s+el\s+directorio|"
    r"recapito\s+non\s+riuscito|non\s+è\s+stato\s+possibile\s+recapitare|"
    r"falha\s+na\s+entrega|não\s+foi\s+possível\s+entregar|"
    r"bezorging\s+is\s+mislukt|kon\s+niet\s+worden\s+bezorgd"
)
# Subjects people give their replies and forwards: a mail that starts so is a person's,
# even when it quotes or forwards a bounce (issue 16: a human mail quoting one is a ticket).
_PERSON_PREFIX = re.compile(
    r"^\s*(?:re|fw|fwd|aw|wg|tr|rv|sv|vs|antw|enc|res|odp|pd|vl|ynt|ilt|"
    r"回复|回覆|答复|转发|轉寄|転送|返信|ответ|пересл|отв)\s*(?:\[\d+\]|\(\d+\))?\s*[:：]",
    re.IGNORECASE,
)
# A forward: the person passes someone else's mail on (a challenge they got, say).
_PERSON_PREFIX_FWD = re.compile(
    r"^\s*(?:fw|fwd|wg|tr|rv|enc|pd|vl|转发|轉寄|転送|пересл)\s*[:：]", re.IGNORECASE
)
# Exchange sends its NDRs and system messages from this mailbox (the GUID is fixed).
_EXCHANGE_SYSTEM_SENDER = re.compile(r"^microsoftexchange[0-9a-f]{32}$", re.IGNORECASE)
# Phrases MTAs put in the body of a plain-text bounce.
_NDR_BODY = re.compile(
    r"could not be delivered|delivery to the following recipient|failed recipients|"
    r"unable to deliver|undeliverable|permanent (?:fatal )?(?:delivery )?error|"
    r"message (?:was )?not delivered|user unknown|no such user|mailbox unavailable|"
    r"returned mail|delivery has failed|did not reach (?:some or all of )?the|"
    r"(?:cannot|could not) be reached|unknown user|addressee unknown|not listed in|"
    r"recipient name is not recognized|user not found|undeliverable to the following|"
    r"wasn't able to deliver|no mailbox here|recipient address rejected|"
    r"was not delivered to|" + _NDR_BODY_LOCALISED,
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
    if not failed and not delayed:
        failed.extend(_addresses_in_statement(mail))
    # Detectors that scan text can mistake the original's Message-ID for an address.
    ids = {i.lower() for i in original_message_ids(mail)}
    recipients = tuple(a for a in dict.fromkeys(failed or delayed) if a not in ids)
    return recipients, not failed and bool(delayed or _looks_like_delay(mail))


def _addresses_in_statement(mail: InboundMail) -> list[str]:
    """Addresses a non-DSN report names above the copy of the original (Domino, IMail,
    GroupWise, localised provider bounces), other than the report's own From/To."""
    text = mail.text[:20_000]
    cut = _ORIGINAL_FOLLOWS.search(text)
    statement = text[: cut.start()] if cut else text
    own = {a.email.lower() for a in (mail.from_addr, *mail.to) if a is not None}
    found = (a.lower() for a in re.findall(_ADDRESS, statement))
    return [a for a in dict.fromkeys(found) if a not in own][:20]


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
        if _NDR_SUBJECT.search(mail.subject) and not _person_written(mail):
            evidence = _ndr_evidence(mail, ctx)
            if evidence:
                reason = f"non-delivery subject: {mail.subject[:80]}; {evidence}"
                return _bounce(self.name, reason, mail)
        return None


def _person_written(mail: InboundMail) -> bool:
    """Whether the subject shows a person's reply or forward, so that the subject and body
    rules must not judge it a bounce (issue 16: a person quoting or forwarding one).

    A forward ("Fwd:", "WG:" …) always counts. A reply prefix ("Re:", "AW:" …) does not when
    the failure is stated in the mail's *own* text with an address — MTAs that answer with
    "RE: <subject> : non remis (delivery failed)" (flufl.bounce simple_20) — because a
    person's reply carries a bounce only below "On … wrote:" or after ">"."""
    if not _PERSON_PREFIX.match(mail.subject):
        return False
    if _PERSON_PREFIX_FWD.match(mail.subject):
        return True
    own = mail.new_text[:20_000]
    return not (_NDR_BODY.search(own) and re.search(_ADDRESS, own))


def _ndr_evidence(mail: InboundMail, ctx: RuleContext) -> str | None:
    """What, besides the subject, shows a report is an MTA's: a null path, the original
    attached, or a failure statement in the body."""
    if not ctx.envelope_from:
        return "null reverse path"
    if _has_part(mail, _ORIGINAL_PART_TYPES):
        return "original message attached"
    match = _NDR_BODY.search(_text_sample(mail))
    return f"body: {match.group(0)!r}" if match else None


class ExchangeSystemSender:
    """Exchange's NDRs come from MicrosoftExchange<GUID>@domain, whatever their language."""

    name = "exchange-system-sender"
    description = "sent by Exchange's MicrosoftExchange<GUID> system mailbox"

    def check(self, mail: InboundMail, ctx: RuleContext) -> Verdict | None:
        local, _ = _from_localpart_and_name(mail)
        if _EXCHANGE_SYSTEM_SENDER.match(local) and not _person_written(mail):
            return _bounce(self.name, f"sent by Exchange: {header(mail, 'from')}", mail)
        return None


class LocalisedNdrSubject:
    """Non-delivery subjects in Japanese, Chinese, Korean, Russian, German, French, Spanish,
    Italian, Portuguese and Dutch, with the same evidence an English one needs."""

    name = "localised-ndr-subject"
    description = "non-delivery report with a non-English subject"

    def check(self, mail: InboundMail, ctx: RuleContext) -> Verdict | None:
        if _person_written(mail):
            return None
        match = _NDR_SUBJECT_LOCALISED.search(mail.subject)
        if not match:
            return None
        evidence = _ndr_evidence(mail, ctx)
        if evidence is None:
            return None
        reason = f"non-delivery subject {match.group(0)!r}: {mail.subject[:80]}; {evidence}"
        return _bounce(self.name, reason, mail)


# A failure statement that names the failed mailbox, as MTAs without DSNs write it.
_ADDRESS = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
# The original (or its headers) quoted below the statement, as such MTAs append it.
_ORIGINAL_FOLLOWS = re.compile(
    r"original message follows|below this line is a copy of the message|"
    r"this is a copy of the message|transcript of session follows|"
    r"^\s*-+\s*original message\s*-+\s*$|^message-id:\s*<",
    re.IGNORECASE | re.MULTILINE,
)


class NdrBodyStatement:
    """An MTA without DSN structure, from a sender that is not MAILER-DAEMON (Lotus Domino,
    IMail, GroupWise, Exchange variants): the body states the failure for an address and
    carries the original, or the subject is a delivery report."""

    name = "ndr-body-statement"
    description = "body states a delivery failure for an address (non-DSN MTA)"

    def check(self, mail: InboundMail, ctx: RuleContext) -> Verdict | None:
        if _person_written(mail):
            return None
        # The sender's own words only: a person quoting a bounce under "On … wrote:" or
        # with ">" is not one.
        text = mail.new_text[:20_000]
        match = _NDR_BODY.search(text)
        if not match or not re.search(_ADDRESS, text):
            return None
        if not (
            _ORIGINAL_FOLLOWS.search(mail.text[:50_000]) or _has_part(mail, _ORIGINAL_PART_TYPES)
        ):
            return None
        return _bounce(self.name, f"body: {match.group(0)!r} with the original below", mail)


# Bounces state the failure near the top; the text-scanning detectors (SimpleMatch) cost
# about 1 ms per kB, so only the first 64 KiB are scanned (benchmarks/BENCHMARKS.md).
_FLUFL_SCAN_LIMIT = 64 * 1024


def _hide_what_states_no_failure(msg: email.message.Message) -> None:
    """Empty the parts of a mail where no bounce states its failure, before the detectors
    walk it: attached messages (message/rfc822) and base64-encoded non-text parts.

    A bounce states its failure in its own parts; what it attaches is our original. A person
    who forwards a bounce as an attachment must not be judged by the bounce inside (issue 16:
    a human mail that quotes a bounce is still a ticket) — flufl's DSN detector walks into
    attached messages and would find its delivery-status part.

    A base64 body (a PDF, an image) holds no "@" and no space, so no detector's address or
    phrase matches one of its lines; yet the text scanners (SimpleMatch runs the whole body
    once per pattern set, about 40 of them) spent four fifths of their time on such lines
    (issue 11 profile: a 20 KB PDF is 360 lines)."""
    for part in msg.walk():
        if part.get_content_type() in _ORIGINAL_PART_TYPES and part.is_multipart():
            part.set_payload([email.message.Message()])
        elif (
            not part.is_multipart()
            and part.get_content_maintype() not in ("text", "message")
            and str(part.get("content-transfer-encoding", "")).strip().lower() == "base64"
        ):
            part.set_payload("")


class FluflBounce:
    """Mailman's bounce detectors (flufl.bounce) as a detector in their own right: any of
    them that finds a failed address makes the mail a bounce.

    Not for a mail from one of our active employees: an MTA's report comes from a daemon, a
    system account or a foreign server, never from a colleague's own address, while a
    colleague who pastes a failure report into a mail to the helpdesk wants a ticket. The
    rules above still judge such a mail (a DSN, an NDR subject, a failure statement with
    the original below); Mailman runs these detectors only on mail already known to be a
    bounce, and on ordinary mail they were a tenth of the intake runner's time (issue 11)."""

    name = "flufl-bounce"
    description = "flufl.bounce recognises a bounce format"

    def check(self, mail: InboundMail, ctx: RuleContext) -> Verdict | None:
        if _person_written(mail):
            return None
        if mail.from_addr is not None and ctx.is_colleague(mail.from_addr.email):
            return None
        try:
            msg = email.message_from_bytes(mail.raw[:_FLUFL_SCAN_LIMIT], policy=policy.compat32)
            _hide_what_states_no_failure(msg)
        except Exception:  # noqa: BLE001 - an unreadable mail just is not recognised here
            return None
        # flufl's LLNL heuristic matches ordinary replies: it is left out (flufl_detectors).
        first = first_failures(msg)
        found = _decode_addresses(first[1]) if first is not None else []
        if first is None or not found:
            return None
        reason = f"flufl.bounce {first[0]} found {', '.join(found[:3])}"
        return _bounce(self.name, reason, mail)


# Outlook/Exchange, Gmail, Apple and other clients prefix the subject of an out-of-office
# answer with these words; they are never typed by a person in front of a subject.
_OOO_PREFIX = re.compile(
    r"^\s*(?:automatic reply|automatische antwort|abwesenheitsnotiz|réponse automatique|"
    r"respuesta automática|risposta automatica|automatisch antwoord|autosvar|"
    r"automaattinen vastaus|odpowiedź automatyczna|автоматический ответ|"
    r"resposta automática|out of (?:the )?office(?: reply| autoreply)?|ooo|"
    # issue 16: Outlook's prefix in more languages, and webmails' own
    r"自動応答|自动回复|自動回覆|自动答复|자동\s*회신|자동\s*응답|automatická\s+odpověď|"
    r"automatická\s+odpoveď|otomatik\s+(?:yanıt|cevap)|automatisk\s+svar|"
    r"αυτόματη\s+απάντηση|automatikus\s+válasz|автоответ|автоматична\s+відповідь|"
    r"răspuns\s+automat|automatski\s+odgovor|samodejni\s+odgovor|automātiskā\s+atbilde|"
    r"automaatne\s+vastus|automatinis\s+atsakymas|auto[\s-]?reply|auto[\s-]?response|"
    r"autoresponse|abwesend|fuera\s+de\s+(?:la\s+)?oficina|absence\s+du\s+bureau|"
    r"hors\s+du\s+bureau|fuori\s+ufficio|תשובה\s+אוטומטית|رد\s+تلقائي|ตอบกลับอัตโนมัติ|"
    r"trả\s+lời\s+tự\s+động|balasan\s+otomatis|resposta\s+automàtica|автоматичен\s+отговор|"
    r"аутоматски\s+одговор|automatické\s+odpovede|automatyczna\s+odpowiedź)\s*[:：]",
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


# Lotus Notes: "AUTO: Jane Doe is out of the office (returning 09.11.2026)", in the
# language of the absent person's client.
_LOTUS_AUTO = re.compile(
    r"^\s*AUTO\s*:\s*.*(?:out of (?:the )?office|außer haus|ausser haus|abwesend|nicht im büro|"
    r"absent|fuera de la oficina|ausente|fuori ufficio|assente|afwezig|frånvarande|"
    r"fraværende|poissa|nieobecn|nepřítomn|отсутств|不在)",
    re.IGNORECASE,
)


class LotusNotesAuto:
    """Lotus Notes / Domino out-of-office agent ("AUTO: … is out of the office")."""

    name = "lotus-notes-auto"
    description = "Lotus Notes out-of-office subject (AUTO: … out of the office)"

    def check(self, mail: InboundMail, ctx: RuleContext) -> Verdict | None:
        # Notes writes "AUTO" in capitals; "auto: parking permit" is a person's subject.
        if mail.subject.lstrip().startswith("AUTO") and _LOTUS_AUTO.match(mail.subject):
            return _verdict(self.name, f"subject: {mail.subject[:80]}", "out_of_office", mail)
        return None


_CHALLENGE_HEADERS = ("x-boxtrapper", "x-ask-info", "x-challenge", "x-spamarrest-noauth",
                      "x-tmda-confirm", "x-cr-hashedpuzzle", "x-cr-puzzleid",
                      "x-choicemail-registration-request")  # fmt: skip
# Challenge-response services (issue 16): their mail comes from, or links to, these domains.
_CHALLENGE_DOMAINS = re.compile(
    r"(?:^|[.@/])(?:boxbe\.com|spamarrest\.com|bluebottle\.com|mailinblack\.com|"
    r"digiportal\.com|choicemail\.com|sendio\.com|knowspam\.net|qurb\.com|"
    r"sanebox\.com/verify|vanquish\.com)\b",
    re.IGNORECASE,
)
# What a challenge asks of the sender, in the words these services use.
_CHALLENGE_BODY = re.compile(
    r"approved senders|guest list|white-?list|verify (?:that )?you are (?:a )?human|"
    r"human sender|not a (?:robot|spammer)|n'êtes pas un robot|kein roboter|"
    r"to control spam|spam protection|sender verification|confirm the sent message|"
    r"registration request|courtesy notices?|challenge|"
    r"en attente de validation|est en attente|verify your (?:e-?mail|message|address)|"
    r"confirm your (?:e-?mail|message|address)|"
    r"your (?:e-?mail|message) (?:is|has been|was) (?:held|on hold|quarantined|pending)|"
    r"awaiting (?:your )?(?:verification|confirmation)",
    re.IGNORECASE,
)
_URL = re.compile(r"https?://\S+", re.IGNORECASE)
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
        for name, _ in mail.headers:
            if name.lower().startswith("x-challenge"):
                return _verdict(self.name, f"{name} present", "auto_reply", mail)
        if _CHALLENGE_SUBJECT.search(mail.subject) and _automatic_signal(mail, ctx):
            return _verdict(self.name, f"subject: {mail.subject[:80]}", "auto_reply", mail)
        return None


class ChallengeResponseService:
    """A known challenge-response service (Boxbe, Spam Arrest, Bluebottle, Mailinblack,
    ChoiceMail, Sendio …) sent it: its domain in From, Reply-To, Sender or Message-ID, or
    a link to it beside the service's request."""

    name = "challenge-response-service"
    description = "mail from or linking to a challenge-response service"

    def check(self, mail: InboundMail, ctx: RuleContext) -> Verdict | None:
        for name in ("from", "reply-to", "sender", "message-id"):
            value = header(mail, name) or ""
            match = _CHALLENGE_DOMAINS.search(value)
            if match:
                reason = f"{name} names {match.group(0).lstrip('.@/')}"
                return _verdict(self.name, reason, "auto_reply", mail)
        text = mail.new_text[:20_000]
        link = next((u for u in _URL.findall(text) if _CHALLENGE_DOMAINS.search(u)), None)
        if link and _CHALLENGE_BODY.search(text) and not _PERSON_PREFIX_FWD.match(mail.subject):
            return _verdict(self.name, f"links to {link[:80]}", "auto_reply", mail)
        return None


# Challenge wording in a subject (other than the service names above).
_CHALLENGE_REQUEST_SUBJECT = re.compile(
    r"verif(?:y|ication)|confirm|registration request|approval|validation|"
    r"bestätig|vérifi|verific",
    re.IGNORECASE,
)


class ChallengeRequest:
    """An unknown challenge-response system: a verification subject, and a body that asks
    the sender to prove they are human (or to join an approved list) by following a link."""

    name = "challenge-request"
    description = "verification request from a challenge-response filter"

    def check(self, mail: InboundMail, ctx: RuleContext) -> Verdict | None:
        if not _CHALLENGE_REQUEST_SUBJECT.search(mail.subject):
            return None
        text = mail.new_text[:20_000]
        match = _CHALLENGE_BODY.search(text)
        if match and _URL.search(text) and not _PERSON_PREFIX_FWD.match(mail.subject):
            reason = f"subject: {mail.subject[:60]}; body: {match.group(0)!r} and a link"
            return _verdict(self.name, reason, "auto_reply", mail)
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
    ExchangeSystemSender(),
    LocalisedNdrSubject(),
    NdrBodyStatement(),
    FluflBounce(),
    OutOfOffice(),
    LotusNotesAuto(),
    ChallengeResponse(),
    ChallengeResponseService(),
    ChallengeRequest(),
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
