"""Settings: defaults, file values, environment overrides, errors, paths; the demo texts parse."""

from __future__ import annotations

import csv
import dataclasses
import io
import tomllib
from pathlib import Path

import pytest

from gateway.config import (
    SECTIONS,
    ConfigError,
    ImapMailbox,
    Settings,
    config_path,
    effective_mail_domain,
    effective_smtp_hostname,
    load_settings,
    require_mail_secret,
)
from gateway.demo import (
    DEMO_EMPLOYEES_CSV,
    DEMO_ORG_TOML,
    demo_config_toml,
    demo_org_files,
)

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ticketgate.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str = "", env: dict[str, str] | None = None) -> Settings:
    return load_settings(write(tmp_path, text), env or {})


# --- defaults and file values -----------------------------------------------------------------


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    """A config path that does not exist yet yields every default (init --demo runs first)."""
    s = load_settings(tmp_path / "absent.toml", {})
    assert s.path == tmp_path / "absent.toml"
    assert s.database.url == f"sqlite:///{tmp_path}/ticketgate.db"
    assert s.database.echo is False
    assert s.org.file == str(tmp_path / "org.toml")
    assert (s.smtp.enabled, s.smtp.host, s.smtp.port) == (True, "127.0.0.1", 2525)
    assert s.smtp.max_message_bytes == 26214400
    assert s.smtp.max_attachment_bytes == 10485760
    assert s.smtp.hostname == ""
    assert s.mail.domain == "" and s.mail.secret == ""
    assert s.mail.previous_secrets == () and s.mail.trusted_authserv_ids == ()
    assert (s.mail.reply_local, s.mail.from_local, s.mail.from_name) == (
        "reply",
        "helpdesk",
        "Helpdesk",
    )
    assert s.mail.reopen_window_days == 7 and s.mail.auto_mail_per_day == 40
    assert s.mail.refuse_dmarc_fail is True
    assert s.outbound.transport == "maildir"
    assert s.outbound.maildir == str(tmp_path / "var" / "outbox")
    assert (s.outbound.relay_host, s.outbound.relay_port) == ("127.0.0.1", 25)
    assert s.outbound.max_attempts == 8 and s.outbound.backoff_seconds == 30.0
    assert s.imap.enabled is False and s.imap.mailboxes == ()
    assert (s.slack.enabled, s.slack.port) == (False, 3000)
    assert s.slack.api_url == "https://slack.com/api/"
    assert (s.scheduler.enabled, s.scheduler.tick_seconds) == (True, 30)
    assert (s.http.enabled, s.http.host, s.http.port) == (True, "127.0.0.1", 8025)


def test_empty_file_equals_missing_file(tmp_path: Path) -> None:
    """An empty file and no file give the same settings."""
    assert load(tmp_path, "") == load_settings(tmp_path / "ticketgate.toml", {})


def test_file_values_are_read(tmp_path: Path) -> None:
    """Values in the file replace the defaults, with their TOML types."""
    s = load(
        tmp_path,
        """
        [database]
        url = "postgresql+psycopg://tg@db.example/tg"
        echo = true
        [smtp]
        port = 2600
        hostname = "mx.tickets.example"
        [mail]
        domain = "tickets.example"
        secret = "s3cret"
        previous_secrets = ["old1", "old2"]
        [outbound]
        transport = "smtp"
        backoff_seconds = 5
        [imap]
        enabled = true
        poll_seconds = 2.5
        [[imap.mailboxes]]
        host = "imap.example"
        user = "it@example"
        password = "pw"
        [[imap.mailboxes]]
        host = "imap2.example"
        port = 143
        tls = "starttls"
        [scheduler]
        tick_seconds = 5
        """,
    )
    assert s.database.url == "postgresql+psycopg://tg@db.example/tg"
    assert s.database.echo is True
    assert s.smtp.port == 2600 and s.smtp.host == "127.0.0.1"
    assert s.mail.domain == "tickets.example" and s.mail.secret == "s3cret"
    assert s.mail.previous_secrets == ("old1", "old2")
    assert s.outbound.transport == "smtp"
    assert s.outbound.backoff_seconds == 5.0 and isinstance(s.outbound.backoff_seconds, float)
    assert s.imap.poll_seconds == 2.5
    assert s.imap.mailboxes == (
        ImapMailbox(host="imap.example", user="it@example", password="pw"),
        ImapMailbox(host="imap2.example", port=143, tls="starttls"),
    )
    assert s.imap.mailboxes[0].folder == "INBOX"
    assert s.imap.mailboxes[0].processed_folder == "Processed"
    assert s.imap.mailboxes[0].quarantine_folder == "Quarantine"
    assert s.scheduler.tick_seconds == 5


