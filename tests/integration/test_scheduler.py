"""The scheduler (SPEC §4) on each backend, time driven by `tick(at)`: SLA deadlines in each
branch's business hours, pauses, re-routes, the escalation chain, reminders and auto-close."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from gateway.bootstrap import make_scheduler
from gateway.service.commands import Act, RaiseTicket
from gateway.service.scheduler import Scheduler
from gateway.service.tickets import parse_ref
from store import models as m
from tests.conftest import FIXTURES, Database, Env, demo_env, make_env

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)  # type: ignore[misc]


@pytest.fixture
def org(database: Database, tmp_path: Path) -> Iterator[Env]:
    """Initech (tests/fixtures/orgs/sla.toml) on a migrated database, with a test clock."""
    e = make_env(database, tmp_path / "install")
    try:
        e.import_org(FIXTURES / "orgs" / "sla.toml")
        yield e
    finally:
        e.app.close()


def raise_at(
    e: Env, at: datetime, to: str, *, sender: str = "req@initech.example", **kw: str
) -> str:
    e.clock.at = at.astimezone(UTC)
    return str(e.service.raise_ticket(RaiseTicket(sender, to, "Printer on fire", "help", **kw)))


def act(
    e: Env, at: datetime, ref: str, actor: str, action: str, *args: str, body: str = ""
) -> None:
    e.clock.at = at.astimezone(UTC)
    e.service.act(Act(ref, actor, action, args=args, remark=" ".join(args) or "", body=body))


def ticket(e: Env, ref: str) -> m.Ticket:
    with e.app.sessions() as s:
        t = s.get(m.Ticket, parse_ref(ref))
        assert t is not None
        return t


def history(e: Env, ref: str) -> list[tuple[str, str, str]]:
    with e.app.sessions() as s:
        rows = s.scalars(
            select(m.StatusHistory)
            .where(m.StatusHistory.ticket_id == parse_ref(ref))
            .order_by(m.StatusHistory.id)
        )
        return [(h.action, h.status, h.actor_label) for h in rows]


def events(e: Env, ref: str, kind: str) -> list[m.OutboxEvent]:
    with e.app.sessions() as s:
        return list(
            s.scalars(
                select(m.OutboxEvent)
                .where(m.OutboxEvent.ticket_id == parse_ref(ref), m.OutboxEvent.kind == kind)
                .order_by(m.OutboxEvent.id)
            )
        )


def emp_id(e: Env, email: str) -> int:
    with e.app.sessions() as s:
        found = s.scalar(select(m.Employee.id).where(m.Employee.email == email))
        assert found is not None
        return found


def tick(e: Env, at: datetime) -> Scheduler:
    sched = make_scheduler(e.app)
    sched.tick(at.astimezone(UTC))
    return sched


def test_friday_evening_ticket_breaches_monday_noon(org: Env) -> None:
    """Raised Friday 17:00 (Mon–Fri 09–18, 4 business hours): nothing until Monday 12:00
    local, then the breach: ESCALATED, level 1, a notice to the assignee side."""
    ref = raise_at(org, berlin(2026, 3, 6, 17, 0), "it@initech.example")
    assert ticket(org, ref).first_response_due == berlin(2026, 3, 9, 12, 0)
    report = make_scheduler(org.app).tick(berlin(2026, 3, 9, 11, 59).astimezone(UTC))
    assert report.total == 0
    assert ticket(org, ref).status == "RAISED"
    report = make_scheduler(org.app).tick(berlin(2026, 3, 9, 12, 0).astimezone(UTC))
    assert report.counts["breach_first_response"] == 1
    assert report.counts["escalation"] == 1
    t = ticket(org, ref)
    assert (t.status, t.escalation_level, t.first_response_breached) == ("ESCALATED", 1, True)
    assert [h[0] for h in history(org, ref)] == ["raise", "sla_breach", "escalate"]
    (ev,) = events(org, ref, "escalation")
    # step 1 tells the owner; without one, the assignee side (IT's members)
    assert sorted(ev.payload["only"]) == sorted(
        [emp_id(org, "tom@initech.example"), emp_id(org, "max@initech.example")]
    )


def test_a_holiday_monday_moves_the_breach_to_tuesday(org: Env) -> None:
    """Munich's Monday 9 March is a holiday: Friday 17:00 + 4h is Tuesday 12:00."""
    ref = raise_at(
        org, berlin(2026, 3, 6, 17, 0), "facilities@initech.example", sender="tom@initech.example"
    )
    assert ticket(org, ref).first_response_due == berlin(2026, 3, 10, 12, 0)
    assert tick(org, berlin(2026, 3, 10, 11, 59)).totals.total() == 0
    tick(org, berlin(2026, 3, 10, 12, 0))
    # Facilities' chain has one step: it is the last, so the ticket goes to higher authority
    t = ticket(org, ref)
    assert (t.status, t.escalation_level) == ("TO_HIGHER_AUTHORITY", 1)


