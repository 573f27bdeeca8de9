"""Shared fixtures: a migrated database on SQLite and (when configured) PostgreSQL, the demo org,
a service with a clock the test drives, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from gateway.bootstrap import App, build
from gateway.config import load_settings
from gateway.demo import DEMO_EMPLOYEES_CSV, DEMO_ORG_TOML
from gateway.service.org_import import import_org
from store.migrate import upgrade

PG_URL = os.environ.get("TICKETGATE_TEST_POSTGRES_URL", "")
ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SECRET = "test-secret-0123456789abcdef"


class TestClock:
    """A clock the test moves by hand."""

    def __init__(self, at: datetime | None = None) -> None:
        self.at = at or datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.at

    def advance(self, **kw: float) -> None:
        self.at += timedelta(**kw)


def _backends() -> list[object]:
    return ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@dataclass
class Database:
    backend: str
    url: str
    env: dict[str, str] = field(default_factory=dict)


def with_search_path(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` (psycopg passes `options` to the server)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


@contextmanager
def postgres_schema(base_url: str = PG_URL) -> Iterator[str]:
    """A fresh, empty PostgreSQL schema for one test (or module), dropped afterwards."""
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema
    finally:
        admin.dispose()  # a connection from before may be gone (a test restarted the server)
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=_backends())
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """An empty database: a SQLite file, or a fresh PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield Database("sqlite", f"sqlite:///{tmp_path}/tg.db")
        return
    if not PG_URL:
        pytest.skip("TICKETGATE_TEST_POSTGRES_URL is not set (.ci/run always sets it)")
    with postgres_schema() as schema:
        yield Database("postgres", with_search_path(PG_URL, schema))


@pytest.fixture
def sqlite_gateway(tmp_path: Path) -> Iterator[Gateway]:
    """The demo installation on SQLite only, served over SMTP: for tests about SQLite itself
    (its file made unreachable) or too long to repeat on every backend (the whole corpus)."""
    db = Database("sqlite", f"sqlite:///{tmp_path}/tg.db")
    with demo_env(db, tmp_path / "install") as e, serving(e) as gw:
        yield gw


def write_demo_org(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "org.toml").write_text(DEMO_ORG_TOML, encoding="utf-8")
    if DEMO_EMPLOYEES_CSV:
        (folder / "employees.csv").write_text(DEMO_EMPLOYEES_CSV, encoding="utf-8")
    return folder / "org.toml"


@dataclass
class Env:
    """A configured installation: settings file, environment, app and clock."""

    dir: Path
    env: dict[str, str]
    app: App
    clock: TestClock

    @property
    def service(self):  # type: ignore[no-untyped-def]
        return self.app.service

    def import_org(self, path: Path) -> None:
        with self.app.sessions() as s, s.begin():
            import_org(s, path, mail_domain=self.app.settings.mail.domain)


def make_env(db: Database, folder: Path, extra: dict[str, str] | None = None) -> Env:
    folder.mkdir(parents=True, exist_ok=True)
    env = {
        "TICKETGATE_CONFIG": str(folder / "ticketgate.toml"),
        "TICKETGATE__DATABASE__URL": db.url,
        "TICKETGATE__MAIL__DOMAIN": "tickets.acme.example",
        "TICKETGATE__MAIL__SECRET": SECRET,
        "TICKETGATE__OUTBOUND__TRANSPORT": "maildir",
        "TICKETGATE__OUTBOUND__MAILDIR": str(folder / "outbox"),
        "TICKETGATE__SLACK__ENABLED": "false",
        "TICKETGATE__IMAP__ENABLED": "false",
        # The test clock stands still: a reply naming only unseen Message-IDs would wait for
        # ever. Tests of that wait set it and move the clock.
        "TICKETGATE__INTAKE__REFERENCE_WAIT_SECONDS": "0",
        **(extra or {}),
    }
    settings = load_settings(folder / "ticketgate.toml", env)
    clock = TestClock()
    app = build(settings, clock=clock)
    upgrade(app.engine)
    return Env(folder, env, app, clock)


