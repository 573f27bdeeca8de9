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

from sqlalchemy import func, select

from gateway.mail.smtp_server import IntakeHandler
from gateway.mail.translate import TranslateContext
from gateway.runner import make_handler, make_intake
from gateway.service.commands import IntakeResult, ReceiveMail
from gateway.service.group_commit import GroupCommitIntake
from gateway.service.intake import MailIntake
from gateway.service.tickets import Unit
from store import models as m
from tests.conftest import Env, Gateway, crlf, intake_of_class, mail, run_cli, serving

REQ = "frank@acme.example"
IT = "it@acme.example"


class FailsOnPoison(MailIntake):
    """Fault injection: a mail whose subject says POISON raises after its first writes."""

    def apply(self, u: Unit, cmd: ReceiveMail) -> IntakeResult:
        result = super().apply(u, cmd)
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


def test_mail_that_breaks_the_service_is_quarantined(env: Env) -> None:
    app = env.app
    intake = intake_of_class(env, FailsOnPoison)
    assert isinstance(intake, FailsOnPoison)
    base = make_handler(app, make_intake(app))
    handler = IntakeHandler(
        GroupCommitIntake(intake), ctx=base.ctx, limits=base.limits, parse_processes=2
    )
    base.close()
    with serving(env, handler) as gw:
        poison = mail(REQ, [IT], "POISON pill", "this mail makes the service raise")
        assert isinstance(poison, EmailMessage)
        code, text = _send(gw, poison)
        assert code == 250 and "quarantined" in text, text
        # Nothing of what the failed attempt wrote is left: no ticket, no message, no mail out.
        assert (_count(env, m.Ticket), _count(env, m.Message), _count(env, m.OutboxEvent)) == (
            0,
            0,
            0,
        )
        [q] = _quarantine(env)
        assert q["sender"] == REQ
        assert "processing error (ValueError)" in q["reason"]
        shown = run_cli(env.env, "quarantine", "show", str(q["id"]), "--json")
        assert shown.returncode == 0, shown.stderr
        view = json.loads(shown.stdout)
        assert view["detail"]["kind"] == "processing_error"
        assert view["detail"]["stage"] == "apply"
        assert "injected: the service cannot handle this mail" in view["detail"]["error"]
        assert "this mail makes the service raise" in view["raw"]
        with app.sessions() as s:
            rec = s.get(m.InboundMail, q["id"])
            assert rec is not None and rec.raw_sha256
            blob = s.get(m.Blob, rec.raw_sha256)
            assert blob is not None and hashlib.sha256(blob.data).hexdigest() == rec.raw_sha256

        # The MTA delivers it again (it never saw our 250, say): applied once, still one record.
        code, text = _send(gw, poison)
        assert code == 250 and "duplicate" in text, text
        assert _count(env, m.InboundMail) == 1

        # The gateway keeps serving.
        code, _ = gw.send(mail(REQ, [IT], "Printer", "jammed"), REQ, [IT])
        assert code == 250
        assert [t["subject"] for t in gw.tickets()] == ["Printer"]


def test_mail_that_breaks_the_parser_is_quarantined(env: Env, tmp_path: Path) -> None:
    """The parser raising (here in a parser process, through pickling, like any real failure
    would): 250, the raw bytes kept, stage `parse`. The fault: a translation context the
    translator cannot use."""
    app = env.app
    base = make_handler(app, make_intake(app))
    broken = TranslateContext(own_domains=None, loop_token=base.ctx.loop_token)  # type: ignore[arg-type]
    handler = IntakeHandler(base.intake, ctx=broken, limits=base.limits, parse_processes=1)
    base.pool.shutdown()  # its intake now belongs to `handler`, which closes it
    with serving(env, handler) as gw:
        msg = mail(REQ, [IT], "Unparseable", "the parser gives up on this one")
        assert isinstance(msg, EmailMessage)
        code, text = _send(gw, msg)
        assert code == 250 and "quarantined" in text, text
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
