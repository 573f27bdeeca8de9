"""Settings: read one TOML file, apply ``TICKETGATE__SECTION__KEY`` overrides, check every value.

Decisions (see also README "Configuration"):

* The file is optional. A missing file means "all defaults", so ``ticketgate init --demo`` can
  run before the file exists, write it, and load it again.
* Unknown sections and keys -- in the file or in ``TICKETGATE__…`` variables -- are errors that
  name the offender: a typo must not silently fall back to a default.
* Every scalar key can be overridden by ``TICKETGATE__SECTION__KEY`` (section and key are
  matched case-insensitively). The text is coerced to the key's type: booleans accept
  ``true/false/1/0/yes/no/on/off``, tuples accept a JSON list or comma-separated text.
  ``TICKETGATE__IMAP__MAILBOXES`` takes a JSON list of mailbox tables.
* Relative paths resolve against the directory of the config file, not the working directory,
  so the same file works wherever ``ticketgate`` is started from: the SQLite file of
  ``database.url`` (``sqlite:///x.db``), ``outbound.maildir`` and ``org.file``. This applies to
  values from the environment too. Absolute paths, in-memory SQLite and non-SQLite URLs are
  left untouched.
* An IMAP mailbox's ``password_env`` names an environment variable holding its password; it is
  resolved here (an error when IMAP is enabled and the variable is unset).
* ``mail.secret`` may be empty here; commands that need it (``run``, ``init``) call
  :func:`require_mail_secret`, which says how to set it.
* Secrets never appear in ``repr()`` of the settings, so logging a settings object is safe.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "TICKETGATE__"
CONFIG_ENV = "TICKETGATE_CONFIG"
DEFAULT_CONFIG_NAME = "ticketgate.toml"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, key or variable at fault."""


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///ticketgate.db"
    echo: bool = False


@dataclass(frozen=True)
class OrgSettings:
    file: str = "org.toml"


@dataclass(frozen=True)
class SmtpSettings:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 2525
    max_message_bytes: int = 26214400
    max_attachment_bytes: int = 10485760
    max_total_attachment_bytes: int = 26214400
    max_parts: int = 200
    max_depth: int = 10
    sender_rate_per_hour: int = 120
    sender_burst_per_minute: int = 20
    hostname: str = ""  # EHLO name; "" = mail.domain
    max_recipients: int = 100  # RCPT TO per transaction; more: 452 4.5.3
    max_sessions: int = 200  # SMTP sessions open at once; more: 421 4.7.0 and closed
    # STARTTLS: offered when a certificate is set (PEM; the key in tls_key_file or in the
    # certificate's file); with require_starttls, MAIL before STARTTLS gets 530.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    require_starttls: bool = False


@dataclass(frozen=True)
class IntakeSettings:
    """The intake runner, which processes the inbound queue."""

    runners: int = 1  # intake runners in `run`; 0 = another process processes the queue
    processes: bool = True  # each runner in a child process of its own (no shared GIL)
    # Queued mails claimed and applied in one transaction; unset, by the database: see
    # `default_intake_batch`.
    batch_size: int = 8
    poll_seconds: float = 0.1  # how often an idle runner looks (a thread is also woken)
    reference_wait_seconds: float = 3.0  # a reply naming only unseen Message-IDs waits this long
    max_attempts: int = 3  # a mail whose processing raised this often is quarantined


@dataclass(frozen=True)
class MailSettings:
    domain: str = ""  # "" = the first organization's first domain
    secret: str = field(default="", repr=False)  # required by run/init; may come from env
    previous_secrets: tuple[str, ...] = field(default=(), repr=False)
    reply_local: str = "reply"
    from_local: str = "helpdesk"
    from_name: str = "Helpdesk"
    token_days: int = 365
    reopen_window_days: int = 7
    trusted_authserv_ids: tuple[str, ...] = ()
    refuse_dmarc_fail: bool = True
    default_department: str = ""  # intake address used when no rule finds a target
    auto_mail_per_day: int = 40
    auto_mail_per_ticket_hour: int = 10
    notices_per_sender_hour: int = 10


