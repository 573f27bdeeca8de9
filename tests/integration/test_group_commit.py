"""Group commit: one mail failing inside a batch leaves no trace in what the others see; the
time budget bounds a batch."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from email.message import EmailMessage
from pathlib import Path

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
    (as a constraint violation or a bug after the writes would) while it is written in a
    batch: in the batch written together, and again in its SAVEPOINT; alone it succeeds."""

    fail_message_id: str | None = None
    failures_left = 2

    def apply(self, u: Unit, cmd: ReceiveMail) -> IntakeResult:
        result = super().apply(u, cmd)
        if cmd.message_id is not None and cmd.message_id == self.fail_message_id:
            self.failures_left -= 1
            if self.failures_left == 0:
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


class RecordingFailOnce(FailOnceAfterApplying):
    """`FailOnceAfterApplying` that also records the Message-ID of every mail it applies."""

    applied: list[str | None]

    def apply(self, u: Unit, cmd: ReceiveMail) -> IntakeResult:
        self.applied.append(cmd.message_id)
        return super().apply(u, cmd)


def test_ticket_raised_in_a_rolled_back_savepoint_leaves_the_session(env: Env) -> None:
    """Mail A raises a ticket and fails after its writes (together, then in its SAVEPOINT);
    mail B, another new ticket of the same batch, is written in its SAVEPOINT right after A's
    rollback. A's ticket row is gone and so must its object be (tickets are inserted with
    Core and attached; on SQLite B's ticket takes the id A's had): B is written in its
    SAVEPOINT, not retried alone, and A then gets its ticket alone."""
    app = env.app
    intake = intake_of_class(env, RecordingFailOnce)
    assert isinstance(intake, RecordingFailOnce)
    intake.applied = []
    handler = make_handler(app, intake)
    handler.close()  # only its parse limits and context are used here
    gc = GroupCommitIntake(intake)
    try:
        from gateway.mail.translate import parse_and_translate

        a = mail(REQ, [IT], "Keyboard broken", "The space bar is stuck.")
        b = mail(REQ, [IT], "Mouse broken", "It does not move.")
        a_id, b_id = (str(x["Message-ID"]).strip("<>") for x in (a, b))
        intake.fail_message_id = a_id
        ra, rb = _apply(
            gc,
            [
                parse_and_translate(x.as_bytes(), REQ, [IT], handler.limits, handler.ctx)
                for x in (a, b)
            ],
        )
    finally:
        gc.close()

    assert intake.fail_message_id is None, "the injected failure did not happen"
    # the batch stops at A's failure: B is applied once, in its SAVEPOINT (not retried alone)
    assert intake.applied.count(b_id) == 1, intake.applied
    assert intake.applied.count(a_id) == 3, intake.applied  # together, SAVEPOINT, alone
    assert ra.outcome == rb.outcome == "ticket" and ra.ticket_ref != rb.ticket_ref
    with app.sessions() as s:
        v = Views(s)
        subjects = {t["ref"]: t["subject"] for t in (v.ticket(t) for t in v.tickets())}
    assert subjects == {ra.ticket_ref: "Keyboard broken", rb.ticket_ref: "Mouse broken"}


class HeldFirst(MailIntake):
    """Records which unit (transaction) applied each mail; the first mail waits for a signal,
    so that the test can queue the others meanwhile."""

    release: threading.Event
    units: list[Unit]  # held, so that no two units share an id()

    def apply(self, u: Unit, cmd: ReceiveMail) -> IntakeResult:
        if not self.units:
            assert self.release.wait(30)
        self.units.append(u)
        return super().apply(u, cmd)


def _batch_sizes(env: Env, max_batch_ms: float) -> list[int]:
    """Eight mails from eight senders, seven queued while the first is being written: the
    sizes of the transactions that wrote them, in order."""
    app = env.app
    intake = intake_of_class(env, HeldFirst)
    assert isinstance(intake, HeldFirst)
    intake.release, intake.units = threading.Event(), []
    handler = make_handler(app, intake)
    handler.close()  # only its parse limits and context are used here
    from gateway.mail.translate import parse_and_translate

    senders = [REQ, GRACE, "henry@acme.example", "irene@acme.example"] * 2
    cmds = []
    for i, sender in enumerate(senders):
        msg = mail(sender, [IT], f"Batch mail {i}", f"Body {i}.")
        assert isinstance(msg, EmailMessage)
        cmds.append(parse_and_translate(msg.as_bytes(), sender, [IT], handler.limits, handler.ctx))
    gc = GroupCommitIntake(intake, max_batch_ms=max_batch_ms)
    try:
        futures = [gc.submit(cmds[0])]
        deadline = time.monotonic() + 10
        while not gc._q.empty():  # the writer took the first mail and waits in it
            assert time.monotonic() < deadline
            time.sleep(0.001)
        futures += [gc.submit(c) for c in cmds[1:]]
        intake.release.set()
        results = [f.result(timeout=30) for f in futures]
    finally:
        gc.close()
    assert [r.outcome for r in results] == ["ticket"] * 8
    sizes: dict[int, int] = {}
    for unit in intake.units:
        sizes[id(unit)] = sizes.get(id(unit), 0) + 1
    return list(sizes.values())


