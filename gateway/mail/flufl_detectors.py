"""flufl.bounce's detectors without its LLNL heuristic: the one place we reach into flufl.bounce.

flufl.bounce's public `all_failures` runs its detectors in order and stops at the first that
finds a failed address. Its last detector, LLNL, is a loose heuristic that matches ordinary
replies (talon's comcast.eml, issue 16), and the public API does not say which detector found
what. So the rule that judges on flufl alone (`rules.FluflBounce`) runs the same ordered list
minus LLNL. The list is flufl.bounce's private `_scan._DETECTORS`: the version is pinned in
`pyproject.toml`, and `tests/unit/test_flufl_detectors.py` checks this module against the
stock `all_failures` on every bounce of the corpus."""

from __future__ import annotations

import email.message

from flufl.bounce import BounceDetector
from flufl.bounce._scan import _DETECTORS  # pinned: flufl.bounce==6.0.0

SKIPPED = frozenset({"LLNL"})
TRUSTED: tuple[type[BounceDetector], ...] = tuple(
    d for d in _DETECTORS if d.__name__ not in SKIPPED
)


def first_failures(msg: email.message.Message) -> tuple[str, set[bytes]] | None:
    """(detector name, failed addresses) of the first trusted detector that finds any, as
    `all_failures` would report them (temporary and permanent together); None if none does.
    A detector that raises is passed over, as one detector's bug must not stop the rest."""
    for detector in TRUSTED:
        try:
            temporary, permanent = detector().process(msg)
        except Exception:  # noqa: BLE001, S112 - see the docstring
            continue
        found = set(permanent) | set(temporary)
        if found:
            return detector.__name__, found
    return None
