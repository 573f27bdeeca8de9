"""`ticketgate` command line (SPEC §5): exit 0 on success, 1 on a refused action, 2 on bad usage."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from gateway.bootstrap import App, build
from gateway.config import ConfigError, Settings, config_path, load_settings
from gateway.domain.lifecycle import ARGUMENT_ACTIONS, Action, Channel
from gateway.domain.visibility import sees_hidden
from gateway.service.commands import Act, RaiseTicket
from gateway.service.directory import Directory
from gateway.service.errors import NotFound, OrgFileError, UserFacingError
from gateway.service.org_import import ImportReport, apply_org, load_org_file
from gateway.service.views import Views
from store import models as m
from store.db import is_storage_error, make_engine, read_session
from store.migrate import schema_state, sqlite_file_missing, upgrade


class UsageError(Exception):
    """Bad usage: exit 2."""


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ticketgate", description="Email- and Slack-driven ticketing gateway"
    )
    p.add_argument("--config", help="config file (default $TICKETGATE_CONFIG or ./ticketgate.toml)")
    sub = p.add_subparsers(dest="cmd", required=True)

    init = sub.add_parser("init", help="create or migrate the database; --demo writes a demo org")
    init.add_argument("--demo", action="store_true")

    org = sub.add_parser("org", help="organizations").add_subparsers(dest="sub", required=True)
    oi = org.add_parser("import", help="create or update an organization from a TOML file")
    oi.add_argument("file")
    os_ = org.add_parser("show")
    os_.add_argument("--json", action="store_true")
    os_.add_argument("--org", help="organization name (default: the first)")

    sub.add_parser("run", help="run all enabled services in one process")

    t = sub.add_parser("ticket", help="tickets").add_subparsers(dest="sub", required=True)
    tr = t.add_parser("raise")
    tr.add_argument("--from", dest="sender", required=True)
    tr.add_argument("--to", required=True)
    tr.add_argument("--subject", required=True)
    tr.add_argument("--body", default="")
    tr.add_argument("--cc", nargs="*", default=[])
    tr.add_argument("--bcc", nargs="*", default=[])
    tr.add_argument("--category", default="")
    tr.add_argument("--priority", default="")
    tr.add_argument("--json", action="store_true")
    ta = t.add_parser("act")
    ta.add_argument("ref")
    ta.add_argument("--as", dest="actor", required=True)
    ta.add_argument("action")
    ta.add_argument("args", nargs="*")
    ta.add_argument("--json", action="store_true")
    tl = t.add_parser("list")
    tl.add_argument("--status")
    tl.add_argument("--department")
    tl.add_argument(
        "--as", dest="viewer", help="only tickets EMAIL takes part in, as EMAIL sees them"
    )
    tl.add_argument("--json", action="store_true")
    ts = t.add_parser("show")
    ts.add_argument("ref")
    ts.add_argument(
        "--as", dest="viewer", help="the ticket as EMAIL sees it (refused if not theirs)"
    )
    ts.add_argument("--json", action="store_true")

    ob = sub.add_parser("outbox", help="outbound mail").add_subparsers(dest="sub", required=True)
    obl = ob.add_parser("list")
    obl.add_argument("--json", action="store_true")
    obl.add_argument("--state")
    obr = ob.add_parser("retry")
    obr.add_argument("ids", nargs="*", type=int)
    obr.add_argument("--json", action="store_true")
    ob.add_parser("deliver", help="deliver what is due now, once, and exit")

    q = sub.add_parser("quarantine", help="mail kept out").add_subparsers(dest="sub", required=True)
    ql = q.add_parser("list")
    ql.add_argument("--json", action="store_true")
    qs = q.add_parser("show")
    qs.add_argument("id", type=int)
    qs.add_argument("--json", action="store_true")
    qr = q.add_parser("release", help="put a quarantined mail back into the inbound queue")
    qr.add_argument("id", type=int)

    tick = sub.add_parser("tick", help="run all scheduled work due at an instant, once")
    tick.add_argument("--at", help="ISO time (default: now); without an offset, UTC")
    tick.add_argument("--json", action="store_true")

    rep = sub.add_parser("report", help="tickets, SLA attainment, escalations and feedback")
    rep.add_argument("--json", action="store_true")
    rep.add_argument("--since", help="only tickets created since DATE (ISO date or time, UTC)")

    mail = sub.add_parser("mail", help="inbound mail").add_subparsers(dest="sub", required=True)
    me = mail.add_parser("explain")
    me.add_argument("message_id")
    me.add_argument("--json", action="store_true")

    imap = sub.add_parser("imap", help="IMAP intake").add_subparsers(dest="sub", required=True)
    ic = imap.add_parser("check", help="log in to each mailbox and report what is there")
    ic.add_argument("--json", action="store_true")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(config_path(args.config, os.environ), os.environ)


def _check_config_named(args: argparse.Namespace) -> None:
    """A file named by ``--config`` must exist (but for `init --demo`, which writes it): a typo
    must not silently mean "all defaults", as a missing ./ticketgate.toml does."""
    if args.cmd == "init" and args.demo:
        return
    if args.config and not Path(args.config).expanduser().exists():
        raise UsageError(f"config file {args.config} does not exist")


def _check_initialised(settings: Settings) -> None:
    """Every command but `init` needs the schema `init` makes: say so (exit 2) instead of
    creating an empty SQLite file and failing on SQL. No file is created here."""
    url = settings.database.url
    shown = make_url(url).render_as_string(hide_password=True)
    if sqlite_file_missing(url):
        raise UsageError(
            f"the database is not initialised ({shown} does not exist): run `ticketgate init`"
        )
    engine = make_engine(url)
    try:
        state = schema_state(engine)
    finally:
        engine.dispose()
    if state.current is None:
        raise UsageError(
            f"the database is not initialised ({shown} has no schema): run `ticketgate init`"
        )
    if not state.ready:
        raise UsageError(
            f"the database {shown} is at revision {state.current}, this ticketgate needs "
            f"{state.head}: run `ticketgate init` to migrate it"
        )


def _import_org_file(app: App, path: Path) -> ImportReport:
    """Check the org file whole (a fault in it is bad input: exit 2), then apply it in one
    transaction (a clash with another organization's rows: exit 1, nothing changed)."""
    try:
        data = load_org_file(path)
    except OrgFileError as e:
        raise UsageError(e.reason) from None
    with app.sessions() as s, s.begin():
        rep = apply_org(s, data, mail_domain=app.settings.mail.domain)
    print(f"organization {rep.organization}: {rep.created} created, {rep.updated} updated")
    return rep


def cmd_init(args: argparse.Namespace) -> int:
    path = config_path(args.config, os.environ)
    if args.demo:
        from gateway.demo import DEMO_EMPLOYEES_CSV, DEMO_ORG_TOML, demo_config_toml

        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(demo_config_toml(secrets.token_hex(24)), encoding="utf-8")
        org_file = path.parent / "org.toml"
        if not org_file.exists():
            org_file.write_text(DEMO_ORG_TOML, encoding="utf-8")
        csv_file = path.parent / "employees.csv"
        if DEMO_EMPLOYEES_CSV and not csv_file.exists():
            csv_file.write_text(DEMO_EMPLOYEES_CSV, encoding="utf-8")
    settings = load_settings(path, os.environ)
    app = build(settings)
    try:
        upgrade(app.engine)
        org_file = Path(settings.org.file)
        if org_file.exists():
            _import_org_file(app, org_file)
        print(f"database ready: {app.engine.url.render_as_string(hide_password=True)}")
    finally:
        app.close()
    return 0


def cmd_org(args: argparse.Namespace, app: App) -> int:
    if args.sub == "import":
        _import_org_file(app, Path(args.file))
        return 0
    with read_session(app.sessions) as s:
        q = select(m.Organization).order_by(m.Organization.id)
        if args.org:
            q = q.where(m.Organization.name == args.org)
        org = s.scalars(q).first()
        if org is None:
            raise UserFacingError("no organization (run `ticketgate org import FILE`)")
        view = Views(s).org(org)
    if args.json:
        _print_json(view)
    else:
        print(f"{view['organization']['name']} ({', '.join(view['organization']['domains'])})")
        for b in view["branches"]:
            print(f"  {b['name']} [{b['timezone']}]")
            for d in b["departments"]:
                print(f"    {d['name']} <{d['address']}>")
        print(f"  {len(view['employees'])} employees, {len(view['categories'])} categories")
    return 0


def _viewer(s: Session, email: str | None) -> m.Employee | None:
    if not email:
        return None
    emp = Directory(s).employee(email)
    if emp is None:
        raise NotFound(f"{email} is not an employee")
    return emp


def _seen_by(s: Session, v: Views, t: m.Ticket, viewer: m.Employee | None) -> dict[str, Any] | None:
    """The ticket's view for ``viewer`` (None: the operator sees everything); None when the
    viewer takes no part in it (SPEC §1.1: nothing crosses organizations)."""
    view = v.ticket(t)
    if viewer is None:
        return view
    roles = Directory(s).roles_of(t, viewer)
    if not roles:
        return None
    if not sees_hidden(roles):  # SPEC §1.4: hidden copies and their messages stay hidden
        view["copies"]["rhc"] = []
        view["messages"] = [msg for msg in view["messages"] if not msg["hidden"]]
    return view


def _ticket_line(t: dict[str, Any]) -> str:
    target = t["to"]["employee"] or t["to"]["department"]
    return f"{t['ref']:>8}  {t['status']:<20} {t['priority']:<7} {target:<28} {t['subject']}"


def _act_command(args: argparse.Namespace) -> Act:
    """`ticket act`'s arguments as the command; UsageError when they cannot make one."""
    name = args.action.lower().replace("-", "_")
    arguments: tuple[str, ...] = ()
    remark = body = ""
    if name in ("reply", "respond", "message"):
        body = " ".join(args.args)
        if not body.strip():
            raise UsageError(f"{name}: give the message text")
    elif name == "status" or name in {a.value for a in ARGUMENT_ACTIONS}:
        arguments = tuple(args.args)
        if not arguments:
            raise UsageError(f"{name}: missing argument")
    else:
        try:
            Action(name)
        except ValueError:
            raise UsageError(f"unknown action {args.action!r}") from None
        remark = " ".join(args.args)
    return Act(
        ref=args.ref, actor=args.actor, action=name, args=arguments, remark=remark, body=body
    )


def cmd_ticket(args: argparse.Namespace, app: App) -> int:
    svc = app.service
    if args.sub == "raise":
        ref = svc.raise_ticket(
            RaiseTicket(
                requester=args.sender,
                to=args.to,
                subject=args.subject,
                body=args.body,
                cc=tuple(args.cc),
                bcc=tuple(args.bcc),
                category=args.category,
                priority=args.priority,
                channel=Channel.CLI,
            )
        )
        if args.json:
            with read_session(app.sessions) as s:
                t = s.get(m.Ticket, int(ref.split("-")[1]))
                assert t is not None
                _print_json(Views(s).ticket(t))
        else:
            print(ref)
        return 0
    if args.sub == "act":
        svc.act(_act_command(args))
        with read_session(app.sessions) as s:
            t = s.get(m.Ticket, int(args.ref.upper().removeprefix("TKT-")))
            assert t is not None
            view = Views(s).ticket(t)
        if args.json:
            _print_json(view)
        else:
            print(f"{view['ref']} {view['status']}")
        return 0
    with read_session(app.sessions) as s:
        v = Views(s)
        viewer = _viewer(s, args.viewer)
        if args.sub == "list":
            found = v.tickets(status=args.status, department=args.department)
            seen = (_seen_by(s, v, t, viewer) for t in found)
            views = [view for view in seen if view is not None]
            if args.json:
                _print_json(views)
            else:
                for tv in views:
                    print(_ticket_line(tv))
            return 0
        from gateway.service.tickets import parse_ref

        t = s.get(m.Ticket, parse_ref(args.ref))
        shown = _seen_by(s, v, t, viewer) if t is not None else None
        if shown is None:
            suffix = f" for {viewer.email}" if viewer is not None else ""
            raise NotFound(f"no ticket {args.ref.upper()}{suffix}")
        view = shown
    if args.json:
        _print_json(view)
    else:
        print(_ticket_line(view))
        for h in view["history"]:
            print(f"    {h['at']}  {h['status']:<20} {h['actor']}  {h['remark']}")
        for msg in view["messages"]:
            flag = " (hidden)" if msg["hidden"] else ""
            print(f"  --- {msg['sender']} via {msg['channel']} at {msg['at']}{flag}")
            print("  " + msg["body"].replace("\n", "\n  "))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _check_config_named(args)
        if args.cmd == "init":
            return cmd_init(args)
        settings = _settings(args)
        if args.cmd == "ticket" and args.sub == "act":
            _act_command(args)  # its usage faults are told before the database's
        _check_initialised(settings)
        if args.cmd == "run":
            from gateway.runner import run

            return run(settings)
        app = build(settings)
        try:
            if args.cmd == "org":
                return cmd_org(args, app)
            if args.cmd == "ticket":
                return cmd_ticket(args, app)
            if args.cmd == "imap":
                from gateway import cli_imap

                return cli_imap.dispatch(args, app)
            if args.cmd in ("tick", "report"):
                from gateway import cli_schedule

                try:
                    if args.cmd == "tick":
                        return cli_schedule.cmd_tick(args, app)
                    return cli_schedule.cmd_report(args, app)
                except cli_schedule.BadTime as e:
                    raise UsageError(str(e)) from None
            from gateway import cli_mail

            return cli_mail.dispatch(args, app)
        finally:
            app.close()
    except UsageError as e:
        print(f"ticketgate: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"ticketgate: configuration: {e}", file=sys.stderr)
        return 2
    except UserFacingError as e:
        print(f"ticketgate: {e.reason}", file=sys.stderr)
        return 1
    except Exception as e:
        if is_storage_error(e):
            print(f"ticketgate: storage unavailable: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