def test_settings_are_frozen(tmp_path: Path) -> None:
    """Settings cannot be changed after loading."""
    s = load(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.smtp.port = 1  # type: ignore[misc]


def test_secrets_stay_out_of_repr(tmp_path: Path) -> None:
    """Logging a settings object does not leak secrets."""
    s = load(
        tmp_path,
        """
        [mail]
        secret = "mail-secret-x"
        previous_secrets = ["old-secret-y"]
        [outbound]
        password = "relay-pw-z"
        [slack]
        signing_secret = "sign-q"
        bot_token = "xoxb-r"
        app_token = "xapp-s"
        [[imap.mailboxes]]
        host = "imap.example"
        password = "imap-pw-t"
        """,
    )
    text = repr(s)
    for secret in ("mail-secret-x", "old-secret-y", "relay-pw-z", "sign-q", "xoxb-r", "xapp-s"):
        assert secret not in text
    assert "imap-pw-t" not in text


# --- environment overrides --------------------------------------------------------------------


def test_env_overrides_file_with_coercion(tmp_path: Path) -> None:
    """TICKETGATE__SECTION__KEY beats the file; text is coerced to each key's type."""
    s = load(
        tmp_path,
        """
        [smtp]
        port = 2600
        enabled = true
        """,
        {
            "TICKETGATE__SMTP__PORT": "2700",
            "TICKETGATE__SMTP__ENABLED": "no",
            "TICKETGATE__SLACK__ENABLED": "1",
            "TICKETGATE__SLACK__SOCKET_MODE": "Yes",
            "TICKETGATE__OUTBOUND__BACKOFF_SECONDS": "0.5",
            "TICKETGATE__MAIL__SECRET": "from-env",
            "TICKETGATE__MAIL__PREVIOUS_SECRETS": '["a", "b,c"]',
            "TICKETGATE__MAIL__TRUSTED_AUTHSERV_IDS": " mx1.example , mx2.example ,",
            "TICKETGATE_CONFIG": "ignored-here.toml",
            "UNRELATED": "x",
        },
    )
    assert s.smtp.port == 2700
    assert s.smtp.enabled is False
    assert s.slack.enabled is True and s.slack.socket_mode is True
    assert s.outbound.backoff_seconds == 0.5
    assert s.mail.secret == "from-env"
    assert s.mail.previous_secrets == ("a", "b,c")
    assert s.mail.trusted_authserv_ids == ("mx1.example", "mx2.example")


def test_env_section_and_key_are_case_insensitive(tmp_path: Path) -> None:
    """Section and key of an override match regardless of case."""
    s = load(
        tmp_path,
        env={"TICKETGATE__http__Port": "9000", "TICKETGATE__Database__ECHO": "true"},
    )
    assert s.http.port == 9000
    assert s.database.echo is True


def test_env_empty_list_and_false_values(tmp_path: Path) -> None:
    """An empty string gives an empty tuple; every spelling of false is accepted."""
    for word in ("false", "0", "no", "FALSE", "off"):
        s = load(
            tmp_path,
            '[mail]\ntrusted_authserv_ids = ["mx"]\n',
            {"TICKETGATE__MAIL__TRUSTED_AUTHSERV_IDS": "", "TICKETGATE__HTTP__ENABLED": word},
        )
        assert s.mail.trusted_authserv_ids == ()
        assert s.http.enabled is False


def test_env_overrides_apply_without_a_file(tmp_path: Path) -> None:
    """Overrides work when the config file does not exist yet (init --demo)."""
    s = load_settings(tmp_path / "later.toml", {"TICKETGATE__MAIL__DOMAIN": "t.example"})
    assert s.mail.domain == "t.example"


def test_env_mailboxes_as_json(tmp_path: Path) -> None:
    """TICKETGATE__IMAP__MAILBOXES takes a JSON list of mailbox tables."""
    s = load(
        tmp_path,
        env={"TICKETGATE__IMAP__MAILBOXES": '[{"host": "imap.example", "port": 1143}]'},
    )
    assert s.imap.mailboxes == (ImapMailbox(host="imap.example", port=1143),)


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("TICKETGATE__SMTP__PORT", "twenty", "TICKETGATE__SMTP__PORT"),
        ("TICKETGATE__SMTP__ENABLED", "maybe", "TICKETGATE__SMTP__ENABLED"),
        ("TICKETGATE__OUTBOUND__POLL_SECONDS", "fast", "TICKETGATE__OUTBOUND__POLL_SECONDS"),
        ("TICKETGATE__MAIL__PREVIOUS_SECRETS", "[1, 2]", "TICKETGATE__MAIL__PREVIOUS_SECRETS"),
        ("TICKETGATE__MAIL__PREVIOUS_SECRETS", "[oops", "TICKETGATE__MAIL__PREVIOUS_SECRETS"),
        ("TICKETGATE__SMTP__PROT", "25", "prot"),
        ("TICKETGATE__SMPT__PORT", "25", "smpt"),
        ("TICKETGATE__SMTP", "25", "TICKETGATE__SMTP"),
        ("TICKETGATE__SMTP__PORT__X", "25", "TICKETGATE__SMTP__PORT__X"),
    ],
)
def test_bad_env_override_is_named(tmp_path: Path, name: str, value: str, needle: str) -> None:
    """A malformed, unknown or uncoercible override is refused, naming the variable or key."""
    with pytest.raises(ConfigError) as err:
        load(tmp_path, env={name: value})
    assert needle in str(err.value)