def test_two_branches_in_different_zones_keep_their_own_clocks(org: Env) -> None:
    """One instant, two targets: Berlin's deadline is Berlin noon, New York's New York's."""
    at = datetime(2026, 3, 6, 16, 0, tzinfo=UTC)  # Berlin 17:00, New York 11:00
    it = raise_at(org, at, "it@initech.example")
    sales = raise_at(org, at, "sales@initech.example")
    assert ticket(org, it).first_response_due == berlin(2026, 3, 9, 12, 0)
    assert ticket(org, sales).first_response_due == datetime(2026, 3, 6, 15, 0, tzinfo=NEW_YORK)
    tick(org, datetime(2026, 3, 6, 15, 0, tzinfo=NEW_YORK))
    assert (ticket(org, it).escalation_level, ticket(org, sales).escalation_level) == (0, 1)


def test_on_hold_and_returned_periods_do_not_count(org: Env) -> None:
    """First response: 1h used, then ON_HOLD overnight; leaving it leaves 3h (Tue 12:00).
    Resolution (8h): RETURNED from Tue 10:00 to Wed 09:00 and ON_HOLD 10:00–11:00 are not
    counted either."""
    ref = raise_at(org, berlin(2026, 3, 9, 9, 0), "it@initech.example")
    act(org, berlin(2026, 3, 9, 10, 0), ref, "tom@initech.example", "hold", "waiting for parts")
    t = ticket(org, ref)
    assert (t.first_response_due, t.resolution_due) == (None, None)
    assert tick(org, berlin(2026, 3, 9, 23, 0)).totals.total() == 0
    act(org, berlin(2026, 3, 10, 9, 0), ref, "tom@initech.example", "to_higher_authority")
    t = ticket(org, ref)
    assert t.first_response_due == berlin(2026, 3, 10, 12, 0)
    assert t.resolution_due == berlin(2026, 3, 10, 16, 0)
    act(org, berlin(2026, 3, 10, 10, 0), ref, "tom@initech.example", "return", "which printer?")
    assert ticket(org, ref).first_responded_at == berlin(2026, 3, 10, 10, 0)
    act(org, berlin(2026, 3, 11, 9, 0), ref, "req@initech.example", "respond", body="the red one")
    act(org, berlin(2026, 3, 11, 10, 0), ref, "tom@initech.example", "hold", "ordering")
    act(org, berlin(2026, 3, 11, 11, 0), ref, "tom@initech.example", "take")
    # used: Mon 09–10, Tue 09–10, Wed 09–10 = 3h; 5h left from Wed 11:00 → Wed 16:00
    assert ticket(org, ref).resolution_due == berlin(2026, 3, 11, 16, 0)
    assert tick(org, berlin(2026, 3, 11, 15, 59)).totals.total() == 0
    tick(org, berlin(2026, 3, 11, 16, 0))
    t = ticket(org, ref)
    assert (t.status, t.resolution_breached, t.first_response_breached) == (
        "ESCALATED",
        True,
        False,
    )


def test_autumn_dst_deadline_lands_on_the_right_instant(org: Env) -> None:
    """Friday 23 Oct 2026 16:00 CEST + 4h: 2h on Friday, 2h on Monday 26 Oct after the change
    to CET — 11:00 CET, which is 10:00 UTC (not 09:00)."""
    ref = raise_at(org, berlin(2026, 10, 23, 16, 0), "it@initech.example")
    assert ticket(org, ref).first_response_due == datetime(2026, 10, 26, 10, 0, tzinfo=UTC)
    assert tick(org, datetime(2026, 10, 26, 9, 59, tzinfo=UTC)).totals.total() == 0
    tick(org, datetime(2026, 10, 26, 10, 0, tzinfo=UTC))
    assert ticket(org, ref).status == "ESCALATED"


