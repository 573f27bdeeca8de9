"""The DMARC verdict our own MTA wrote in Authentication-Results (RFC 8601), read by `authres`."""

from __future__ import annotations

from collections.abc import Sequence

import authres  # type: ignore[import-untyped]  # the package ships no type information

# authres rebuilds the remaining text after every token, so its time grows with the square of a
# header's length; real Authentication-Results headers are well under 2 KiB. A longer one that
# names a trusted authserv-id is treated as unparseable ("none"), which bounds the work per mail.
MAX_PARSED_CHARS = 8 * 1024


def dmarc_verdict(auth_results: Sequence[str], trusted_authserv_ids: Sequence[str]) -> str | None:
    """The `dmarc` result of the topmost Authentication-Results whose authserv-id is trusted.

    `auth_results` holds the header values topmost first. RFC 8601 §5: only a header added by
    our own border MTA (a trusted authserv-id, compared case-insensitively; a version number
    after it is allowed) says anything, and the topmost such header is the one it added.
    Within it only a resinfo whose method is `dmarc` counts: comments, `reason=` values and
    property values are text the sender can choose and never decide the verdict.

    None when no authserv-id is trusted (nothing is checked). Otherwise "none" when no header
    is trusted, when the trusted header has no dmarc resinfo, and when a header that mentions a
    trusted authserv-id anywhere cannot be parsed (so it is never read as "pass"); else
    the dmarc result, lower-case ("pass", "fail", "none", "temperror", …): with several dmarc
    resinfos, the first that is not "pass", and "pass" only when all of them pass.
    """
    if not trusted_authserv_ids:
        return None
    trusted = {t.strip().lower() for t in trusted_authserv_ids if t.strip()}
    for value in auth_results:
        lowered = value.lower()
        # A header that does not even mention a trusted id cannot carry one as its
        # authserv-id: skip it unparsed (it is often the sender's own text).
        if not any(t in lowered for t in trusted):
            continue
        if len(value) > MAX_PARSED_CHARS:
            return "none"
        try:
            header = authres.parse_value(value.strip())
        except Exception:  # noqa: BLE001 - its SyntaxError, RecursionError on deep comments, …
            return "none"  # unreadable is never "pass"
        if header.authserv_id not in trusted:
            continue
        results = [str(r.result) for r in header.results if r.method == "dmarc"]
        if not results:
            return "none"
        # One dmarc resinfo is the rule. Several (one per From domain, or a sender's quoted
        # local-part that closed an MTA comment early and smuggled in a resinfo) pass only
        # together: the real one is still there, and it is not outvoted.
        return next((r for r in results if r != "pass"), "pass")
    return "none"
