"""Flood guards (issue 12): a per-minute burst limit per sender on intake, and a cap of notices
per (recipient, sender) and hour at fan-out; acknowledgements keep their own daily cap."""

from __future__ import annotations

import json
from collections import Counter
from email.message import EmailMessage
from email.utils import make_msgid

from tests.conftest import Gateway, mail, run_cli

REQ = "frank@acme.example"  # HR
IT = "it@acme.example"


def rcpt(x: EmailMessage) -> str:
    return str(x.get("Delivered-To", "")).strip().lower()


def test_burst_from_one_sender_is_quarantined_after_the_limit(gateway: Gateway) -> None:
    """30 mails within a minute: the first 20 (`smtp.sender_burst_per_minute`) become tickets,
    the other 10 are quarantined with the rule and listed by `quarantine list`; once the minute
    `quarantine release ID` brings one back and it becomes a ticket."""
    env = gateway.env
    assert env.app.settings.smtp.sender_burst_per_minute == 20
    ids = []
    for i in range(30):
        mid = make_msgid(domain="client.example")
        ids.append(mid)
        msg = mail(REQ, [IT], f"Printer {i}", "It jams.", msgid=mid)
        assert gateway.send(msg, REQ, [IT])[0] == 250
        env.clock.advance(seconds=1)
    outcomes = [gateway.explain(mid) for mid in ids]
    assert [o["outcome"] for o in outcomes] == ["ticket"] * 20 + ["quarantined"] * 10
    rule = "quarantined: rate limit (20 mails a minute from one sender)"
    assert {o["rule"] for o in outcomes[20:]} == {rule}
    assert len(gateway.tickets()) == 20

    listed = run_cli(env.env, "quarantine", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    held = json.loads(listed.stdout)
    assert sorted(q["message_id"] for q in held) == sorted(m.strip("<>") for m in ids[20:])
    assert {q["reason"] for q in held} == {rule.removeprefix("quarantined: ")}

    # Released by an operator, a mail is processed, even while the burst is still within the
    # minute: the release is the operator's decision (the flood guards let it pass).
    first = next(q for q in held if q["message_id"] == ids[20].strip("<>"))
    assert run_cli(env.env, "quarantine", "release", str(first["id"])).returncode == 0
    gateway.process()
    back = gateway.explain(ids[20])
    assert back["outcome"] == "ticket" and back["ticket"] is not None
    assert len(gateway.tickets()) == 21


def test_notices_per_sender_and_hour_are_capped(gateway: Gateway) -> None:
    """15 tickets from one sender within an hour: every IT member gets at most 10
    (`mail.notices_per_sender_hour`) new-ticket notices from that sender, the others are kept
    as suppressed outbox rows with the reason; the requester gets all 15 acknowledgements
    (under the daily cap of automatic mail). An hour later notices flow again."""
    env = gateway.env
    assert env.app.settings.mail.notices_per_sender_hour == 10
    for i in range(15):
        assert gateway.send(mail(REQ, [IT], f"Screen {i}", "Flickers."), REQ, [IT])[0] == 250
        env.clock.advance(minutes=3)
    assert len(gateway.tickets()) == 15
    out = gateway.deliver()
    per = Counter(rcpt(x) for x in out)
    acks = [x for x in out if rcpt(x) == REQ]
    assert len(acks) == 15
    assert all(str(x["Auto-Submitted"]) == "auto-generated" for x in acks)
    members = set(per) - {REQ}
    assert len(members) >= 3  # the IT department's active members
    assert all(per[a] == 10 for a in members), per

    # What was not sent is on record: one suppressed row per member and ticket over the cap.
    rows = gateway.worker.outbox.rows("suppressed")  # type: ignore[attr-defined]
    assert Counter(r["recipient"] for r in rows) == {a: 5 for a in members}
    assert {r["kind"] for r in rows} == {"new_ticket"}
    assert {r["last_error"] for r in rows} == {f"not sent: over 10 notices an hour from {REQ}"}
    newest = {t["ref"] for t in gateway.tickets()[-5:]}
    assert {r["ticket"] for r in rows} == newest
    # The tickets themselves are all there, in the department's queue.
    assert all(t["to"]["department"] == IT for t in gateway.tickets())

    # Another sender is not held back by Frank's flood.
    other = "grace@acme.example"
    assert gateway.send(mail(other, [IT], "Keyboard", "Sticky keys."), other, [IT])[0] == 250
    fresh = gateway.deliver()[len(out) :]
    assert members <= {rcpt(x) for x in fresh}

    # An hour after the flood, Frank's next ticket is announced again.
    env.clock.advance(hours=1)
    assert gateway.send(mail(REQ, [IT], "Mouse", "Dead."), REQ, [IT])[0] == 250
    last = gateway.deliver()[len(out) + len(fresh) :]
    assert members <= {rcpt(x) for x in last}


def test_suppressed_notice_can_be_sent_by_outbox_retry(gateway: Gateway) -> None:
    """`outbox retry ID` of a suppressed notice sends it after all (the service call the CLI
    makes, in-process: the CLI runs on the real clock, the test on its own)."""
    for i in range(11):
        assert gateway.send(mail(REQ, [IT], f"Chair {i}", "Wobbles."), REQ, [IT])[0] == 250
    before = gateway.deliver()
    rows = gateway.worker.outbox.rows("suppressed")  # type: ignore[attr-defined]
    assert rows and all(r["kind"] == "new_ticket" for r in rows)
    one = rows[0]
    assert gateway.worker.outbox.retry([one["id"]]) == 1  # type: ignore[attr-defined]
    after = gateway.deliver()[len(before) :]
    assert [rcpt(x) for x in after] == [one["recipient"]]
    assert "Chair 10" in str(after[0]["Subject"])