def test_the_chain_runs_each_step_once_and_ends_to_higher_authority(org: Env) -> None:
    """Steps at the breach, +1h and +2h: levels 1, 2, 3, then TO_HIGHER_AUTHORITY; the named
    employee of the last step is added as a copy and told. A tick delivered again at the same
    instant, or a late tick, does nothing more."""
    ref = raise_at(org, berlin(2026, 3, 9, 9, 0), "it@initech.example")
    tick(org, berlin(2026, 3, 9, 13, 0))
    assert ticket(org, ref).escalation_level == 1
    again = tick(org, berlin(2026, 3, 9, 13, 0))
    assert again.totals.total() == 0
    tick(org, berlin(2026, 3, 9, 14, 0))
    t = ticket(org, ref)
    assert (t.status, t.escalation_level) == ("ESCALATED", 2)
    (_, second) = events(org, ref, "escalation")
    assert second.payload["only"] == [emp_id(org, "max@initech.example")]
    tick(org, berlin(2026, 3, 9, 15, 0))
    t = ticket(org, ref)
    assert (t.status, t.escalation_level, t.escalation_due) == ("TO_HIGHER_AUTHORITY", 3, None)
    third = events(org, ref, "escalation")[-1]
    assert third.payload["only"] == [emp_id(org, "ceo@initech.example")]
    with org.app.sessions() as s:
        copies = s.scalars(select(m.TicketCopy).where(m.TicketCopy.ticket_id == t.id)).all()
    assert [(c.kind, c.employee_id) for c in copies] == [("RC", emp_id(org, "ceo@initech.example"))]
    # later the resolution target is missed too: recorded, but the chain has no step left
    late = tick(org, berlin(2026, 3, 20, 9, 0))
    assert dict(late.totals) == {"breach_resolution": 1, "failed": 0}
    assert len(events(org, ref, "escalation")) == 3
    assert [h[0] for h in history(org, ref)] == [
        "raise",
        "sla_breach",
        "escalate",
        "escalate",
        "escalate",
        "to_higher_authority",
        "sla_breach",
    ]


def test_a_late_tick_runs_every_step_due_by_then(org: Env) -> None:
    """A tick long after the breach (the gateway was down) does every due step once."""
    ref = raise_at(org, berlin(2026, 3, 9, 9, 0), "it@initech.example")
    report = make_scheduler(org.app).tick(berlin(2026, 3, 12, 9, 0).astimezone(UTC))
    assert report.counts["escalation"] == 3
    assert ticket(org, ref).status == "TO_HIGHER_AUTHORITY"


def test_a_response_after_the_breach_stops_the_chain(org: Env) -> None:
    """Taken after step 1: no further steps for the first-response breach."""
    ref = raise_at(org, berlin(2026, 3, 9, 9, 0), "it@initech.example")
    tick(org, berlin(2026, 3, 9, 13, 0))
    act(org, berlin(2026, 3, 9, 13, 30), ref, "tom@initech.example", "take")
    t = ticket(org, ref)
    assert (t.status, t.escalation_due) == ("WORKING_ON_IT", None)
    tick(org, berlin(2026, 3, 9, 16, 0))
    assert ticket(org, ref).escalation_level == 1


def test_a_narrower_policy_applies_first(org: Env) -> None:
    """An urgent laptop ticket gets the 1h policy, others the standard 4h one."""
    ref = raise_at(
        org,
        berlin(2026, 3, 9, 9, 0),
        "it@initech.example",
        category="Hardware/Laptop",
        priority="urgent",
    )
    plain = raise_at(
        org, berlin(2026, 3, 9, 9, 0), "it@initech.example", category="Hardware/Laptop"
    )
    assert ticket(org, ref).first_response_due == berlin(2026, 3, 9, 10, 0)
    assert ticket(org, plain).first_response_due == berlin(2026, 3, 9, 13, 0)


def test_a_reroute_recomputes_in_the_new_branch(org: Env) -> None:
    """An INDIVIDUAL ticket re-assigned to New York's Sam: its clocks are measured again in New
    York's hours and policy (Berlin 09:00 Monday = New York 04:00: 4h from 09:00 NY)."""
    ref = raise_at(org, berlin(2026, 3, 16, 9, 0), "tom@initech.example")
    assert ticket(org, ref).first_response_due == berlin(2026, 3, 16, 13, 0)
    act(
        org, berlin(2026, 3, 16, 9, 30), ref, "tom@initech.example", "assign", "sam@initech.example"
    )
    t = ticket(org, ref)
    assert (
        t.to_branch_id
        != ticket(org, raise_at(org, berlin(2026, 3, 16, 9, 0), "it@initech.example")).to_branch_id
    )
    assert t.first_response_due == datetime(2026, 3, 16, 13, 0, tzinfo=NEW_YORK)