# --- file errors ------------------------------------------------------------------------------


def test_unknown_section_is_named(tmp_path: Path) -> None:
    """An unknown section is an error naming it and the file."""
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "[smpt]\nport = 25\n")
    assert "'smpt'" in str(err.value)
    assert "ticketgate.toml" in str(err.value)


def test_unknown_key_is_named(tmp_path: Path) -> None:
    """An unknown key is an error naming the key and its section."""
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "[smtp]\nprot = 25\n")
    assert "'prot'" in str(err.value) and "[smtp]" in str(err.value)


def test_unknown_mailbox_key_is_named(tmp_path: Path) -> None:
    """An unknown key inside [[imap.mailboxes]] is named too."""
    with pytest.raises(ConfigError) as err:
        load(tmp_path, '[[imap.mailboxes]]\nhost = "h"\npasword = "x"\n')
    assert "'pasword'" in str(err.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[smtp]\nport = "2525"\n', "port"),
        ("[smtp]\nenabled = 1\n", "enabled"),
        ("[smtp]\nport = true\n", "port"),
        ("[smtp]\nport = 25.5\n", "port"),
        ("[database]\nurl = 5\n", "url"),
        ('[mail]\nprevious_secrets = "one"\n', "previous_secrets"),
        ("[mail]\nprevious_secrets = [1]\n", "previous_secrets"),
        ('[outbound]\nbackoff_seconds = "30"\n', "backoff_seconds"),
        ("smtp = 5\n", "[smtp]"),
        ("[imap]\nmailboxes = 5\n", "mailboxes"),
        ("[[imap.mailboxes]]\nport = 993\n", "host"),
    ],
)
def test_bad_type_is_named(tmp_path: Path, text: str, needle: str) -> None:
    """A value of the wrong type is an error naming the key."""
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[outbound]\ntransport = "sendmail"\n', "transport"),
        ("[smtp]\nport = 70000\n", "port"),
        ("[smtp]\nmax_message_bytes = 0\n", "max_message_bytes"),
        ('[[imap.mailboxes]]\nhost = "h"\ntls = "tls"\n', "tls"),
        ('[mail]\nreply_local = "re+ply"\n', "reply_local"),
        ('[mail]\ndefault_department = "IT"\n', "default_department"),
        ('[slack]\napi_url = "slack.com/api"\n', "api_url"),
        ("[outbound]\nbackoff_seconds = 60\nbackoff_max_seconds = 10\n", "backoff_max_seconds"),
        ("[outbound]\nworkers = -1\n", "workers"),
    ],
)
def test_bad_value_is_named(tmp_path: Path, text: str, needle: str) -> None:
    """A well-typed but unusable value is an error naming the key."""
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    assert needle in str(err.value)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    """A syntax error is a ConfigError naming the file, not a traceback."""
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "[smtp\nport = 1\n")
    assert "ticketgate.toml" in str(err.value) and "TOML" in str(err.value)