@dataclass(frozen=True)
class OutboundSettings:
    transport: str = "maildir"
    maildir: str = "var/outbox"
    relay_host: str = "127.0.0.1"
    relay_port: int = 25
    starttls: bool = False
    username: str = ""
    password: str = field(default="", repr=False)
    max_attempts: int = 8
    backoff_seconds: float = 30.0
    backoff_max_seconds: float = 3600.0
    poll_seconds: float = 1.0
    workers: int = 1  # delivery workers in `run`; 0 = another process delivers
    # Each worker in a child process of its own (rendering is CPU: no shared GIL). Always so
    # for workers > 1 on PostgreSQL; on SQLite more than one writer process only waits.
    processes: bool = False
    batch_size: int = 200  # due rows claimed, delivered and marked in one go
    relay_max_per_connection: int = 100  # mails per SMTP session before a new one
    relay_sessions: int = 4  # concurrent SMTP sessions a worker's batch is split over
    lease_seconds: float = 300.0  # a claimed row not marked by then is due again (a crash)


@dataclass(frozen=True)
class ImapMailbox:
    host: str
    port: int = 993
    tls: str = "ssl"
    user: str = ""
    password: str = field(default="", repr=False)
    password_env: str = ""
    folder: str = "INBOX"
    processed_folder: str = "Processed"
    quarantine_folder: str = "Quarantine"
    # The department address(es) this mailbox serves, added to every mail's envelope
    # recipients (its address may be in no header: a Bcc, a forward, an alias).
    departments: tuple[str, ...] = ()
    # A label for logs, /metrics and the database row of the folder's state (default
    # "user@host/folder"); changing it starts the folder afresh.
    name: str = ""
    # "all": a first run queues what the folder holds; "now": only mail arriving from now on.
    start_from: str = "all"

    @property
    def label(self) -> str:
        return self.name or f"{self.user}@{self.host}/{self.folder}"


@dataclass(frozen=True)
class ImapSettings:
    enabled: bool = False
    poll_seconds: float = 60.0
    idle_seconds: float = 300.0
    batch_size: int = 100
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    mailboxes: tuple[ImapMailbox, ...] = ()


@dataclass(frozen=True)
class SlackSettings:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 3000
    signing_secret: str = field(default="", repr=False)
    bot_token: str = field(default="", repr=False)
    api_url: str = "https://slack.com/api/"
    socket_mode: bool = False
    app_token: str = field(default="", repr=False)
    # How long a Slack user's mapping to an employee (users.info) is kept.
    identity_cache_seconds: float = 3600.0
    # Threads that run listeners after their ack.
    listener_threads: int = 8


@dataclass(frozen=True)
class SchedulerSettings:
    enabled: bool = True
    tick_seconds: int = 30
    confirm_window_hours: int = 72
    reminder_hours: int = 48
    reminder_max: int = 2
    feedback_delay_hours: int = 1
    feedback_reminder_hours: int = 72
    batch_size: int = 200


@dataclass(frozen=True)
class HttpSettings:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8025


@dataclass(frozen=True)
class Settings:
    path: Path
    database: DatabaseSettings
    org: OrgSettings
    smtp: SmtpSettings
    intake: IntakeSettings
    mail: MailSettings
    outbound: OutboundSettings
    imap: ImapSettings
    slack: SlackSettings
    scheduler: SchedulerSettings
    http: HttpSettings


SECTIONS: dict[str, type[Any]] = {
    "database": DatabaseSettings,
    "org": OrgSettings,
    "smtp": SmtpSettings,
    "intake": IntakeSettings,
    "mail": MailSettings,
    "outbound": OutboundSettings,
    "imap": ImapSettings,
    "slack": SlackSettings,
    "scheduler": SchedulerSettings,
    "http": HttpSettings,
}

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def config_path(explicit: str | None, env: Mapping[str, str]) -> Path:
    """The config file to read: ``--config``, else ``$TICKETGATE_CONFIG``, else ./ticketgate.toml."""
    if explicit:
        return Path(explicit).expanduser()
    from_env = env.get(CONFIG_ENV, "")
    if from_env:
        return Path(from_env).expanduser()
    return Path(DEFAULT_CONFIG_NAME)


# `intake.batch_size` when the file and the environment leave it out (BENCHMARKS, 2026-12-02
# night): on SQLite the SMTP edge waits for the runner's transaction to end before it can
# queue a mail, so batches stay short (at 32 the edge's p99 doubled); PostgreSQL has no such
# wait, and 32 a batch took queued mail to tickets 35-40 % faster than 8.
INTAKE_BATCH_SQLITE = 8
INTAKE_BATCH_POSTGRES = 32


def default_intake_batch(database_url: str) -> int:
    """The default `intake.batch_size` for a database URL."""
    return INTAKE_BATCH_POSTGRES if database_url.startswith("postgresql") else INTAKE_BATCH_SQLITE


