"""Cost of strip_reply and classify per mail, small and large (docs/BENCHMARKS.md, issue 16).

.venv/bin/python benchmarks/reply_rules_cost.py
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.mail.parse import parse_mail
from gateway.mail.quotes import strip_reply
from gateway.mail.rules import RuleContext, classify

CTX = RuleContext(envelope_from="a@client.example", own_domains=frozenset(), loop_token="")
HEAD = b"From: a@client.example\nTo: it@acme.example\nSubject: Logs\nMessage-ID: <b@client.example>\n\n"
BODIES = {
    "short reply (1 line + 5-line quote)": b"Fixed, thanks.\n\nOn Mon, 2 Nov 2026 at 09:14, IT <it@acme.example> wrote:\n"
    + b"> old line\n" * 5,
    "2 MB quote under one line": b"New words\n\n" + b"> quoted line\n" * 150_000,
    "2 MB unquoted log with times": b"New words\n\n"
    + b"plain line of a long log 12:30 here\n" * 60_000,
}


def best_of(fn: Callable[[], object], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main() -> int:
    """Print one row per body: strip_reply and classify, milliseconds, best of three."""
    print("| body | strip_reply ms | classify ms |\n|---|---:|---:|")
    for name, body in BODIES.items():
        mail = parse_mail(HEAD + body)
        print(
            f"| {name} | {best_of(lambda m=mail: strip_reply(m.text)):.1f} "
            f"| {best_of(lambda m=mail: classify(m, CTX)):.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