def test_directory_as_config_is_refused(tmp_path: Path) -> None:
    """A directory given as the config path is a ConfigError."""
    with pytest.raises(ConfigError):
        load_settings(tmp_path, {})


# --- paths ------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_config_folder(tmp_path: Path) -> None:
    """Relative SQLite file, maildir and org file are taken from the config file's folder."""
    conf = tmp_path / "etc"
    conf.mkdir()
    path = conf / "tg.toml"
    path.write_text(
        """
        [database]
        url = "sqlite:///data/tg.db?timeout=5"
        [org]
        file = "orgs/acme.toml"
        [outbound]
        maildir = "out"
        """,
        encoding="utf-8",
    )
    s = load_settings(path, {})
    assert s.database.url == f"sqlite:///{conf}/data/tg.db?timeout=5"
    assert s.org.file == str(conf / "orgs" / "acme.toml")
    assert s.outbound.maildir == str(conf / "out")


def test_relative_config_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative config path resolves against the working directory, then paths against it."""
    monkeypatch.chdir(tmp_path)
    s = load_settings(Path("ticketgate.toml"), {})
    assert s.path == tmp_path / "ticketgate.toml"
    assert s.database.url == f"sqlite:///{tmp_path}/ticketgate.db"


def test_env_relative_paths_resolve_too(tmp_path: Path) -> None:
    """Relative paths from the environment resolve against the config folder as well."""
    s = load(
        tmp_path,
        env={
            "TICKETGATE__DATABASE__URL": "sqlite+pysqlite:///x.db",
            "TICKETGATE__OUTBOUND__MAILDIR": "mails",
        },
    )
    assert s.database.url == f"sqlite+pysqlite:///{tmp_path}/x.db"
    assert s.outbound.maildir == str(tmp_path / "mails")


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////var/lib/ticketgate/tg.db",
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite:///file:tg.db?mode=memory&uri=true",
        "postgresql+psycopg://postgres@127.0.0.1:5432/ticketgate_test",
        "postgresql://u:p@db/relative",
    ],
)
def test_absolute_and_non_file_urls_untouched(tmp_path: Path, url: str) -> None:
    """Absolute SQLite paths, in-memory SQLite and server URLs are left as given."""
    assert load(tmp_path, env={"TICKETGATE__DATABASE__URL": url}).database.url == url


def test_absolute_paths_untouched(tmp_path: Path) -> None:
    """Absolute maildir and org file paths are kept as they are."""
    s = load(tmp_path, '[org]\nfile = "/srv/org.toml"\n[outbound]\nmaildir = "/srv/outbox"\n')
    assert s.org.file == "/srv/org.toml"
    assert s.outbound.maildir == "/srv/outbox"


def test_slack_api_url_gets_trailing_slash(tmp_path: Path) -> None:
    """The Slack API base URL always ends in '/', as slack_sdk joins method names onto it."""
    s = load(tmp_path, env={"TICKETGATE__SLACK__API_URL": "http://127.0.0.1:9999/api"})
    assert s.slack.api_url == "http://127.0.0.1:9999/api/"


# --- IMAP passwords ---------------------------------------------------------------------------


def test_password_env_is_resolved(tmp_path: Path) -> None:
    """A mailbox's password_env names the variable its password is read from."""
    s = load(
        tmp_path,
        '[imap]\nenabled = true\n[[imap.mailboxes]]\nhost = "h"\npassword_env = "IMAP_PW"\n',
        {"IMAP_PW": "hunter2"},
    )
    assert s.imap.mailboxes[0].password == "hunter2"
    assert s.imap.mailboxes[0].password_env == "IMAP_PW"