def load_settings(path: Path, env: Mapping[str, str] = os.environ) -> Settings:
    """Read ``path`` (optional), apply environment overrides from ``env``, check and resolve."""
    path = Path(path).expanduser().absolute()
    raw = _read_file(path)
    where = str(path)

    unknown = sorted(name for name in raw if name not in SECTIONS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown section(s) {', '.join(repr(n) for n in unknown)}; "
            f"known: {', '.join(SECTIONS)}"
        )

    tables: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [{name}] must be a table, got {_kind(table)}")
        tables[name] = dict(table)

    values: dict[str, dict[str, Any]] = {}
    for name, cls in SECTIONS.items():
        values[name] = _check_table(cls, tables[name], where=f"{where}: [{name}]")

    _apply_env(values, env)
    if "batch_size" not in values["intake"]:
        url = values["database"].get("url", DatabaseSettings.url)
        values["intake"]["batch_size"] = default_intake_batch(url)

    base = path.parent
    sections = {name: cls(**values[name]) for name, cls in SECTIONS.items()}
    settings = Settings(path=path, **sections)
    settings = dataclasses.replace(
        settings,
        database=dataclasses.replace(
            settings.database, url=_resolve_sqlite_url(settings.database.url, base)
        ),
        org=dataclasses.replace(settings.org, file=_resolve_path(settings.org.file, base)),
        outbound=dataclasses.replace(
            settings.outbound, maildir=_resolve_path(settings.outbound.maildir, base)
        ),
        imap=dataclasses.replace(settings.imap, mailboxes=_resolve_passwords(settings.imap, env)),
        # slack_sdk joins method names onto the base URL: it must end in "/"
        slack=dataclasses.replace(settings.slack, api_url=settings.slack.api_url.rstrip("/") + "/"),
    )
    _validate(settings)
    return settings


def effective_mail_domain(settings: Settings, org_domains: Sequence[str]) -> str:
    """``mail.domain`` when set, else the first organization's first domain (lower case)."""
    if settings.mail.domain:
        return settings.mail.domain.strip().lower()
    for domain in org_domains:
        if domain.strip():
            return domain.strip().lower()
    raise ConfigError(
        f"{settings.path}: [mail] domain is not set and no organization has a domain; "
        f"set mail.domain or {ENV_PREFIX}MAIL__DOMAIN, or import an org file first"
    )


def effective_smtp_hostname(settings: Settings, org_domains: Sequence[str]) -> str:
    """The EHLO/banner name: ``smtp.hostname`` when set, else the effective mail domain."""
    if settings.smtp.hostname:
        return settings.smtp.hostname
    return effective_mail_domain(settings, org_domains)


def require_mail_secret(settings: Settings) -> str:
    """The HMAC secret for reply tokens; a ConfigError saying how to set it when it is missing."""
    if not settings.mail.secret:
        raise ConfigError(
            f"{settings.path}: [mail] secret is required (HMAC key for reply addresses); "
            f"set it in the file or in {ENV_PREFIX}MAIL__SECRET"
        )
    return settings.mail.secret


# --- reading and checking --------------------------------------------------------------------