@contextmanager
def demo_env(db: Database, folder: Path, extra: dict[str, str] | None = None) -> Iterator[Env]:
    """`make_env` with the demo organisation imported; the app is closed afterwards."""
    e = make_env(db, folder, extra)
    try:
        e.import_org(write_demo_org(folder))
        yield e
    finally:
        e.app.close()


@pytest.fixture
def env(database: Database, tmp_path: Path) -> Iterator[Env]:
    """The demo organisation on a migrated database, with a test clock."""
    with demo_env(database, tmp_path / "install") as e:
        yield e


def run_cli(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `ticketgate` as a separate process, as an operator would."""
    full = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@contextmanager
def storage_unreachable(env: Env) -> Iterator[None]:
    """The SQLite file of `env` unreachable inside the block: read-only, or (root ignores file
    modes) moved away from a folder made read-only; put back afterwards."""
    import stat

    db = Path(env.app.settings.database.url.removeprefix("sqlite:///"))
    env.app.engine.dispose()
    files = [p for p in db.parent.iterdir() if p.name.startswith(db.name)]
    modes = {p: p.stat().st_mode for p in files}
    if os.geteuid() == 0:
        moved = db.parent / "moved"
        moved.mkdir()
        for p in files:
            p.rename(moved / p.name)
        db.parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
    else:
        for p in files:
            p.chmod(stat.S_IRUSR)
    try:
        yield
    finally:
        if os.geteuid() == 0:
            db.parent.chmod(0o755)
            for p in (db.parent / "moved").iterdir():
                p.rename(db.parent / p.name)
            (db.parent / "moved").rmdir()
        else:
            for p, mode in modes.items():
                p.chmod(mode)
        env.app.engine.dispose()


# ---- SMTP intake and outbound delivery over real sockets ------------------------------------


def poll_until(
    predicate: Callable[[], object], *, timeout: float, interval: float = 0.02, what: str = ""
) -> None:
    """Poll `predicate` until it is true; fail after `timeout` seconds (no fixed sleeps)."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what or predicate}"
        pause.wait(interval)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def crlf(data: bytes) -> bytes:
    import re

    return re.sub(rb"\r?\n|\r", b"\r\n", data)


@dataclass
class Gateway:
    """`env` plus the SMTP edge on 127.0.0.1, the intake runner (driven by the test: `send`
    runs it after each accepted mail) and a delivery worker to the maildir."""

    env: Env
    port: int
    server: object
    runner: object
    worker: object

    def send(
        self, msg: object, sender: str, rcpts: list[str], *, process: bool = True
    ) -> tuple[int, str]:
        """Send over SMTP; return (code, text) of the final answer. After a 250 the intake
        runner processes what is queued (unless `process` is false)."""
        import smtplib
        from email import policy
        from email.message import EmailMessage

        data = msg.as_bytes(policy=policy.SMTP) if isinstance(msg, EmailMessage) else msg
        assert isinstance(data, bytes)
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as s:
            try:
                s.sendmail(sender, rcpts, crlf(data))
            except smtplib.SMTPRecipientsRefused as e:
                code, txt = next(iter(e.recipients.values()))
                return code, txt.decode(errors="replace")
            except (smtplib.SMTPResponseException, smtplib.SMTPSenderRefused) as e:
                return e.smtp_code, e.smtp_error.decode(errors="replace")
        if process:
            self.process()
        return 250, ""

    def process(self) -> int:
        """Run the intake runner until nothing queued can be processed now."""
        return int(self.runner.run_until_idle())  # type: ignore[attr-defined]

    def deliver(self) -> list[object]:
        """Run the delivery worker once; return every mail in the maildir, parsed."""
        from email import message_from_bytes, policy

        self.worker.run_once()  # type: ignore[attr-defined]
        new = self.env.dir / "outbox" / "new"
        files = sorted(new.iterdir(), key=lambda p: p.stat().st_mtime_ns) if new.exists() else []
        return [message_from_bytes(p.read_bytes(), policy=policy.default) for p in files]

    def explain(self, message_id: str) -> dict:  # type: ignore[type-arg]
        """`mail explain` of a Message-ID, as the CLI's JSON."""
        from store import inbound_queue as queue

        with self.env.app.sessions() as s:
            recs = queue.records_with_message_id(s, message_id.strip("<>"))
            assert recs, message_id
            r = recs[0]
            return {
                "message_id": r.message_id,
                "outcome": r.outcome,
                "rule": r.rule,
                "ticket": f"TKT-{r.ticket_id}" if r.ticket_id else None,
            }

    def ticket(self, ref: str) -> dict:  # type: ignore[type-arg]
        from gateway.service.tickets import parse_ref
        from gateway.service.views import Views
        from store import models as m

        with self.env.app.sessions() as s:
            t = s.get(m.Ticket, parse_ref(ref))
            assert t is not None, ref
            return Views(s).ticket(t)

    def tickets(self) -> list[dict]:  # type: ignore[type-arg]
        from gateway.service.views import Views

        with self.env.app.sessions() as s:
            v = Views(s)
            return [v.ticket(t) for t in v.tickets()]


@contextmanager
def serving(env: Env, handler: object = None, runner: object = None) -> Iterator[Gateway]:
    """The SMTP edge of ``env`` on a free port of 127.0.0.1, stopped afterwards; ``handler``
    and ``runner`` replace the ones `ticketgate run` builds (a test injecting faults)."""
    from gateway.bootstrap import make_runner, make_smtp_server, make_worker

    app = env.app
    port = free_port()
    server = make_smtp_server(app, port=port, handler=handler)  # type: ignore[arg-type]
    server.start()
    try:
        yield Gateway(env, port, server, runner or make_runner(app), make_worker(app))
    finally:
        server.stop()


def intake_of_class(env: Env, cls: type) -> object:
    """``make_intake``'s MailIntake, as an instance of the subclass ``cls`` (fault injection)."""
    from gateway.bootstrap import make_intake

    plain = make_intake(env.app)
    return cls(env.app.service, plain.options, on_storage_error=plain.on_storage_error)


def smtp_up_to_data(sock: object, sender: str, rcpt: str) -> object:
    """On a fresh raw SMTP connection: read the banner, HELO, MAIL, RCPT, DATA (each answered
    2xx/3xx); return the socket's reader for the answers that follow."""
    f = sock.makefile("rb")  # type: ignore[attr-defined]
    assert f.readline().startswith(b"220")
    for cmd in (
        b"HELO client.example",
        f"MAIL FROM:<{sender}>".encode(),
        f"RCPT TO:<{rcpt}>".encode(),
        b"DATA",
    ):
        sock.sendall(cmd + b"\r\n")  # type: ignore[attr-defined]
        reply = f.readline()
        assert reply[:1] in (b"2", b"3"), reply
    return f


@pytest.fixture
def gateway(env: Env) -> Iterator[Gateway]:
    with serving(env) as gw:
        yield gw


def mail(
    sender: str,
    to: list[str],
    subject: str,
    body: str,
    *,
    cc: list[str] | None = None,
    headers: dict[str, str] | None = None,
    msgid: str | None = None,
) -> object:
    """A plain mail as a client writes it."""
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    m = EmailMessage()
    m["From"] = sender
    m["To"] = ", ".join(to)
    if cc:
        m["Cc"] = ", ".join(cc)
    m["Subject"] = subject
    m["Date"] = formatdate(localtime=True)
    m["Message-ID"] = msgid or make_msgid(domain="client.example")
    for k, v in (headers or {}).items():
        m[k] = v
    m.set_content(body)
    return m
