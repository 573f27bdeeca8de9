"""CLI commands about mail: `outbox list|retry|deliver`, `quarantine list|show|release`, `mail explain`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gateway.bootstrap import App
from gateway.service.errors import NotFound
from store import imap_queries
from store import inbound_queue as queue
from store import models as m
from store.db import read_session


def _out(obj: Any, as_json: bool, lines: list[str]) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, ensure_ascii=False))
    else:
        print("\n".join(lines) if lines else "(none)")


def _record(r: m.InboundMail) -> dict[str, Any]:
    return {
        "id": r.id,
        "message_id": r.message_id,
        "sender": r.sender,
        "reason": r.rule.removeprefix("quarantined: "),
        "at": r.at.isoformat(),
    }


def dispatch(args: argparse.Namespace, app: App) -> int:
    if args.cmd == "outbox":
        from gateway.bootstrap import make_worker

        worker = make_worker(app)
        if args.sub == "list":
            rows = worker.outbox.rows(args.state)
            _out(
                rows,
                args.json,
                [
                    f"{r['id']:>6} {r['state']:<8} {r['attempts']:>2} {r['ticket'] or '-':<9} {r['kind']:<16} {r['recipient']}  {r['last_error']}"
                    for r in rows
                ],
            )
        elif args.sub == "retry":
            n = worker.outbox.retry(args.ids or None)
            _out({"requeued": n}, args.json, [f"{n} message(s) queued again"])
        else:
            try:
                n = worker.run_once()
            finally:
                worker.close()
            print(f"{n} message(s) handled")
        return 0
    if args.cmd == "quarantine":
        if args.sub == "release":
            from gateway.bootstrap import make_inbound

            if not make_inbound(app).release(args.id):
                raise NotFound(f"no quarantined mail {args.id}")
            print(f"mail {args.id} is queued again; the intake runner of `ticketgate run` takes it")
            return 0
        with read_session(app.sessions) as s:
            if args.sub == "list":
                views = [_record(r) for r in queue.quarantined(s)]
                _out(
                    views,
                    args.json,
                    [f"{v['id']:>6} {v['at'][:19]} {v['sender']:<32} {v['reason']}" for v in views],
                )
                return 0
            r = queue.record(s, args.id)
            if r is None or r.outcome != "quarantined":
                raise NotFound(f"no quarantined mail {args.id}")
            view = _record(r)
            data = queue.raw_of(s, r)
            raw = data.decode("utf-8", errors="replace") if data is not None else ""
            view["detail"] = r.detail
            view["raw"] = raw
            _out(view, args.json, [f"{k}: {v}" for k, v in view.items() if k != "raw"] + ["", raw])
            return 0
    if args.cmd == "mail":
        mid = args.message_id.strip().strip("<>")
        with read_session(app.sessions) as s:
            recs = queue.records_with_message_id(s, mid)
            sources = imap_queries.mailboxes_of(s, recs[0].id) if recs else []
        if not recs:
            raise NotFound(f"no inbound mail with Message-ID <{mid}>")
        r = recs[0]
        view = {
            "message_id": r.message_id,
            "outcome": r.outcome,
            "rule": r.rule,
            "ticket": f"TKT-{r.ticket_id}" if r.ticket_id else None,
        }
        waiting = (
            [f"  attempts: {r.attempts}, last error: {r.last_error}"]
            if r.outcome == "queued" and r.attempts
            else []
        )
        _out(
            view,
            args.json,
            [
                f"<{r.message_id}> from {r.sender} at {r.at.isoformat()}",
                f"  outcome: {r.outcome}",
                f"  rule:    {r.rule}",
                f"  ticket:  {view['ticket'] or '-'}",
            ]
            + waiting
            + [f"  imap:    mailbox {name}, UID {uid} ({state})" for name, uid, state in sources]
            + [
                f"  command: {c['command']} -> {'applied' if c['applied'] else 'refused: ' + c['reason']}"
                for c in r.detail.get("commands", [])
            ],
        )
        return 0
    raise NotFound(f"unknown command {args.cmd}")
