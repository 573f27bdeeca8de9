"""IMAP intake over TLS against a real Dovecot (issue 15): `tls = "ssl"` (the default) and
`"starttls"` verify the server's certificate with the system's trust store, as a client should;
a certificate the machine does not trust is a clear failure and the mail stays in the mailbox.

The Dovecot here has a certificate for 127.0.0.1 from a CA of its own; a test trusts that CA
the standard way, with OpenSSL's `SSL_CERT_FILE`, which `ssl.create_default_context` reads."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import Gateway, mail, run_cli
from tests.dovecot import PASSWORD, Dovecot, running_dovecot
from tests.integration.test_imap_intake import IT, REQ, desk


@pytest.fixture(scope="module")
def tls_dovecot() -> Iterator[Dovecot]:
    with running_dovecot(tls=True) as d:
        yield d


@pytest.fixture
def trusted(tls_dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch) -> Dovecot:
    """The test's Dovecot, its CA trusted by this process."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_dovecot.ca_file))
    return tls_dovecot


@pytest.mark.parametrize("tls", ["ssl", "starttls"])
def test_mail_is_fetched_over_a_verified_tls_connection(
    sqlite_gateway: Gateway, trusted: Dovecot, tls: str
) -> None:
    """Implicit TLS (the imaps port) and STARTTLS (the imap port): the watcher logs in over an
    encrypted, verified connection, and the mail becomes a ticket and leaves the folder."""
    port = trusted.tls_port if tls == "ssl" else trusted.port
    d = desk(sqlite_gateway, trusted, tls=tls, port=port)
    d.append(mail(REQ, [IT], f"Over {tls}", "Sent through TLS.", msgid=f"<{tls}@client.example>"))
    conn = d.watcher.open()
    try:
        sock = conn.client.socket()
        assert sock.version() is not None and sock.version().startswith("TLS")  # type: ignore[attr-defined]
    finally:
        conn.close()
    d.cycle()
    assert [t["subject"] for t in sqlite_gateway.tickets()] == [f"Over {tls}"]
    assert (d.count(), d.count("processed")) == (0, 1)


def test_an_untrusted_certificate_is_refused_and_the_mail_stays(
    sqlite_gateway: Gateway, tls_dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the CA in the trust store: the connection fails on the certificate (no login,
    no password sent), `imap check` says so and exits 1, and the mail is still in the folder."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    d = desk(sqlite_gateway, tls_dovecot, tls="ssl", port=tls_dovecot.tls_port)
    d.append(mail(REQ, [IT], "Waits", "x", msgid="<untrusted@client.example>"))
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        d.watcher.open()
    box = {
        "name": "it-desk",
        "host": "127.0.0.1",
        "port": tls_dovecot.tls_port,
        "tls": "ssl",
        "user": "it",
        "password": PASSWORD,
        "folder": d.box.folder,
    }
    env = {**sqlite_gateway.env.env, "TICKETGATE__IMAP__MAILBOXES": json.dumps([box])}
    env.pop("SSL_CERT_FILE", None)
    r = run_cli(env, "imap", "check", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    [report] = json.loads(r.stdout)
    assert report["ok"] is False and "certificate verify failed" in report["error"]
    # Trusted, the same check passes: the failure was the certificate, nothing else.
    r = run_cli({**env, "SSL_CERT_FILE": str(tls_dovecot.ca_file)}, "imap", "check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sqlite_gateway.tickets() == [] and d.count() == 1
