"""A ticket raised and worked through the service on each backend."""

from gateway.service.commands import Act, RaiseTicket


def test_round_trip(env):
    """raise → take → deliver → close leaves the expected history and owner."""
    svc = env.service
    ref = svc.raise_ticket(
        RaiseTicket(requester="frank@acme.example", to="it@acme.example", subject="Printer")
    )
    svc.act(Act(ref=ref, actor="alice@acme.example", action="take"))
    svc.act(Act(ref=ref, actor="alice@acme.example", action="deliver"))
    svc.act(Act(ref=ref, actor="frank@acme.example", action="close"))
    from gateway.service.views import Views
    from store import models as m

    with env.app.sessions() as s:
        v = Views(s).ticket(s.get(m.Ticket, int(ref[4:])))
    assert [h["status"] for h in v["history"]] == ["RAISED", "WORKING_ON_IT", "DELIVERED", "CLOSED"]
    assert v["to"]["owner"] == "alice@acme.example"
