"""The only place that builds concrete objects: engine, sessions, tokens, the service."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from gateway.config import ConfigError, Settings
from gateway.domain.tokens import ReplyTokens
from gateway.service.clock import Clock, SystemClock
from gateway.service.inbound import InboundQueue
from gateway.service.intake import IntakeOptions, MailIntake
from gateway.service.notify import MailIdentity
from gateway.service.tickets import ServiceOptions, TicketService
from store import models as m
from store.db import make_engine, session_factory


@dataclass
class App:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    service: TicketService
    tokens: ReplyTokens | None
    identity: MailIdentity

    def close(self) -> None:
        self.engine.dispose()


def mail_domain(settings: Settings, sessions: sessionmaker[Session]) -> str:
    """`mail.domain`, or the first organization's first domain (SPEC §6)."""
    if settings.mail.domain:
        return settings.mail.domain.lower()
    with sessions() as s:
        try:
            org = s.scalars(select(m.Organization).order_by(m.Organization.id)).first()
        except Exception:  # noqa: BLE001 - before `init` there is no schema: fall back below
            org = None
        if org is not None and org.domains:
            return str(org.domains[0]).lower()
    return "localhost"


def build(settings: Settings, *, clock: Clock | None = None, need_secret: bool = False) -> App:
    engine = make_engine(settings.database.url, echo=settings.database.echo)
    sessions = session_factory(engine)
    domain = mail_domain(settings, sessions)
    tokens: ReplyTokens | None = None
    if settings.mail.secret:
        tokens = ReplyTokens(
            settings.mail.secret,
            settings.mail.previous_secrets,
            lifetime_days=settings.mail.token_days,
        )
    elif need_secret:
        raise ConfigError(
            "mail.secret is required (set it in the file or TICKETGATE__MAIL__SECRET)"
        )
    identity = MailIdentity(
        domain=domain,
        from_address=f"{settings.mail.from_local}@{domain}",
        from_name=settings.mail.from_name,
        reply_local=settings.mail.reply_local,
        loop_token=domain,
    )
    service = TicketService(
        sessions,
        clock=clock or SystemClock(),
        identity=identity,
        tokens=tokens,
        options=ServiceOptions(
            reopen_window=timedelta(days=settings.mail.reopen_window_days),
            auto_mail_per_day=settings.mail.auto_mail_per_day,
            auto_mail_per_ticket_hour=settings.mail.auto_mail_per_ticket_hour,
            default_department=settings.mail.default_department,
        ),
    )
    return App(settings, engine, sessions, service, tokens, identity)


def make_intake(app: App) -> MailIntake:
    """The service side of the intake runner."""
    i = app.settings.intake
    return MailIntake(
        app.service,
        IntakeOptions(
            sender_rate_per_hour=app.settings.smtp.sender_rate_per_hour,
            sender_burst_per_minute=app.settings.smtp.sender_burst_per_minute,
            refuse_dmarc_fail=app.settings.mail.refuse_dmarc_fail,
            reference_wait=timedelta(seconds=i.reference_wait_seconds),
            max_attempts=i.max_attempts,
        ),
        on_storage_error=app.engine.dispose,
    )


def make_inbound(app: App) -> InboundQueue:
    """The service side of the edges (SMTP, IMAP): checks and the durable queue."""
    return InboundQueue(app.service, on_storage_error=app.engine.dispose)