@pytest.mark.parametrize("how", ["return", "reply"])
def test_reminders_for_a_waiting_requester_at_most_twice(org: Env, how: str) -> None:
    """RETURNED (IT) or REPLIED (the Board, without SLA), no answer: a reminder after 48
    business hours of the requester's branch, one more 48h later, then none."""
    to, actor = ("it@initech.example", "tom@initech.example")
    if how == "reply":
        to, actor = ("board@initech.example", "ceo@initech.example")
    ref = raise_at(org, berlin(2026, 3, 2, 9, 0), to)
    if how == "reply":
        act(org, berlin(2026, 3, 2, 9, 30), ref, actor, "reply", body="Try turning it off?")
    else:
        act(org, berlin(2026, 3, 2, 9, 30), ref, actor, "return", "which printer?")
    due = ticket(org, ref).reminder_due
    # 48 business hours of Mon–Fri 09–18 from Mon 09:30: five days and a third → Tue 10 Mar
    # (Munich's holiday Monday 9 March does not count)
    assert due == berlin(2026, 3, 10, 12, 30)
    tick(org, berlin(2026, 3, 10, 12, 30))
    tick(org, berlin(2026, 3, 30, 9, 0))
    tick(org, berlin(2026, 4, 30, 9, 0))
    assert len(events(org, ref, "reminder")) == 2
    assert [e.payload["only"] for e in events(org, ref, "reminder")] == [
        [emp_id(org, "req@initech.example")]
    ] * 2
    assert ticket(org, ref).reminder_due is None
    assert ticket(org, ref).status == ("REPLIED" if how == "reply" else "RETURNED")


def test_an_answer_resets_the_reminders(org: Env) -> None:
    """The requester's answer clears the reminder; the next reply starts a new count."""
    ref = raise_at(org, berlin(2026, 3, 2, 9, 0), "board@initech.example")
    act(org, berlin(2026, 3, 2, 9, 30), ref, "ceo@initech.example", "reply", body="which one?")
    tick(org, berlin(2026, 3, 10, 12, 30))
    act(org, berlin(2026, 3, 10, 13, 0), ref, "req@initech.example", "respond", body="the red")
    assert ticket(org, ref).reminder_due is None
    act(org, berlin(2026, 3, 10, 14, 0), ref, "ceo@initech.example", "reply", body="ok, done?")
    t = ticket(org, ref)
    assert (t.reminders_sent, t.reminder_due is not None) == (0, True)


def test_delivered_closes_itself_then_feedback_is_requested_once_and_reminded_once(
    org: Env,
) -> None:
    """DELIVERED + 72h → CLOSED by the system; +1h the feedback request (CLOSED's question),
    +72h one reminder, then nothing."""
    ref = raise_at(org, berlin(2026, 3, 2, 9, 0), "it@initech.example")
    act(org, berlin(2026, 3, 2, 10, 0), ref, "tom@initech.example", "take")
    act(org, berlin(2026, 3, 2, 11, 0), ref, "tom@initech.example", "deliver")
    t = ticket(org, ref)
    assert (t.resolution_due, t.auto_close_due) == (None, berlin(2026, 3, 5, 11, 0))
    tick(org, berlin(2026, 3, 5, 10, 59))
    assert ticket(org, ref).status == "DELIVERED"
    tick(org, berlin(2026, 3, 5, 11, 0))
    t = ticket(org, ref)
    assert (t.status, t.feedback_due) == ("CLOSED", berlin(2026, 3, 5, 12, 0))
    assert history(org, ref)[-1] == ("close", "CLOSED", "system")
    tick(org, berlin(2026, 3, 5, 12, 0))
    (req,) = events(org, ref, "feedback_request")
    assert req.payload["extra"]["question"].startswith("How was the service")
    tick(org, berlin(2026, 3, 8, 12, 0))
    tick(org, berlin(2026, 4, 8, 12, 0))
    reqs = events(org, ref, "feedback_request")
    assert len(reqs) == 2
    assert reqs[1].payload["extra"]["question"].startswith("A reminder")
    assert ticket(org, ref).feedback_due is None


def test_rejected_gets_the_decision_question(org: Env) -> None:
    """A rejected ticket's feedback request asks whether the decision was clear."""
    ref = raise_at(org, berlin(2026, 3, 2, 9, 0), "it@initech.example")
    act(org, berlin(2026, 3, 2, 10, 0), ref, "tom@initech.example", "reject", "not our printer")
    tick(org, berlin(2026, 3, 2, 11, 0))
    (req,) = events(org, ref, "feedback_request")
    assert "decision" in req.payload["extra"]["question"]


