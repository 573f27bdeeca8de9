"""Score talon's plain-text quotation extractor on the quote cases (docs/QUOTES.md).

talon is unmaintained and needs cchardet, which does not build on current Pythons, so it
runs in a throwaway venv of its own (`pip install talon lxml regex cssselect html5lib
chardet six`, plus a one-line `cchardet.py` that re-exports chardet) on the cases that
`benchmarks/quote_accuracy.py --dump FILE` wrote. Only the standard library and talon here:

    VENV/bin/python benchmarks/talon_compare.py FILE
"""

from __future__ import annotations

import json
import re
import sys


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def main(path: str) -> int:
    from talon import quotations  # type: ignore[import-not-found]

    with open(path, encoding="utf-8") as fh:
        cases = json.load(fh)
    cells = []
    for half in ("held-out", "training", None):
        chosen = [c for c in cases if half is None or c["half"] == half]
        correct = 0
        for case in chosen:
            got, want = (
                normalise(quotations.extract_from_plain(case["body"])),
                normalise(case["expected"]),
            )
            correct += got.startswith(want) if case["prefix_only"] else got == want
        cells.append(f"{correct}/{len(chosen)} ({100 * correct / max(len(chosen), 1):.1f} %)")
    print("| talon 1.4.4 `extract_from_plain` | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
