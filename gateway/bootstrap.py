"""The only place that builds concrete objects: engine, sessions, tokens, the service, and the
edge, runner and delivery worker over them."""

from __future__ import annotations

import multiprocessing
import ssl
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from gateway.config import ConfigError, Settings
from gateway.domain.tokens import ReplyTokens
from gateway.service.clock import Clock, SystemClock
from gateway.service.imap import ImapIntake
from gateway.service.inbound import InboundQueue
from gateway.service.intake import IntakeOptions, MailIntake
from gateway.service.notify import MailIdentity
from gateway.service.outbox import ChannelFanOut, ChannelSender, OutboxService
from gateway.service.scheduler import Scheduler
from gateway.service.sla import ScheduleOptions, SlaClocks
from gateway.service.slack import SlackService
from gateway.service.slack_notify import SlackFanOut
from gateway.service.tickets import ServiceOptions, TicketService
from gateway.shared_counters import SharedCounters
from gateway.slack.metrics import SlackCounters  # counters only: no Slack library
from store.db import make_engine, session_factory
from store.org_queries import first_organization

# The adapters (the SMTP edge and aiosmtpd, IMAP, Slack, APScheduler, the MIME parser, the
# templates) are imported by the function that builds them, the service here: a CLI command
# such as `mail explain` builds only the service, and importing every adapter would add about
# half a second to each command and to each child process of `run` that needs few of them.
if TYPE_CHECKING:
    from gateway.mail.delivery import Transport
    from gateway.mail.delivery_worker import DeliveryWorker
    from gateway.mail.imap_client import MailboxConfig
    from gateway.mail.parse import ParseLimits
    from gateway.mail.smtp_server import EdgeHandler, SmtpEdgeServer
    from gateway.mail.translate import TranslateContext
    from gateway.runners.imap import MailboxWatcher
    from gateway.runners.intake import IntakeRunner
    from gateway.scheduler.ticker import Ticker
    from gateway.slack.app import SlackAdapter
    from gateway.slack.http import SlackHttpServer, SlackSocketMode
    from gateway.slack.poster import SlackPoster


@dataclass(frozen=True)
class Doorbells:
    """How the parts of `run` wake each other across its processes. ``queued`` is rung after
    an edge (SMTP, IMAP) committed queued mail, and idle intake runners wait on it; ``outbox``
    after a transaction recorded notification events, and idle delivery workers wait on it.
    They are multiprocessing Events, so they reach runners and workers in child processes. A
    ring that is missed (another runner cleared it first) costs one poll interval, no mail:
    the queue and the outbox stay the hand-off."""

    queued: ProcessEvent
    outbox: ProcessEvent


def make_doorbells() -> Doorbells:
    """Doorbells that can be handed to spawned child processes."""
    mp = multiprocessing.get_context("spawn")
    return Doorbells(queued=mp.Event(), outbox=mp.Event())


@dataclass
class App:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    service: TicketService
    tokens: ReplyTokens | None
    identity: MailIdentity
    doorbells: Doorbells | None = None

    def close(self) -> None:
        self.engine.dispose()


def mail_domain(settings: Settings, sessions: sessionmaker[Session]) -> str:
    """`mail.domain`, or the first organization's first domain (SPEC §6)."""
    if settings.mail.domain:
        return settings.mail.domain.lower()
    with sessions() as s:
        try:
            org = first_organization(s)
        except Exception:  # noqa: BLE001 - before `init` there is no schema: fall back below
            org = None
        if org is not None and org.domains:
            return str(org.domains[0]).lower()
    return "localhost"


def build(
    settings: Settings,
    *,
    clock: Clock | None = None,
    need_secret: bool = False,
    doorbells: Doorbells | None = None,
) -> App:
    """The engine, sessions, tokens and service of ``settings``; with ``doorbells`` (`run`),
    a transaction that recorded notification events rings ``doorbells.outbox``."""
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
        sla=SlaClocks(schedule_options(settings)),
        on_outbox=doorbells.outbox.set if doorbells is not None else lambda: None,
    )
    return App(settings, engine, sessions, service, tokens, identity, doorbells)