def test_demo_it_ticket_escalates_after_four_berlin_business_hours(
    database: Database, tmp_path: Path
) -> None:
    """The outside checks' contract: in the demo, an untouched IT ticket raised Thursday
    15:00 in Berlin (08:00–17:00; Friday until 15:00) escalates Friday 10:00."""
    with demo_env(database, tmp_path / "demo") as e:
        e.clock.at = berlin(2026, 11, 5, 15, 0).astimezone(UTC)
        ref = e.service.raise_ticket(
            RaiseTicket("frank@acme.example", "it@acme.example", "VPN", "down")
        )
        assert ticket(e, ref).first_response_due == berlin(2026, 11, 6, 10, 0)
        assert tick(e, berlin(2026, 11, 6, 9, 59)).totals.total() == 0
        tick(e, berlin(2026, 11, 6, 10, 0))
        t = ticket(e, ref)
        assert (t.status, t.escalation_level) == ("ESCALATED", 1)
        assert tick(e, berlin(2026, 11, 6, 10, 0)).totals.total() == 0


def test_unknown_holiday_country_is_refused(tmp_path: Path, database: Database) -> None:
    """A branch naming a country the holidays package does not know is an org-file fault."""
    from gateway.service.errors import OrgFileError
    from gateway.service.org_import import load_org_file

    text = (FIXTURES / "orgs" / "sla.toml").read_text(encoding="utf-8")
    bad = tmp_path / "bad.toml"
    bad.write_text(
        text.replace(
            'timezone = "America/New_York"\n',
            'timezone = "America/New_York"\nholiday_country = "XX"\n',
        ),
        encoding="utf-8",
    )
    with pytest.raises(OrgFileError, match="holiday_country"):
        load_org_file(bad)
    good = tmp_path / "good.toml"
    good.write_text(
        text.replace(
            'timezone = "America/New_York"\n',
            'timezone = "America/New_York"\nholiday_country = "US"\nholiday_subdivision = "NY"\n',
        ),
        encoding="utf-8",
    )
    load_org_file(good)
    _ = timedelta


def test_cli_tick_at_an_instant(database: Database, tmp_path: Path) -> None:
    """`ticketgate tick --at` runs what is due then, once (exit 0; --json says what it did);
    a bad time is bad usage (exit 2)."""
    from tests.conftest import run_cli

    with demo_env(database, tmp_path / "demo") as e:
        e.clock.at = berlin(2026, 11, 5, 15, 0).astimezone(UTC)
        ref = e.service.raise_ticket(
            RaiseTicket("frank@acme.example", "it@acme.example", "VPN", "down")
        )
        r = run_cli(e.env, "tick", "--at", "2026-11-06T10:00:00+01:00", "--json")
        assert r.returncode == 0, r.stderr
        import json

        out = json.loads(r.stdout)
        assert out["done"] == {"breach_first_response": 1, "escalation": 1}
        assert ticket(e, ref).status == "ESCALATED"
        again = run_cli(e.env, "tick", "--at", "2026-11-06T09:00:00Z")
        assert (again.returncode, again.stdout.strip()) == (
            0,
            "tick 2026-11-06T09:00:00+00:00: nothing due",
        )
        bad = run_cli(e.env, "tick", "--at", "friday noon")
        assert bad.returncode == 2 and "ISO time" in bad.stderr


