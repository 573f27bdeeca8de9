"""`gateway/mail/flufl_detectors.py` reaches into flufl.bounce (its private detector list); these
tests hold it to the stock `all_failures` on every mail of the corpus, so an upgrade of the
pinned version that changes the list or its order fails here, not in production."""

from __future__ import annotations

import email
import email.message
from email import policy
from pathlib import Path

import flufl.bounce
from flufl.bounce import all_failures

from gateway.mail.flufl_detectors import SKIPPED, first_failures

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "mail"
SCAN = 64 * 1024  # what rules.FluflBounce hands the detectors


def _corpus() -> list[tuple[str, email.message.Message]]:
    return [
        (
            str(p.relative_to(CORPUS)),
            email.message_from_bytes(p.read_bytes()[:SCAN], policy=policy.compat32),
        )
        for p in sorted(CORPUS.rglob("*"))
        if p.is_file() and p.suffix in (".eml", ".txt", ".msg", "")
    ]


def test_the_pinned_version_is_installed() -> None:
    assert flufl.bounce.__version__ == "6.0.0"


def test_trusted_detectors_agree_with_stock_all_failures_on_the_corpus() -> None:
    """Where a trusted detector finds failures, stock `all_failures` reports the same
    addresses (the same detector ran first there); where none does, stock finds nothing or
    only what a skipped detector (LLNL) finds."""
    skipped = [d for d in flufl.bounce._scan._DETECTORS if d.__name__ in SKIPPED]
    assert [d.__name__ for d in skipped] == ["LLNL"]
    corpus = _corpus()
    assert len(corpus) > 200
    agreed = 0
    for name, msg in corpus:
        try:
            temporary, permanent = all_failures(msg)
        except Exception:  # noqa: BLE001, S112 - stock raises where ours passes a broken detector
            continue
        stock = set(temporary) | set(permanent)
        ours = first_failures(msg)
        if ours is not None:
            assert ours[1] == stock, name
            agreed += 1
        elif stock:
            only_skipped = set().union(*(set().union(*d().process(msg)) for d in skipped))
            assert stock == only_skipped, name
    assert agreed >= 30  # the corpus holds dozens of bounces flufl knows (41 on 2026-12-02)