def schedule_options(settings: Settings) -> ScheduleOptions:
    sc = settings.scheduler
    return ScheduleOptions(
        confirm_window=timedelta(hours=sc.confirm_window_hours),
        reminder_after=timedelta(hours=sc.reminder_hours),
        reminder_max=sc.reminder_max,
        feedback_delay=timedelta(hours=sc.feedback_delay_hours),
        feedback_reminder_after=timedelta(hours=sc.feedback_reminder_hours),
        batch=sc.batch_size,
    )


def make_scheduler(app: App) -> Scheduler:
    """The scheduler's service side: `tick` runs what is due at an instant."""
    return Scheduler(app.service, on_storage_error=app.engine.dispose)


def make_ticker(app: App) -> Ticker:
    """APScheduler calling `make_scheduler(app).tick()` every `scheduler.tick_seconds`."""
    from gateway.scheduler.ticker import Ticker

    return Ticker(make_scheduler(app), tick_seconds=app.settings.scheduler.tick_seconds)


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


def make_transport(settings: Settings) -> Transport:
    from gateway.mail.delivery import MaildirTransport, SmtpRelayTransport

    o = settings.outbound
    if o.transport == "maildir":
        return MaildirTransport(Path(o.maildir))
    if o.transport == "smtp":
        return SmtpRelayTransport(
            host=o.relay_host,
            port=o.relay_port,
            starttls=o.starttls,
            username=o.username or None,
            password=o.password or None,
            max_per_connection=o.relay_max_per_connection,
            sessions=o.relay_sessions,
        )
    raise ValueError(f"outbound.transport: unknown transport {o.transport!r} (smtp or maildir)")


def translate_context(app: App) -> TranslateContext:
    from gateway.mail.translate import TranslateContext

    return TranslateContext(
        own_domains=frozenset({app.identity.domain}),
        loop_token=app.identity.loop_token,
        trusted_authserv_ids=app.settings.mail.trusted_authserv_ids,
    )


def parse_limits(settings: Settings) -> ParseLimits:
    from gateway.mail.parse import ParseLimits

    s = settings.smtp
    return ParseLimits(
        max_parts=s.max_parts,
        max_depth=s.max_depth,
        max_attachment_bytes=s.max_attachment_bytes,
        max_total_attachment_bytes=s.max_total_attachment_bytes,
    )


def make_runner(
    app: App, queue_slice: tuple[int, int] = (0, 1), counts: SharedCounters | None = None
) -> IntakeRunner:
    """The intake runner over `app`'s inbound queue, or over the slice (i, n) of it that is
    runner i's of n; woken by `app.doorbells.queued` when there are doorbells; counting what
    leaves the queue in ``counts`` (`run`'s, shared by its runners) or counts of its own."""
    from gateway.runners.intake import IntakeRunner

    i = app.settings.intake
    intake = make_intake(app)
    return IntakeRunner(
        intake,
        ctx=replace(translate_context(app), is_colleague=intake.is_colleague),
        limits=parse_limits(app.settings),
        batch_size=i.batch_size,
        poll_seconds=i.poll_seconds,
        queue_slice=queue_slice,
        wake_on=app.doorbells.queued if app.doorbells is not None else None,
        counts=counts,
    )


def make_edge(app: App, *, on_queued: Callable[[], None] = lambda: None) -> EdgeHandler:
    """The SMTP edge's handler; `on_queued` runs after each commit of queued mail (it wakes
    the intake runner)."""
    from gateway.mail.smtp_server import EdgeHandler, EdgePolicy, QueueWriter

    inbound = make_inbound(app)
    return EdgeHandler(
        inbound,
        QueueWriter(inbound.enqueue, on_committed=on_queued),
        ctx=translate_context(app),
        limits=parse_limits(app.settings),
        policy=EdgePolicy(
            refuse_dmarc_fail=app.settings.mail.refuse_dmarc_fail,
            max_recipients=app.settings.smtp.max_recipients,
        ),
    )