def _read_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    if not path.is_file():
        raise ConfigError(f"{path}: not a regular file")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _field_types(cls: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _check_table(cls: type[Any], table: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Type-check one TOML table against ``cls``; returns the values it sets."""
    types = _field_types(cls)
    unknown = sorted(k for k in table if k not in types)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
            f"known: {', '.join(types)}"
        )
    out: dict[str, Any] = {}
    for key, value in table.items():
        out[key] = _check_value(types[key], value, where=f"{where} {key}")
    return out


def _check_value(tp: Any, value: Any, *, where: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {_kind(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_kind(value)}")
        return value
    if tp == tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {_kind(value)}")
        return tuple(value)
    if tp == tuple[ImapMailbox, ...]:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of tables ([[imap.mailboxes]])")
        boxes = []
        for i, item in enumerate(value):
            item_where = f"{where}[{i}]"
            if not isinstance(item, dict):
                raise ConfigError(f"{item_where}: expected a table, got {_kind(item)}")
            if "host" not in item:
                raise ConfigError(f"{item_where}: 'host' is required")
            boxes.append(ImapMailbox(**_check_table(ImapMailbox, item, where=item_where)))
        return tuple(boxes)
    raise AssertionError(f"no checker for {tp!r} ({where})")  # a new field type needs one


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    for t, name in names.items():
        if type(value) is t:
            return f"{name} ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


# --- environment overrides -------------------------------------------------------------------


def _apply_env(values: dict[str, dict[str, Any]], env: Mapping[str, str]) -> None:
    """Overlay ``TICKETGATE__SECTION__KEY`` variables (sorted, so the outcome is stable)."""
    for name in sorted(env):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].split("__")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"{name}: expected the form {ENV_PREFIX}SECTION__KEY")
        section, key = parts[0].lower(), parts[1].lower()
        if section not in SECTIONS:
            raise ConfigError(f"{name}: unknown section {section!r}; known: {', '.join(SECTIONS)}")
        types = _field_types(SECTIONS[section])
        if key not in types:
            raise ConfigError(
                f"{name}: unknown key {key!r} in [{section}]; known: {', '.join(types)}"
            )
        values[section][key] = _coerce_env(types[key], env[name], where=name)


def _coerce_env(tp: Any, text: str, *, where: str) -> Any:
    if tp is bool:
        word = text.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ConfigError(f"{where}: expected true/false/1/0/yes/no, got {text!r}")
    if tp is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(text.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {text!r}") from None
    if tp is str:
        return text
    if tp == tuple[str, ...]:
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                items = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: not a valid JSON list: {exc}") from None
            return _check_value(tp, items, where=where)
        return tuple(part.strip() for part in stripped.split(",") if part.strip())
    if tp == tuple[ImapMailbox, ...]:
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: expected a JSON list of mailbox tables: {exc}") from None
        return _check_value(tp, items, where=where)
    raise AssertionError(f"no coercion for {tp!r} ({where})")


# --- paths and secrets ----------------------------------------------------------------------

_SQLITE_URL = re.compile(r"^(?P<scheme>sqlite(?:\+[A-Za-z0-9_]+)?):///(?P<rest>.*)$", re.DOTALL)


def _resolve_path(value: str, base: Path) -> str:
    """``value`` as given when absolute, else joined to ``base`` (the config file's folder)."""
    if not value:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def _resolve_sqlite_url(url: str, base: Path) -> str:
    """Make the file of a ``sqlite:///relative.db`` URL absolute; leave every other URL alone."""
    m = _SQLITE_URL.match(url)
    if m is None:
        return url  # not SQLite, or sqlite:// (in memory)
    rest = m.group("rest")
    path, sep, query = rest.partition("?")
    if not path or path == ":memory:" or path.startswith(("/", "file:")):
        return url  # in memory, already absolute (sqlite:////abs), or a SQLite URI
    return f"{m.group('scheme')}:///{_resolve_path(path, base)}{sep}{query}"


def _resolve_passwords(imap: ImapSettings, env: Mapping[str, str]) -> tuple[ImapMailbox, ...]:
    boxes = []
    for i, box in enumerate(imap.mailboxes):
        where = f"[[imap.mailboxes]][{i}] ({box.user or '?'}@{box.host})"
        if box.password_env:
            if box.password:
                raise ConfigError(f"{where}: give either password or password_env, not both")
            secret = env.get(box.password_env)
            if secret is None:
                if imap.enabled:
                    raise ConfigError(
                        f"{where}: password_env names {box.password_env!r}, "
                        "which is not set in the environment"
                    )
                secret = ""
            box = dataclasses.replace(box, password=secret)
        boxes.append(box)
    return tuple(boxes)


# --- values that type checks cannot catch ----------------------------------------------------


def _validate(s: Settings) -> None:
    where = str(s.path)

    def port(label: str, value: int) -> None:
        if not 0 <= value <= 65535:
            raise ConfigError(f"{where}: {label}: {value} is not a TCP port (0-65535)")

    def positive(label: str, value: float) -> None:
        if value <= 0:
            raise ConfigError(f"{where}: {label}: must be greater than 0, got {value}")

    def one_of(label: str, value: str, allowed: Sequence[str]) -> None:
        if value not in allowed:
            raise ConfigError(f"{where}: {label}: {value!r} is not one of {', '.join(allowed)}")

    def not_empty(label: str, value: str) -> None:
        if not value.strip():
            raise ConfigError(f"{where}: {label}: must not be empty")

    not_empty("[database] url", s.database.url)
    not_empty("[org] file", s.org.file)

    port("[smtp] port", s.smtp.port)
    for key in (
        "max_message_bytes",
        "max_attachment_bytes",
        "max_total_attachment_bytes",
        "max_parts",
        "max_depth",
        "sender_rate_per_hour",
        "sender_burst_per_minute",
        "max_recipients",
        "max_sessions",
    ):
        positive(f"[smtp] {key}", getattr(s.smtp, key))
    if s.smtp.tls_key_file and not s.smtp.tls_cert_file:
        raise ConfigError(f"{where}: [smtp] tls_key_file is set but tls_cert_file is not")
    if s.smtp.require_starttls and not s.smtp.tls_cert_file:
        raise ConfigError(
            f"{where}: [smtp] require_starttls needs tls_cert_file (a certificate to offer)"
        )
    for key in ("batch_size", "poll_seconds", "max_attempts"):
        positive(f"[intake] {key}", getattr(s.intake, key))
    if s.intake.reference_wait_seconds < 0:
        raise ConfigError(f"{where}: [intake] reference_wait_seconds: must be 0 or more")

    for key in ("domain", "default_department"):
        value = getattr(s.mail, key)
        if any(c.isspace() for c in value):
            raise ConfigError(f"{where}: [mail] {key}: {value!r} must not contain spaces")
    if s.mail.default_department and "@" not in s.mail.default_department:
        raise ConfigError(
            f"{where}: [mail] default_department: {s.mail.default_department!r} "
            "must be a department's intake address"
        )
    for key in ("reply_local", "from_local"):
        value = getattr(s.mail, key)
        if not value or "@" in value or "+" in value or any(c.isspace() for c in value):
            raise ConfigError(
                f"{where}: [mail] {key}: {value!r} must be a plain local part (no @, + or spaces)"
            )
    for key in (
        "token_days",
        "reopen_window_days",
        "auto_mail_per_day",
        "auto_mail_per_ticket_hour",
        "notices_per_sender_hour",
    ):
        positive(f"[mail] {key}", getattr(s.mail, key))

    one_of("[outbound] transport", s.outbound.transport, ("maildir", "smtp"))
    if s.outbound.transport == "maildir":
        not_empty("[outbound] maildir", s.outbound.maildir)
    port("[outbound] relay_port", s.outbound.relay_port)
    for key in (
        "max_attempts",
        "backoff_seconds",
        "backoff_max_seconds",
        "poll_seconds",
        "batch_size",
        "relay_max_per_connection",
        "relay_sessions",
        "lease_seconds",
    ):
        positive(f"[outbound] {key}", getattr(s.outbound, key))
    if s.outbound.workers < 0:  # 0: this process delivers nothing (another one does)
        raise ConfigError(
            f"{where}: [outbound] workers: must be 0 or more, got {s.outbound.workers}"
        )
    if s.outbound.backoff_max_seconds < s.outbound.backoff_seconds:
        raise ConfigError(
            f"{where}: [outbound] backoff_max_seconds must not be less than backoff_seconds"
        )

    for key in ("poll_seconds", "idle_seconds", "batch_size", "backoff_seconds"):
        positive(f"[imap] {key}", getattr(s.imap, key))
    if s.imap.backoff_max_seconds < s.imap.backoff_seconds:
        raise ConfigError(
            f"{where}: [imap] backoff_max_seconds must not be less than backoff_seconds"
        )
    labels: set[str] = set()
    for i, box in enumerate(s.imap.mailboxes):
        label = f"[[imap.mailboxes]][{i}]"
        not_empty(f"{label} host", box.host)
        port(f"{label} port", box.port)
        one_of(f"{label} tls", box.tls, ("none", "starttls", "ssl"))
        one_of(f"{label} start_from", box.start_from, ("all", "now"))
        for d in box.departments:
            if "@" not in d:
                raise ConfigError(
                    f"{where}: {label} departments: {d!r} must be a department's intake address"
                )
        if box.label in labels:
            raise ConfigError(
                f"{where}: {label}: a second mailbox named {box.label!r} (give each a name)"
            )
        labels.add(box.label)
        for key in ("folder", "processed_folder", "quarantine_folder"):
            not_empty(f"{label} {key}", getattr(box, key))

    port("[slack] port", s.slack.port)
    positive("[slack] identity_cache_seconds", s.slack.identity_cache_seconds)
    positive("[slack] listener_threads", s.slack.listener_threads)
    if not s.slack.api_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: [slack] api_url: {s.slack.api_url!r} must be an http(s) URL")

    for key in (
        "tick_seconds",
        "confirm_window_hours",
        "reminder_hours",
        "feedback_reminder_hours",
        "batch_size",
    ):
        positive(f"[scheduler] {key}", getattr(s.scheduler, key))
    for key in ("reminder_max", "feedback_delay_hours"):
        if getattr(s.scheduler, key) < 0:
            raise ConfigError(f"{where}: [scheduler] {key} must not be negative")

    port("[http] port", s.http.port)
