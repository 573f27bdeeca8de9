"""Group commit: one mail failing inside a batch leaves no trace in what the others see."""

from __future__ import annotations

from concurrent.futures import Future
from email.message import EmailMessage

from gateway.runner import make_handler
from gateway.service.commands import IntakeResult, ReceiveMail
from gateway.service.group_commit import GroupCommitIntake
from gateway.service.intake import MailIntake
from gateway.service.tickets import Unit
from gateway.service.views import Views
from tests.conftest import Env, intake_of_class, mail

REQ = "frank@acme.example"
IT = "it@acme.example"
GRACE = "grace@acme.example"  # not in IT, not on the ticket until frank's #cc applies


class FailOnceAfterApplying(MailIntake):
    """Fault injection: the mail with this Message-ID is applied, then its processing fails
    (as a constraint violation or a bug after the writes would), once."""

    fail_message_id: str | None = None

    def apply(self, u: Unit, cmd: ReceiveMail) -> IntakeResult:
        result = super().apply(u, cmd)
        if cmd.message_id is not None and cmd.message_id == self.fail_message_id:
            self.fail_message_id = None
            raise RuntimeError("injected failure after the writes")
        return result


def _apply(gc: GroupCommitIntake, cmds: list[ReceiveMail]) -> list[IntakeResult]:
    batch: list[tuple[ReceiveMail, Future[IntakeResult]]] = [(c, Future()) for c in cmds]
    gc._apply(batch)
    return [f.result(timeout=30) for _, f in batch]


def test_rolled_back_mail_leaves_no_cached_copy(env: Env) -> None:
    """Mail A (frank: `#cc grace` on his ticket) fails after its writes and is rolled back to its
    SAVEPOINT; mail B (grace answering that ticket) in the same batch must not see the copy A
    had added: she is no participant yet, so the hijack rule opens a new ticket for her. A is
    then retried alone and applies."""
    app = env.app
    intake = intake_of_class(env, FailOnceAfterApplying)
    assert isinstance(intake, FailOnceAfterApplying)
    handler = make_handler(app, intake)
    handler.close()  # only its parse limits and context are used here
    gc = GroupCommitIntake(intake)
    try:

        def cmd(msg: EmailMessage, sender: str, rcpts: list[str]) -> ReceiveMail:
            from gateway.mail.translate import parse_and_translate

            return parse_and_translate(msg.as_bytes(), sender, rcpts, handler.limits, handler.ctx)

        first = mail(REQ, [IT], "Printer jammed", "Floor 3 printer jams.")
        assert isinstance(first, EmailMessage)
        [r0] = _apply(gc, [cmd(first, REQ, [IT])])
        assert r0.outcome == "ticket" and r0.ticket_ref is not None
        ref = r0.ticket_ref

        a = mail(
            REQ,
            [IT],
            f"Re: [{ref}] Printer jammed",
            f"#cc {GRACE}\n\nGrace knows this printer.",
            headers={"In-Reply-To": str(first["Message-ID"])},
        )
        b = mail(
            GRACE,
            [IT],
            f"Re: [{ref}] Printer jammed",
            "I can look at it tomorrow.",
            headers={"In-Reply-To": str(first["Message-ID"])},
        )
        assert isinstance(a, EmailMessage) and isinstance(b, EmailMessage)
        intake.fail_message_id = str(a["Message-ID"]).strip("<>")
        ra, rb = _apply(gc, [cmd(a, REQ, [IT]), cmd(b, GRACE, [IT])])
    finally:
        gc.close()

    assert intake.fail_message_id is None, "the injected failure did not happen"
    assert rb.outcome == "ticket" and rb.ticket_ref != ref, rb
    assert ra.outcome == "message" and ra.ticket_ref == ref, ra
    with app.sessions() as s:
        v = Views(s)
        views = {t["ref"]: t for t in (v.ticket(t) for t in v.tickets())}
    assert views[ref]["copies"]["rc"] == [GRACE]
    assert [m["body"] for m in views[ref]["messages"]][-1] == "Grace knows this printer."
    assert [m["body"] for m in views[rb.ticket_ref]["messages"]] == ["I can look at it tomorrow."]
