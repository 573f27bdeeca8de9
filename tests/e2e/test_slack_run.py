"""`ticketgate run` with `slack.enabled`: the Slack app answers signed requests at
/slack/events on `slack.port`, posts through the outbox to the configured Web API, and
counts on /metrics; a bad signature is 401 and leaves no secret in the log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, poll_until, run_cli
from tests.fake_slack import BOT_TOKEN, SIGNING_SECRET, SlackClient, fake_slack


class _Now:
    @staticmethod
    def now() -> object:
        from datetime import UTC, datetime

        return datetime.now(UTC)


@pytest.mark.parametrize(
    "delivery_in_child", [False, True], ids=["delivery-thread", "delivery-child"]
)
def test_run_serves_slack(tmp_path: Path, delivery_in_child: bool) -> None:
    with fake_slack() as fake:
        fake.add_user("U0KARL", "karl@acme.example")
        slack_port, http_port = free_port(), free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "TICKETGATE_CONFIG": str(tmp_path / "ticketgate.toml"),
            "TICKETGATE__DATABASE__URL": f"sqlite:///{tmp_path}/tg.db",
            "TICKETGATE__SMTP__PORT": str(free_port()),
            "TICKETGATE__HTTP__PORT": str(http_port),
            "TICKETGATE__SLACK__ENABLED": "true",
            "TICKETGATE__SLACK__PORT": str(slack_port),
            "TICKETGATE__SLACK__API_URL": fake.url,
            "TICKETGATE__SLACK__BOT_TOKEN": BOT_TOKEN,
            "TICKETGATE__SLACK__SIGNING_SECRET": SIGNING_SECRET,
            "TICKETGATE__SCHEDULER__ENABLED": "false",
            "TICKETGATE__OUTBOUND__POLL_SECONDS": "0.2",
            "TICKETGATE__OUTBOUND__PROCESSES": "true" if delivery_in_child else "false",
        }
        init = run_cli(env, "init", "--demo", cwd=tmp_path)
        assert init.returncode == 0, init.stderr
        log = tmp_path / "run.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run"],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            client = SlackClient(f"http://127.0.0.1:{slack_port}/slack/events", _Now())

            def up() -> bool:
                assert proc.poll() is None, log.read_text()[-2000:]
                try:
                    return client.command("help", user="U0KARL").status == 200
                except OSError:
                    return False

            poll_until(up, timeout=60, interval=0.2, what="the Slack endpoint")
            forged = client.post(
                b"command=%2Fticket&text=new",
                "application/x-www-form-urlencoded",
                signature="v0=" + "0" * 64,
            )
            assert forged.status == 401
            assert client.command("new IT: Beamer in room 2", user="U0KARL").status == 200
            poll_until(
                lambda: any(p["channel"] == "C0ITSUPPORT" for p in fake.of("chat.postMessage")),
                timeout=30,
                interval=0.1,
                what="the channel post",
            )
            post = next(p for p in fake.of("chat.postMessage") if p["channel"] == "C0ITSUPPORT")
            assert "TKT-1" in post["text"] and "Beamer in room 2" in post["text"]

            def metrics() -> str:
                """/metrics, or "" while the status endpoint is not open yet (`run` opens it
                last)."""
                url = f"http://127.0.0.1:{http_port}/metrics"
                try:
                    with urllib.request.urlopen(url, timeout=10) as r:
                        return str(r.read().decode())
                except ConnectionRefusedError:
                    return ""

            def value(text: str, name: str) -> int:
                found = [ln.split()[-1] for ln in text.splitlines() if ln.startswith(name + " ")]
                return int(found[0]) if found else 0

            def posts_counted(text: str) -> bool:
                """A Slack row sent, and the poster's own count says as many (also when the
                delivery worker is a child process)."""
                rows = value(text, 'ticketgate_outbox_channel{channel="slack",state="sent"}')
                return (
                    rows >= 1 and value(text, 'ticketgate_slack_posts_total{result="sent"}') == rows
                )

            poll_until(
                lambda: posts_counted(metrics()),
                timeout=30,
                interval=0.2,
                what="sent Slack rows, counted on /metrics",
            )
            text = metrics()
            assert 'ticketgate_slack_requests_total{kind="command"} 2' in text
            assert 'ticketgate_slack_refused_total{reason="signature"} 1' in text
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        logged = log.read_text()
        assert "Slack: HTTP on 127.0.0.1" in logged
        for secret in (BOT_TOKEN, SIGNING_SECRET, "Beamer"):
            assert secret not in logged
