"""Split the mail corpus into a training half and a held-out half, by a hash of each file name.

Issue 16: rules are written looking only at the training half; accuracy is reported on the
held-out half first. The split is a pure function of `<source>/<path>` (the first byte of its
SHA-256, even → training, odd → held-out), so it never changes when rows are added, and
`tests/fixtures/mail/split.tsv` records it (`tests/unit/test_corpus_split.py` keeps the two
in step). Run `python benchmarks/corpus_split.py` to rewrite split.tsv after adding rows.
"""

from __future__ import annotations

import csv
import hashlib
import sys
from pathlib import Path
from typing import Literal

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "mail"
SPLIT_FILE = FIXTURES / "split.tsv"

Half = Literal["training", "held-out"]
HALVES: tuple[Half, ...] = ("held-out", "training")


def half_of(source: str, path: str) -> Half:
    """Which half a corpus file belongs to."""
    digest = hashlib.sha256(f"{source}/{path}".encode()).digest()
    return "held-out" if digest[0] % 2 else "training"


def catalog_rows(fixtures: Path = FIXTURES) -> list[dict[str, str]]:
    with (fixtures / "catalog.tsv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def split_table(fixtures: Path = FIXTURES) -> str:
    """split.tsv's text: one row per catalog row, in catalog order."""
    lines = ["source\tpath\thalf"]
    for row in catalog_rows(fixtures):
        lines.append(f"{row['source']}\t{row['path']}\t{half_of(row['source'], row['path'])}")
    return "\n".join(lines) + "\n"


def main() -> int:
    """Rewrite split.tsv from the catalog."""
    SPLIT_FILE.write_text(split_table(), encoding="utf-8")
    print(f"wrote {SPLIT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
