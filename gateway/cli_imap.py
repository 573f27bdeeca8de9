"""`ticketgate imap check`: log in to each `[[imap.mailboxes]]` mailbox and say what is there."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gateway.bootstrap import App, mailbox_configs
from gateway.mail.imap_client import CONNECTION_ERRORS, ImapConnection, MailboxConfig
from gateway.service.imap import ImapIntake


def check_mailbox(box: MailboxConfig, intake: ImapIntake) -> dict[str, Any]:
    """What an operator wants to know of one mailbox: can we log in, what does the server
    offer, how many messages wait in each folder, and where the gateway stands in it."""
    out: dict[str, Any] = {
        "mailbox": box.name,
        "server": f"{box.host}:{box.port} ({box.tls})",
        "user": box.user,
        "ok": False,
    }
    try:
        conn = ImapConnection(box)
    except CONNECTION_ERRORS as e:
        out["error"] = f"cannot log in: {type(e).__name__}: {e}"
        return out
    try:
        out["idle"], out["move"], out["uidplus"] = conn.idle, conn.move_supported, conn.uidplus
        folders: dict[str, Any] = {}
        for role, name in (
            ("processed", box.processed_folder),
            ("quarantine", box.quarantine_folder),
        ):
            exists = conn.client.folder_exists(name)
            folders[role] = {
                "name": name,
                "exists": bool(exists),
                "messages": conn.count(name) if exists else 0,
            }
        if not conn.client.folder_exists(box.folder):
            out["error"] = f"folder {box.folder!r} does not exist"
            out["folders"] = folders
            return out
        status = conn.select(box.folder)
        state = intake.stored_state(box.name)
        uidvalidity_known = state is not None and state.uidvalidity == status.uidvalidity
        last_uid = state.last_uid if state is not None and uidvalidity_known else 0
        if state is None and box.start_from == "now":
            new = 0
        else:
            new = len(conn.uids_after(last_uid))
        folders["folder"] = {"name": box.folder, "exists": True, "messages": status.exists}
        out["folders"] = folders
        out["uidvalidity"] = status.uidvalidity
        out["stored_uidvalidity"] = state.uidvalidity if state is not None else None
        out["last_uid"] = state.last_uid if state is not None else None
        out["to_queue"] = new
        out["waiting_moves"] = intake.waiting(box.name)
        out["ok"] = True
    except CONNECTION_ERRORS as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    return out


def _lines(r: dict[str, Any]) -> list[str]:
    head = f"{r['mailbox']}: {r['server']} as {r['user']}"
    if "error" in r and "folders" not in r:
        return [head, f"  FAILED: {r['error']}"]
    lines = [head]
    lines.append(
        "  server offers: "
        + ", ".join(
            f"{k.upper()} {'yes' if r.get(k) else 'no'}" for k in ("idle", "move", "uidplus")
        )
    )
    for role, f in r.get("folders", {}).items():
        state = f"{f['messages']} messages" if f["exists"] else "missing (created by `run`)"
        lines.append(f"  {role:<10} {f['name']}: {state}")
    if "error" in r:
        lines.append(f"  FAILED: {r['error']}")
        return lines
    stored = r["stored_uidvalidity"]
    if stored is None:
        lines.append(f"  not read yet: {r['to_queue']} messages to queue at the first run")
    elif stored != r["uidvalidity"]:
        lines.append(
            f"  UIDVALIDITY changed ({stored} -> {r['uidvalidity']}): the folder is read again,"
            f" {r['to_queue']} messages (known ones are recognised, not applied twice)"
        )
    else:
        lines.append(
            f"  last queued UID {r['last_uid']}: {r['to_queue']} new, "
            f"{r['waiting_moves']} queued and not moved yet"
        )
    return lines


def dispatch(args: argparse.Namespace, app: App) -> int:
    boxes = mailbox_configs(app.settings)
    if not boxes:
        print("no [[imap.mailboxes]] configured")
        return 0
    intake = ImapIntake(app.service, on_storage_error=app.engine.dispose)
    results = [check_mailbox(box, intake) for box in boxes]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("\n".join(line for r in results for line in _lines(r)))
    return 0 if all(r["ok"] for r in results) else 1