def smtp_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The SMTP edge's STARTTLS context from `smtp.tls_cert_file` / `tls_key_file`, or None
    when no certificate is set; a certificate that does not load is a ConfigError."""
    s = settings.smtp
    if not s.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(s.tls_cert_file, s.tls_key_file or None)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(
            f"[smtp] tls_cert_file: cannot load {s.tls_cert_file}"
            f"{' with ' + s.tls_key_file if s.tls_key_file else ''}: {e}"
        ) from e
    return context


def make_smtp_server(
    app: App,
    *,
    on_queued: Callable[[], None] = lambda: None,
    port: int | None = None,
    handler: EdgeHandler | None = None,
) -> SmtpEdgeServer:
    """The SMTP edge's server on `smtp.host`:`smtp.port` (or ``port``) with the settings'
    limits and STARTTLS; its handler `make_edge`'s, or ``handler`` (a test's)."""
    from gateway.mail.smtp_server import SmtpEdgeServer

    s = app.settings.smtp
    return SmtpEdgeServer(
        handler or make_edge(app, on_queued=on_queued),
        host=s.host,
        port=s.port if port is None else port,
        max_message_bytes=s.max_message_bytes,
        hostname=s.hostname or app.identity.domain,
        max_sessions=s.max_sessions,
        tls_context=smtp_tls_context(app.settings),
        require_starttls=s.require_starttls,
    )


def delivery_processes(settings: Settings) -> bool:
    """Whether `run` starts its delivery workers as child processes: when asked to
    (`outbound.processes`), and always for more than one worker on PostgreSQL."""
    o = settings.outbound
    postgres = settings.database.url.startswith("postgresql")
    return o.processes or (o.workers > 1 and postgres)


def make_worker(app: App, senders: Mapping[str, ChannelSender] | None = None) -> DeliveryWorker:
    """The delivery worker: mail, and the rows of other channels ``senders`` deliver (Slack).
    With `slack.enabled`, events also fan out to Slack rows. Woken by `app.doorbells.outbox`
    when there are doorbells."""
    from gateway.mail.delivery_worker import DeliveryWorker, EmailSender
    from gateway.mail.outbound import Renderer, templates_dir

    o = app.settings.outbound
    fan_outs: list[ChannelFanOut] = [SlackFanOut()] if app.settings.slack.enabled else []
    outbox = OutboxService(
        app.sessions,
        clock=app.service.clock,
        identity=app.identity,
        tokens=app.tokens,
        auto_mail_per_day=app.service.options.auto_mail_per_day,
        auto_mail_per_ticket_hour=app.service.options.auto_mail_per_ticket_hour,
        notices_per_sender_hour=app.settings.mail.notices_per_sender_hour,
        max_attempts=o.max_attempts,
        backoff_seconds=o.backoff_seconds,
        backoff_max_seconds=o.backoff_max_seconds,
        lease=timedelta(seconds=o.lease_seconds),
        on_storage_error=app.engine.dispose,
        channel_fan_outs=fan_outs,
    )
    email = EmailSender(
        make_transport(app.settings), Renderer(templates_dir()), outbox.envelope_sender
    )
    return DeliveryWorker(
        outbox,
        {email.channel: email, **(senders or {})},
        poll_seconds=o.poll_seconds,
        batch=o.batch_size,
        wake_on=app.doorbells.outbox if app.doorbells is not None else None,
    )


@dataclass
class SlackRuntime:
    """The Slack adapter of `run`: its listeners, its way in (HTTP server or Socket Mode),
    the outbox sender for its posts and its counters."""

    adapter: SlackAdapter
    entry: SlackHttpServer | SlackSocketMode
    poster: SlackPoster
    counters: SlackCounters

    def start(self) -> None:
        self.entry.start()

    def stop(self) -> None:
        self.entry.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    @property
    def executor(self) -> ThreadPoolExecutor:
        ex = self.adapter.app.listener_runner.listener_executor
        assert isinstance(ex, ThreadPoolExecutor)
        return ex


def make_slack(
    app: App, *, port: int | None = None, posts: SharedCounters | None = None
) -> SlackRuntime:
    """The Slack adapter over ``app``'s service, its Web API client at `slack.api_url`;
    its outbox posts counted in ``posts`` (`run`'s, shared with its delivery processes)."""
    from slack_sdk import WebClient
    from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

    from gateway.slack.app import AdapterOptions, SlackAdapter
    from gateway.slack.http import SlackHttpServer, SlackSocketMode
    from gateway.slack.identity import SlackIdentity

    s = app.settings.slack
    if not s.bot_token:
        raise ConfigError("slack.bot_token is required (better: TICKETGATE__SLACK__BOT_TOKEN)")
    if s.socket_mode and not s.app_token:
        raise ConfigError("slack.socket_mode needs slack.app_token (TICKETGATE__SLACK__APP_TOKEN)")
    if not s.socket_mode and not s.signing_secret:
        raise ConfigError(
            "slack.signing_secret is required (better: TICKETGATE__SLACK__SIGNING_SECRET)"
        )
    counters = SlackCounters(posts)
    service = SlackService(app.service)
    # Answers in the request's time: a rate limit is waited out once (the user waits);
    # posts go through the outbox, whose client retries nothing (each row is one try).
    client = WebClient(
        token=s.bot_token,
        base_url=s.api_url,
        timeout=10,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)],
    )
    identity = SlackIdentity(
        client, service, clock=app.service.clock, ttl_seconds=s.identity_cache_seconds
    )
    adapter = SlackAdapter(
        service=service,
        identity=identity,
        client=client,
        counters=counters,
        options=AdapterOptions(
            bot_token=s.bot_token,
            api_url=s.api_url,
            max_attachment_bytes=app.settings.smtp.max_attachment_bytes,
        ),
        executor=ThreadPoolExecutor(max_workers=s.listener_threads, thread_name_prefix="slack"),
    )
    entry: SlackHttpServer | SlackSocketMode
    if s.socket_mode:
        entry = SlackSocketMode(adapter, app_token=s.app_token)
    else:
        entry = SlackHttpServer(
            adapter,
            signing_secret=s.signing_secret,
            clock=app.service.clock,
            counters=counters,
            host=s.host,
            port=s.port if port is None else port,
        )
    return SlackRuntime(adapter, entry, make_slack_poster(app, service, counters), counters)