def test_password_env_unset_is_an_error_when_imap_enabled(tmp_path: Path) -> None:
    """An unset password variable is named when IMAP is on; with IMAP off it is not needed."""
    text = '[[imap.mailboxes]]\nhost = "h"\npassword_env = "IMAP_PW"\n'
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "[imap]\nenabled = true\n" + text)
    assert "IMAP_PW" in str(err.value)
    assert load(tmp_path, text).imap.mailboxes[0].password == ""


def test_password_and_password_env_together_are_refused(tmp_path: Path) -> None:
    """Giving both password and password_env is ambiguous and refused."""
    with pytest.raises(ConfigError) as err:
        load(
            tmp_path,
            '[[imap.mailboxes]]\nhost = "h"\npassword = "a"\npassword_env = "B"\n',
            {"B": "b"},
        )
    assert "password_env" in str(err.value)


# --- helpers ----------------------------------------------------------------------------------


def test_config_path_precedence(tmp_path: Path) -> None:
    """--config beats $TICKETGATE_CONFIG, which beats ./ticketgate.toml."""
    env = {"TICKETGATE_CONFIG": str(tmp_path / "env.toml")}
    assert config_path("given.toml", env) == Path("given.toml")
    assert config_path(None, env) == tmp_path / "env.toml"
    assert config_path(None, {}) == Path("ticketgate.toml")
    assert config_path(None, {"TICKETGATE_CONFIG": ""}) == Path("ticketgate.toml")


def test_effective_mail_domain(tmp_path: Path) -> None:
    """mail.domain wins; else the first org domain; with neither it is a ConfigError."""
    assert effective_mail_domain(load(tmp_path), ["Acme.Example", "b.example"]) == "acme.example"
    s = load(tmp_path, env={"TICKETGATE__MAIL__DOMAIN": "tickets.acme.example"})
    assert effective_mail_domain(s, ["acme.example"]) == "tickets.acme.example"
    assert effective_smtp_hostname(s, []) == "tickets.acme.example"
    with pytest.raises(ConfigError) as err:
        effective_mail_domain(load(tmp_path), [])
    assert "mail.domain" in str(err.value)


def test_require_mail_secret(tmp_path: Path) -> None:
    """A missing secret is a ConfigError that names the environment variable to set."""
    with pytest.raises(ConfigError) as err:
        require_mail_secret(load(tmp_path))
    assert "TICKETGATE__MAIL__SECRET" in str(err.value)
    assert require_mail_secret(load(tmp_path, env={"TICKETGATE__MAIL__SECRET": "k"})) == "k"


# --- config.example.toml and the demo ---------------------------------------------------------


def test_config_example_loads_and_documents_every_key() -> None:
    """config.example.toml is valid settings and mentions every key of every section."""
    path = ROOT / "config.example.toml"
    s = load_settings(path, {})
    assert s.mail.domain
    text = path.read_text(encoding="utf-8")
    for section, cls in SECTIONS.items():
        assert f"[{section}]" in text
        for f in dataclasses.fields(cls):
            if (section, f.name) != ("imap", "mailboxes"):
                assert f"{f.name} = " in text, f"{section}.{f.name} not in config.example.toml"
    for f in dataclasses.fields(ImapMailbox):
        assert f"#   {f.name} " in text, f"mailbox key {f.name} not explained"


def test_config_example_mailbox_block_is_valid(tmp_path: Path) -> None:
    """The commented-out [[imap.mailboxes]] example is valid once uncommented."""
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    lines = text.splitlines()
    start = lines.index("# [[imap.mailboxes]]")
    block = []
    for line in lines[start:]:
        if not line.startswith("# "):
            break
        block.append(line[2:])
    text = text.replace("\n".join(lines[start : start + len(block)]), "\n".join(block))
    env = {"TICKETGATE__IMAP__ENABLED": "true", "TICKETGATE_IMAP_IT_PASSWORD": "pw"}
    s = load(tmp_path, text, env)
    assert s.imap.enabled
    (box,) = s.imap.mailboxes
    assert box.password == "pw" and box.tls == "ssl" and box.port == 993


