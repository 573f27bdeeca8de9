"""Issue 11's straight line, read from the code: importing ours patches nothing of other people's
code, adapters import nothing of store, and the service builds no SQL."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

_PROBE = r"""
import importlib, pkgutil, re, email.feedparser, email.policy, email.parser, aiosmtpd.smtp
import sqlalchemy.orm
def state():
    return {
        "feedparser.re": email.feedparser.re,
        "NLCRE_eol": email.feedparser.NLCRE_eol,
        "policy.default": email.policy.default,
        "policy.default type": type(email.policy.default),
        "EmailPolicy": dict(vars(email.policy.EmailPolicy)),
        "re.compile": re.compile,
        "SMTP": dict(vars(aiosmtpd.smtp.SMTP)),
        "BytesParser": dict(vars(email.parser.BytesParser)),
        "FeedParser": dict(vars(email.feedparser.FeedParser)),
        "Session": dict(vars(sqlalchemy.orm.Session)),
    }
before = state()
import gateway, store
for pkg in (gateway, store):
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if ".migrations" in m.name or m.name.endswith("__main__"):
            continue
        importlib.import_module(m.name)
after = state()
print(",".join(k for k in before if before[k] != after[k]))
"""


def test_importing_every_module_changes_no_library() -> None:
    """Every module of gateway and store imported in a fresh interpreter leaves the email
    package, re, aiosmtpd's session and SQLAlchemy's Session exactly as they were."""
    r = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"changed by importing our modules: {r.stdout.strip()}"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def test_adapters_import_nothing_from_store() -> None:
    """gateway/mail and gateway/slack translate; they reach the database only through the service."""
    bad = [
        f"{f.relative_to(ROOT)} imports {name}"
        for folder in ("gateway/mail", "gateway/slack")
        for f in sorted((ROOT / folder).rglob("*.py"))
        for name in _imports(f)
        if name == "store" or name.startswith("store.")
    ]
    assert bad == []


_SQL = re.compile(
    r"\b(select|insert|update|delete)\s*\(|postgresql\.insert|sqlite\.insert"
    r"|make_transient_to_detached|set_committed_value|\btext\s*\("
)


def test_service_builds_no_sql() -> None:
    """SQL lives in store/: no statement is built in gateway/service (the read views aside)."""
    found = []
    for f in sorted((ROOT / "gateway" / "service").glob("*.py")):
        if f.name == "views.py":
            continue
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if _SQL.search(code) and not code.strip().startswith(('"', "'")):
                found.append(f"{f.name}:{i}: {line.strip()}")
    assert found == []


def test_the_checker_finds_sql_where_there_is_some() -> None:
    """The pattern above is not blind: it finds the statements store/ builds."""
    text = (ROOT / "store" / "inbound_queue.py").read_text(encoding="utf-8")
    assert _SQL.search(text)


_ADAPTER_LIBRARIES = ("aiosmtpd", "imapclient", "slack_sdk", "slack_bolt", "apscheduler", "jinja2")


def _adapter_libraries_after(modules: str) -> str:
    """The adapter libraries a fresh interpreter holds once it has imported ``modules``."""
    probe = (
        f"import sys, {modules}\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *_ADAPTER_LIBRARIES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_a_cli_command_imports_no_adapter() -> None:
    """`bootstrap.build` (what `mail explain`, `ticket show` and most commands need) brings in
    the service and the store, not the SMTP edge, IMAP, Slack, APScheduler or the templates:
    each of those imports where it is built, so a command does not pay for them."""
    assert _adapter_libraries_after("gateway.cli") == ""


def test_building_the_edge_imports_aiosmtpd(tmp_path: Path) -> None:
    """The other side of the lazy imports: `make_smtp_server` (what `run` calls) brings in
    aiosmtpd and the MIME parser's rules when it builds the edge, and not before."""
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from gateway.bootstrap import build, make_smtp_server\n"
        "from gateway.config import load_settings\n"
        "env = {'TICKETGATE__DATABASE__URL': 'sqlite:///' + sys.argv[2]}\n"
        "app = build(load_settings(Path(sys.argv[1]), env))\n"
        "before = 'aiosmtpd' in sys.modules\n"
        "make_smtp_server(app, port=0)\n"
        "print(before, 'aiosmtpd' in sys.modules, 'gateway.mail.rules' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "ticketgate.toml"), str(tmp_path / "tg.db")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True"]


def test_a_child_process_of_run_imports_no_edge() -> None:
    """A runner or delivery child of `run` (spawned: it imports the `ticketgate` script's
    `gateway.cli` and `gateway.runners.process` afresh) imports neither the SMTP edge, IMAP,
    APScheduler, Slack nor the templates until its loop is built."""
    assert _adapter_libraries_after("gateway.cli, gateway.runners.process") == ""
