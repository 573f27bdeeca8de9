"""A parsed mail and its envelope → the `ReceiveMail` command for the service (no ticket logic here)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.domain.lifecycle import Channel
from gateway.mail.auth_results import dmarc_verdict
from gateway.mail.commands import split_commands
from gateway.mail.feedback_answer import parse_feedback
from gateway.mail.parse import InboundMail, ParseLimits, parse_mail
from gateway.mail.rules import RuleContext, classify, nobody, suppresses_auto_reply
from gateway.service.commands import (
    AttachmentData,
    CommandSpec,
    DroppedFile,
    FeedbackAnswer,
    Quarantine,
    ReceiveMail,
)


@dataclass(frozen=True)
class TranslateContext:
    own_domains: frozenset[str]
    loop_token: str
    trusted_authserv_ids: tuple[str, ...] = ()
    channel: Channel = Channel.EMAIL
    # Whether an address is one of our active employees: the intake runner's directory
    # (`MailIntake.is_colleague`); the edge knows nobody (rules.RuleContext).
    is_colleague: Callable[[str], bool] = nobody


def dedupe_key(sender: str, message_id: str | None, raw_sha256: str) -> str:
    """Sender + Message-ID identifies a re-delivery; without a Message-ID the raw bytes do."""
    if message_id:
        return "mid:" + hashlib.sha256(f"{sender.lower()}\n{message_id}".encode()).hexdigest()
    return "raw:" + raw_sha256


def device_details(mail: InboundMail, trusted: Sequence[str]) -> dict[str, str]:
    """User-Agent / X-Mailer, and the client IP of the first Received hop (SPEC §1.3)."""
    out: dict[str, str] = {}
    if mail.user_agent:
        out["user_agent"] = mail.user_agent[:300]
    # The bottom-most Received header is the one our organisation's MTA added when the
    # client submitted; it names the client's address in brackets.
    for rec in reversed(mail.received):
        ip = re.search(r"\[(?:IPv6:)?([0-9a-fA-F:.]+)\]", rec)
        if ip:
            out["client_ip"] = ip.group(1)
            break
    return out


def translate(
    mail: InboundMail,
    *,
    envelope_from: str,
    envelope_rcpts: Sequence[str],
    ctx: TranslateContext,
) -> ReceiveMail:
    verdict = classify(
        mail,
        RuleContext(
            envelope_from=envelope_from,
            own_domains=ctx.own_domains,
            loop_token=ctx.loop_token,
            is_colleague=ctx.is_colleague,
        ),
    )
    quarantine = None
    if verdict is not None:
        quarantine = Quarantine(
            rule=verdict.rule,
            reason=verdict.reason.removeprefix("quarantined: "),
            kind=verdict.kind,
            bounced_recipients=tuple(verdict.bounced_recipients),
            original_message_ids=tuple(verdict.original_message_ids),
            temporary=verdict.temporary,
        )
    commands, rest = split_commands(mail.new_text)
    from_email = mail.from_addr.email if mail.from_addr is not None else None
    sender = from_email or envelope_from or ""
    return ReceiveMail(
        channel=ctx.channel,
        envelope_from=envelope_from.lower(),
        envelope_rcpts=tuple(r.lower() for r in envelope_rcpts),
        dedupe_key=dedupe_key(sender, mail.message_id, mail.raw_sha256),
        message_id=mail.message_id,
        raw=mail.raw,
        raw_sha256=mail.raw_sha256,
        from_email=from_email,
        to=tuple(a.email for a in mail.to),
        cc=tuple(a.email for a in mail.cc),
        subject=mail.subject,
        text=rest,
        html=mail.html,
        attachments=tuple(
            AttachmentData(a.filename, a.content_type, a.data, a.sha256, a.inline)
            for a in mail.attachments
        ),
        in_reply_to=mail.in_reply_to,
        references=mail.references,
        commands=tuple(CommandSpec(c.action, c.args, c.remark, c.raw) for c in commands),
        quarantine=quarantine,
        dmarc=dmarc_verdict(mail.auth_results, ctx.trusted_authserv_ids),
        suppress_auto_reply=suppresses_auto_reply(mail),
        device=device_details(mail, ctx.trusted_authserv_ids),
        defects=mail.defects,
        dropped_attachments=tuple(
            DroppedFile(d.filename, d.size, d.limit, d.per_file) for d in mail.dropped_attachments
        ),
        feedback=_feedback(mail, envelope_rcpts),
    )


def _feedback(mail: InboundMail, rcpts: Sequence[str]) -> FeedbackAnswer | None:
    """The mail read as a feedback answer, when it is sent to a reply address (only those
    can be feedback addresses; which purpose the token has, the service checks)."""
    addresses = [*rcpts, *(a.email for a in mail.to), *(a.email for a in mail.cc)]
    if not any("+" in a.split("@", 1)[0] for a in addresses):
        return None
    parsed = parse_feedback(mail.text, new_text=mail.new_text)
    return FeedbackAnswer(parsed.rating, parsed.comment)


def parse_and_translate(
    raw: bytes, sender: str, rcpts: Sequence[str], limits: ParseLimits, ctx: TranslateContext
) -> ReceiveMail:
    """Raw bytes and envelope → the service's command; what every mail channel does first.
    Pure (no I/O): it runs in a parser process or in the caller's thread."""
    mail = parse_mail(raw, limits=limits)
    return translate(mail, envelope_from=sender, envelope_rcpts=list(rcpts), ctx=ctx)
