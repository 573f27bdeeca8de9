"""Poison mail: a message whose processing raises is kept in quarantine and accepted, not lost.

A 451 for a mail that fails the same way every time would have the MTA retry it for days and
then bounce it; nobody would ever see it. The failures are injected (nothing known makes our
parser or service raise: such input would be fixed), over real SMTP, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import smtplib
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from gateway.bootstrap import make_intake, make_runner
from gateway.mail.translate import TranslateContext
from gateway.runners.intake import IntakeRunner
from gateway.service.commands import IntakeResult, ReceiveMail
from gateway.service.intake import MailIntake
from gateway.service.tickets import Unit
from store import models as m
from tests.conftest import Env, Gateway, crlf, intake_of_class, mail, run_cli, serving

REQ = "frank@acme.example"
IT = "it@acme.example"


class FailsOnPoison(MailIntake):
    """Fault injection: a mail whose subject says POISON raises after its first writes."""

    def apply(self, u: Unit, cmd: ReceiveMail, record_id: int, **kw: Any) -> IntakeResult:
        result = super().apply(u, cmd, record_id, **kw)
        if "POISON" in cmd.subject:
            raise ValueError("injected: the service cannot handle this mail")
        return result


def _count(env: Env, model: type) -> int:
    with env.app.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _quarantine(env: Env) -> list[dict]:  # type: ignore[type-arg]
    r = run_cli(env.env, "quarantine", "list", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def _send(gw: Gateway, msg: EmailMessage) -> tuple[int, str]:
    """MAIL, RCPT, DATA; the answer to DATA with its text (250s included)."""
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo()
        assert client.mail(REQ)[0] == 250
        assert client.rcpt(IT)[0] == 250
        code, text = client.data(crlf(msg.as_bytes(policy=policy.SMTP)))
    return code, text.decode()


def _runner(env: Env, intake: MailIntake, ctx: TranslateContext | None = None) -> IntakeRunner:
    plain = make_runner(env.app)
    return IntakeRunner(intake, ctx=ctx or plain.ctx, limits=plain.limits)


def test_mail_that_breaks_the_service_is_retried_then_quarantined(env: Env) -> None:
    """A mail whose processing raises is tried `intake.max_attempts` times (3), each attempt
    rolled back, then kept in quarantine with the error; the runner goes on with the others."""
    app = env.app
    intake = intake_of_class(env, FailsOnPoison)
    assert isinstance(intake, FailsOnPoison)
    with serving(env, runner=_runner(env, intake)) as gw:
        poison = mail(REQ, [IT], "POISON pill", "this mail makes the service raise")
        assert isinstance(poison, EmailMessage)
        code, text = _send(gw, poison)
        assert code == 250 and "queued" in text, text
        # A good mail queued behind it is not held up by it.
        assert gw.send(mail(REQ, [IT], "Printer", "jammed"), REQ, [IT], process=False)[0] == 250
        assert gw.process() == 1  # the printer mail; the poison mail's first attempt failed
        assert gw.explain(str(poison["Message-ID"]))["outcome"] == "queued"
        gw.process()
        gw.process()
        # Nothing of what the failed attempts wrote is left: no ticket, no message, no mail out
        # but the printer ticket's.
        assert [t["subject"] for t in gw.tickets()] == ["Printer"]
        assert _count(env, m.Message) == 1
        [q] = _quarantine(env)
        assert q["sender"] == REQ
        assert "processing error (ValueError)" in q["reason"]
        shown = run_cli(env.env, "quarantine", "show", str(q["id"]), "--json")
        assert shown.returncode == 0, shown.stderr
        view = json.loads(shown.stdout)
        assert view["detail"]["kind"] == "processing_error"
        assert view["detail"]["stage"] == "apply"
        assert view["detail"]["attempts"] == 3
        assert "injected: the service cannot handle this mail" in view["detail"]["error"]
        assert "this mail makes the service raise" in view["raw"]
        with app.sessions() as s:
            rec = s.get(m.InboundMail, q["id"])
            assert rec is not None and rec.raw_sha256
            blob = s.get(m.Blob, rec.raw_sha256)
            assert blob is not None and hashlib.sha256(blob.data).hexdigest() == rec.raw_sha256

        # The MTA delivers it again (it never saw our 250, say): still one record.
        code, text = _send(gw, poison)
        assert code == 250 and "duplicate" in text, text
        assert _count(env, m.InboundMail) == 2


def test_quarantine_release_puts_the_mail_back_into_the_queue(env: Env) -> None:
    """After the fault is fixed, `quarantine release ID` queues the mail again and the runner
    makes the ticket it should have made; `mail explain` says `queued` meanwhile."""
    intake = intake_of_class(env, FailsOnPoison)
    assert isinstance(intake, FailsOnPoison)
    with serving(env, runner=_runner(env, intake)) as gw:
        poison = mail(REQ, [IT], "POISON but fixable", "raises until the fix")
        assert gw.send(poison, REQ, [IT])[0] == 250
        gw.process()
        gw.process()
        [q] = _quarantine(env)
        r = run_cli(env.env, "quarantine", "release", str(q["id"]))
        assert r.returncode == 0, r.stderr
        assert "queued again" in r.stdout
        explained = run_cli(env.env, "mail", "explain", str(poison["Message-ID"]), "--json")  # type: ignore[index]
        assert json.loads(explained.stdout)["outcome"] == "queued"
        assert _quarantine(env) == []
        # The fix: the plain service.
        fixed = make_runner(env.app)
        assert fixed.run_until_idle() == 1
        [t] = gw.tickets()
        assert t["subject"] == "POISON but fixable"
        again = run_cli(env.env, "quarantine", "release", str(q["id"]))
        assert again.returncode == 1 and "no quarantined mail" in again.stderr


def test_mail_that_breaks_the_parser_is_quarantined(env: Env, tmp_path: Path) -> None:
    """The parser raising (the fault: a translation context the translator cannot use): 250
    at the edge, then quarantined at once with stage `parse` and the raw bytes kept."""
    plain = make_runner(env.app)
    broken = TranslateContext(own_domains=None, loop_token=plain.ctx.loop_token)  # type: ignore[arg-type]
    with serving(env, runner=_runner(env, make_intake(env.app), broken)) as gw:
        msg = mail(REQ, [IT], "Unparseable", "the parser gives up on this one")
        assert isinstance(msg, EmailMessage)
        code, text = _send(gw, msg)
        assert code == 250, text
        assert gw.process() == 1
        assert _count(env, m.Ticket) == 0
        [q] = _quarantine(env)
        view = json.loads(run_cli(env.env, "quarantine", "show", str(q["id"]), "--json").stdout)
        assert view["detail"]["kind"] == "processing_error"
        assert view["detail"]["stage"] == "parse"
        assert view["detail"]["envelope_rcpts"] == [IT]
        assert "the parser gives up on this one" in view["raw"]
        # A re-delivery of the same bytes is the same quarantined mail.
        code, text = _send(gw, msg)
        assert code == 250 and "duplicate" in text, text
        assert _count(env, m.InboundMail) == 1
