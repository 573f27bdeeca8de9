"""Issue 16: the corpus split into training and held-out halves is recorded and stable."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.corpus_split import SPLIT_FILE, catalog_rows, half_of, split_table


def test_split_file_matches_the_hash_split() -> None:
    """tests/fixtures/mail/split.tsv lists every catalog row with the half its name hashes to."""
    assert SPLIT_FILE.read_text(encoding="utf-8") == split_table()


def test_split_is_roughly_even_and_deterministic() -> None:
    """Both halves hold real work: at least 40 % of the rows each; the function is pure."""
    rows = catalog_rows()
    held = sum(half_of(r["source"], r["path"]) == "held-out" for r in rows)
    assert 0.4 * len(rows) <= held <= 0.6 * len(rows)
    assert half_of("talon", "a.eml") == half_of("talon", "a.eml")