def test_demo_config_loads(tmp_path: Path) -> None:
    """The demo config is valid settings with the demo's domain, maildir and database."""
    secret = 'a "quoted" \\ secret ü'
    path = tmp_path / "ticketgate.toml"
    path.write_text(demo_config_toml(secret), encoding="utf-8")
    s = load_settings(path, {})
    assert s.mail.secret == secret
    assert s.mail.domain == "tickets.acme.example"
    assert s.database.url == f"sqlite:///{tmp_path}/ticketgate.db"
    assert s.outbound.transport == "maildir"
    assert s.outbound.maildir == str(tmp_path / "var" / "outbox")
    assert s.org.file == str(tmp_path / "org.toml")
    assert (s.smtp.host, s.smtp.port) == ("127.0.0.1", 2525)
    assert not s.slack.enabled and not s.imap.enabled


def test_demo_org_shape() -> None:
    """The demo org parses and has what the demo promises: 2 zones, 4+ departments, 12+ people."""
    org = tomllib.loads(DEMO_ORG_TOML)
    assert org["organization"]["domains"] == ["acme.example"]
    assert set(demo_org_files()) == {"org.toml", org["organization"]["employees_csv"]}

    branches = org["branches"]
    assert len({b["timezone"] for b in branches}) >= 2
    departments = {(b["name"], d["name"]): d for b in branches for d in b["departments"]}
    assert len(departments) >= 4
    addresses = [d["address"] for d in departments.values()]
    assert len(set(addresses)) == len(addresses)
    assert all(a.endswith("@acme.example") for a in addresses)

    categories = {c["name"]: c["sub_categories"] for c in org["categories"]}
    for name in ("Hardware", "Software", "Access", "Facilities"):
        assert categories[name]
    assert {"Mouse", "Keyboard", "Laptop"} <= set(categories["Hardware"])

    rows = list(csv.DictReader(io.StringIO(DEMO_EMPLOYEES_CSV)))
    assert rows and list(rows[0]) == ["email", "name", "branch", "department", "role"]
    employees = org["employees"] + rows
    emails = [e["email"] for e in employees]
    assert len(set(emails)) == len(emails)
    active = [e for e in employees if e.get("active", True)]
    assert len(active) >= 12

    for (branch, dept_name), dept in departments.items():
        assert dept.get("default_category", "Hardware") in categories
        levels = {r["name"]: r["level"] for r in dept["roles"]}
        assert len(set(levels.values())) >= 2
        members = [e for e in active if (e["branch"], e["department"]) == (branch, dept_name)]
        assert len(members) >= 2, dept_name
        assert any(levels[e["role"]] == max(levels.values()) for e in members), dept_name
    for e in employees:
        dept = departments[(e["branch"], e["department"])]
        assert e["role"] in {r["name"] for r in dept["roles"]}, e["email"]


def test_no_delivery_workers_is_allowed(tmp_path: Path) -> None:
    """`outbound.workers = 0`: a process that takes mail in and leaves delivery to another."""
    assert load(tmp_path, "[outbound]\nworkers = 0\n").outbound.workers == 0


def test_the_intake_batch_follows_the_database_unless_given(tmp_path: Path) -> None:
    """`intake.batch_size` left out: 8 on SQLite, 32 on PostgreSQL (whether the URL comes from
    the file or the environment); given in the file or the environment, it is kept."""
    pg = "postgresql+psycopg://tg@db.example/tg"
    assert load(tmp_path).intake.batch_size == 8
    assert load(tmp_path, f'[database]\nurl = "{pg}"\n').intake.batch_size == 32
    assert load(tmp_path, env={"TICKETGATE__DATABASE__URL": pg}).intake.batch_size == 32
    given = f'[database]\nurl = "{pg}"\n[intake]\nbatch_size = 8\n'
    assert load(tmp_path, given).intake.batch_size == 8
    env = {"TICKETGATE__DATABASE__URL": pg, "TICKETGATE__INTAKE__BATCH_SIZE": "5"}
    assert load(tmp_path, env=env).intake.batch_size == 5