def test_report_counts_sla_escalations_and_feedback(org: Env) -> None:
    """`report --json`: by status/department/category, attainment of both clocks, medians,
    escalations, average rating and answer rate; `--since` narrows to newer tickets."""
    import json

    from gateway.service.feedback import FeedbackService
    from tests.conftest import run_cli

    raise_at(org, berlin(2026, 3, 2, 9, 0), "it@initech.example")  # never touched: escalates
    quick = raise_at(org, berlin(2026, 3, 2, 9, 0), "it@initech.example", category="Hardware")
    act(org, berlin(2026, 3, 2, 10, 0), quick, "tom@initech.example", "take")
    act(org, berlin(2026, 3, 2, 12, 0), quick, "tom@initech.example", "deliver")
    act(org, berlin(2026, 3, 2, 13, 0), quick, "req@initech.example", "close")
    asked = raise_at(org, berlin(2026, 3, 2, 9, 0), "it@initech.example")
    act(org, berlin(2026, 3, 2, 9, 30), asked, "req@initech.example", "cancel")
    tick(org, berlin(2026, 3, 2, 15, 0))
    FeedbackService(org.service).record(ticket=quick, employee="req@initech.example", rating=4)
    r = run_cli(org.env, "report", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["tickets"] == 3
    assert rep["by_status"] == {"CANCELLED": 1, "CLOSED": 1, "TO_HIGHER_AUTHORITY": 1}
    assert rep["by_department"] == {"it@initech.example": 3}
    assert rep["by_category"] == {"(none)": 2, "Hardware": 1}
    # the cancelled one stopped its clocks unmet: undecided, not met
    assert rep["sla"]["first_response"] == {
        "met": 1,
        "missed": 1,
        "undecided": 1,
        "attainment": 0.5,
    }
    assert rep["sla"]["resolution"] == {"met": 1, "missed": 0, "undecided": 2, "attainment": 1.0}
    assert rep["median_seconds"] == {"first_response": 3600.0, "delivery": 10800.0}
    assert rep["escalations"] == {
        "steps": 3,
        "tickets": 1,
        "by_level": {"3": 1},
        "to_higher_authority": 1,
    }
    assert rep["feedback"] == {
        "requested": 2,
        "answered": 1,
        "answer_rate": 0.5,
        "average_rating": 4.0,
        "ratings": {"4": 1},
    }
    text = run_cli(org.env, "report")
    assert "SLA first response: 50.0 % met" in text.stdout
    newer = json.loads(run_cli(org.env, "report", "--json", "--since", "2026-03-03").stdout)
    assert newer["tickets"] == 0


def test_run_ticks_with_apscheduler_and_counts_on_metrics(org: Env) -> None:
    """`run`'s ticker: APScheduler calls the tick on its interval; what the ticks did is on
    the /metrics counters (by kind) and the number of ticks."""
    from gateway.bootstrap import make_ticker
    from gateway.scheduler.ticker import Ticker
    from tests.conftest import poll_until

    ref = raise_at(org, berlin(2026, 3, 2, 9, 0), "it@initech.example")
    org.clock.at = berlin(2026, 3, 2, 15, 0).astimezone(UTC)
    ticker = make_ticker(org.app)
    fast = Ticker(ticker.scheduler, tick_seconds=0.05)
    fast.start()
    try:
        poll_until(lambda: fast.scheduler.ticks >= 2, timeout=30, what="two ticks")
    finally:
        fast.stop()
    counters = fast.counters()
    assert counters["ticketgate_scheduler_ticks_total"] >= 2
    assert counters['ticketgate_scheduler_done_total{kind="escalation"}'] == 3
    assert counters['ticketgate_scheduler_done_total{kind="breach_first_response"}'] == 1
    assert ticket(org, ref).status == "TO_HIGHER_AUTHORITY"


def test_the_tick_forgets_applied_slack_ids_after_a_week(org: Env) -> None:
    """An applied Slack id is remembered for a week, so a retry within it changes nothing;
    the first tick after that forgets it (counted as `slack_ids_forgotten`), and the table
    does not grow for ever. A message's `raise:` id is kept: that message raised its ticket."""
    from gateway.service.errors import AlreadyApplied
    from gateway.service.scheduler import SLACK_IDS_KEPT

    now = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
    svc = org.app.service
    old = now - SLACK_IDS_KEPT - timedelta(minutes=1)
    for key, at in (("Ev0OLD", old), ("raise:C0IT:1700000500.0001", old), ("Ev0NEW", now)):
        with svc.unit(now=at) as u:
            u.once(key)
    report = make_scheduler(org.app).tick(now)
    assert report.counts["slack_ids_forgotten"] == 1
    with pytest.raises(AlreadyApplied), svc.unit(now=now) as u:
        u.once("Ev0NEW")  # a retry within the week is still recognised
    with svc.unit(now=now) as u:
        u.once("Ev0OLD")  # forgotten: recorded afresh
    with pytest.raises(AlreadyApplied), svc.unit(now=now) as u:
        u.once("raise:C0IT:1700000500.0001")  # the message raised its ticket: still known
    assert make_scheduler(org.app).tick(now).counts["slack_ids_forgotten"] == 0
    with org.app.sessions() as s:
        kept = sorted(s.scalars(select(m.SlackSeen.key)))
    assert kept == ["Ev0NEW", "Ev0OLD", "raise:C0IT:1700000500.0001"]