def make_slack_poster(
    app: App, service: SlackService | None = None, counters: SlackCounters | None = None
) -> SlackPoster:
    """The outbox sender of Slack posts (also in a delivery worker's own process)."""
    from slack_sdk import WebClient

    from gateway.slack.poster import SlackPoster

    s = app.settings.slack
    # Posts go through the outbox, whose client retries nothing (each row is one try).
    post_client = WebClient(token=s.bot_token, base_url=s.api_url, timeout=10, retry_handlers=[])
    return SlackPoster(
        post_client, service or SlackService(app.service), counters or SlackCounters()
    )


def mailbox_configs(settings: Settings) -> list[MailboxConfig]:
    """The `[[imap.mailboxes]]` tables, passwords resolved (gateway/config.py)."""
    from gateway.mail.imap_client import MailboxConfig

    return [
        MailboxConfig(
            name=b.label,
            host=b.host,
            port=b.port,
            tls=b.tls,
            user=b.user,
            password=b.password,
            folder=b.folder,
            processed_folder=b.processed_folder,
            quarantine_folder=b.quarantine_folder,
            departments=tuple(d.lower() for d in b.departments),
            start_from=b.start_from,
        )
        for b in settings.imap.mailboxes
    ]


def make_imap_watcher(
    app: App, box: MailboxConfig, *, on_queued: Callable[[], None] = lambda: None
) -> MailboxWatcher:
    """The watcher of one mailbox; `on_queued` runs after each commit (it wakes the runner)."""
    from gateway.runners.imap import MailboxWatcher

    inbound = make_inbound(app)
    i = app.settings.imap
    return MailboxWatcher(
        box,
        ImapIntake(app.service, on_storage_error=app.engine.dispose),
        is_ours=lambda a: inbound.known_recipient(a) is not None,
        on_queued=on_queued,
        max_message_bytes=app.settings.smtp.max_message_bytes,
        batch_size=i.batch_size,
        idle_seconds=i.idle_seconds,
        poll_seconds=i.poll_seconds,
        backoff_seconds=i.backoff_seconds,
        backoff_max_seconds=i.backoff_max_seconds,
    )


def make_imap_watchers(
    app: App, *, on_queued: Callable[[], None] = lambda: None
) -> list[MailboxWatcher]:
    """One watcher per `[[imap.mailboxes]]` table."""
    return [
        make_imap_watcher(app, box, on_queued=on_queued) for box in mailbox_configs(app.settings)
    ]
