"""DMARC verdict from trusted Authentication-Results headers (placeholder until the RFC 8601 parser lands)."""

from __future__ import annotations

import re
from collections.abc import Sequence

_RESULT = re.compile(r"\bdmarc\s*=\s*([a-z]+)", re.IGNORECASE)


def dmarc_verdict(auth_results: Sequence[str], trusted_authserv_ids: Sequence[str]) -> str | None:
    """RFC 8601: only the topmost Authentication-Results of a trusted authserv-id counts."""
    if not trusted_authserv_ids:
        return None
    ids = {t.lower() for t in trusted_authserv_ids}
    for value in auth_results:
        authserv = value.split(";", 1)[0].strip().split()[0].lower() if value.strip() else ""
        if authserv in ids:
            found = _RESULT.search(value)
            return found.group(1).lower() if found else "none"
    return "none"