def test_batch_takes_what_waits_within_its_time_budget(env: Env) -> None:
    """A generous budget: the seven mails that queued while the first was written share one
    transaction (one fsync)."""
    assert _batch_sizes(env, max_batch_ms=60_000) == [1, 7]


def test_batch_budget_bounds_the_batch(env: Env) -> None:
    """A budget below one mail's writing time: every mail is its own transaction, so no session
    waits for others' mails (and sessions do not come back in lockstep)."""
    assert _batch_sizes(env, max_batch_ms=0.001) == [1] * 8


def test_batch_without_failures_is_written_without_savepoints(env: Env) -> None:
    """Mails that all apply are written in one transaction with no SAVEPOINT statements (they
    are only for setting aside a failing mail), and each is stored once."""
    from sqlalchemy import event

    from gateway.mail.translate import parse_and_translate

    app = env.app
    intake = intake_of_class(env, MailIntake)
    assert isinstance(intake, MailIntake)
    handler = make_handler(app, intake)
    handler.close()
    cmds = []
    for i, sender in enumerate([REQ, GRACE, "henry@acme.example"]):
        msg = mail(sender, [IT], f"Together {i}", f"Body {i}.")
        assert isinstance(msg, EmailMessage)
        cmds.append(parse_and_translate(msg.as_bytes(), sender, [IT], handler.limits, handler.ctx))
    statements: list[str] = []

    def _seen(*args: object) -> None:
        statements.append(str(args[2]).split()[0].upper())

    gc = GroupCommitIntake(intake)
    event.listen(app.engine, "before_cursor_execute", _seen)
    try:
        results = _apply(gc, cmds)
    finally:
        event.remove(app.engine, "before_cursor_execute", _seen)
        gc.close()
    assert [r.outcome for r in results] == ["ticket"] * 3
    assert "SAVEPOINT" not in statements and "RELEASE" not in statements
    with app.sessions() as s:
        subjects = [t.subject for t in Views(s).tickets()]
    assert sorted(subjects) == ["Together 0", "Together 1", "Together 2"]


def test_writer_sees_an_org_import_at_its_next_batch(env: Env, tmp_path: Path) -> None:
    """The writer keeps organization rows from batch to batch; `org import` deactivating a
    sender bumps the directory version, and the sender's next mail is refused."""
    from gateway.demo import DEMO_EMPLOYEES_CSV, DEMO_ORG_TOML
    from gateway.mail.translate import parse_and_translate
    from gateway.service.org_import import import_org

    app = env.app
    intake = intake_of_class(env, MailIntake)
    assert isinstance(intake, MailIntake)
    handler = make_handler(app, intake)
    handler.close()
    sender = "irene@acme.example"

    def cmd(subject: str) -> ReceiveMail:
        msg = mail(sender, [IT], subject, "Body.")
        assert isinstance(msg, EmailMessage)
        return parse_and_translate(msg.as_bytes(), sender, [IT], handler.limits, handler.ctx)

    gc = GroupCommitIntake(intake)
    try:
        [before] = _apply(gc, [cmd("Before the import")])
        folder = tmp_path / "org"
        folder.mkdir()
        csv = "email,name,branch,department,role,active\n" + "".join(
            line + (",false\n" if line.startswith(sender) else ",\n")
            for line in DEMO_EMPLOYEES_CSV.strip().splitlines()[1:]
        )
        (folder / "employees.csv").write_text(csv, encoding="utf-8")
        (folder / "org.toml").write_text(DEMO_ORG_TOML, encoding="utf-8")
        with app.sessions() as s, s.begin():
            report = import_org(s, folder / "org.toml", mail_domain=app.settings.mail.domain)
        assert report.updated == 1
        [after] = _apply(gc, [cmd("After the import")])
    finally:
        gc.close()
    assert before.outcome == "ticket"
    assert (after.outcome, after.code) == ("refused", 550), after
    assert "deactivated" in after.text


def test_a_session_that_gave_up_does_not_stop_the_writer(env: Env) -> None:
    """A client hanging up right after its "." cancels its wait (aiosmtpd drops the session):
    the writer still writes that mail, answers the others, and goes on with the next batch."""
    from gateway.mail.translate import parse_and_translate

    app = env.app
    intake = intake_of_class(env, MailIntake)
    assert isinstance(intake, MailIntake)
    handler = make_handler(app, intake)
    handler.close()

    def cmd(sender: str, subject: str) -> ReceiveMail:
        msg = mail(sender, [IT], subject, "Body.")
        assert isinstance(msg, EmailMessage)
        return parse_and_translate(msg.as_bytes(), sender, [IT], handler.limits, handler.ctx)

    gc = GroupCommitIntake(intake)
    try:
        gave_up: Future[IntakeResult] = Future()
        assert gave_up.cancel()
        kept: Future[IntakeResult] = Future()
        gc._apply([(cmd(REQ, "Hung up after the dot"), gave_up), (cmd(GRACE, "Waited"), kept)])
        assert kept.result(timeout=30).outcome == "ticket"
        later = gc.submit(cmd("henry@acme.example", "Next batch")).result(timeout=30)
        assert later.outcome == "ticket"
    finally:
        gc.close()
    with app.sessions() as s:
        subjects = sorted(t.subject for t in Views(s).tickets())
    assert subjects == ["Hung up after the dot", "Next batch", "Waited"]
