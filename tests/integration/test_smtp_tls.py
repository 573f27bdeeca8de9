"""STARTTLS on the SMTP edge (`smtp.tls_cert_file`, `smtp.require_starttls`), over a real socket
with smtplib: offered when a certificate is set, required when asked (530 before it), and the
mail sent over it becomes a ticket as any other; a certificate that does not load stops `run`
with a sentence and exit 2."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator
from email import policy
from pathlib import Path

import pytest

from tests.conftest import Database, Gateway, demo_env, mail, run_cli, serving
from tests.tls import Certificates, TlsUnavailable, make_certificates

IT = "it@acme.example"
REQ = "frank@acme.example"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    try:
        return make_certificates(tmp_path_factory.mktemp("tls"))
    except TlsUnavailable as e:  # no openssl here (.ci/run installs it), as Dovecot's tests do
        pytest.skip(str(e))


@pytest.fixture(params=[False, True], ids=["offered", "required"])
def tls_gateway(
    request: pytest.FixtureRequest, database: Database, tmp_path: Path, certs: Certificates
) -> Iterator[Gateway]:
    extra = {
        "TICKETGATE__SMTP__TLS_CERT_FILE": str(certs.cert),
        "TICKETGATE__SMTP__TLS_KEY_FILE": str(certs.key),
        "TICKETGATE__SMTP__REQUIRE_STARTTLS": "true" if request.param else "false",
    }
    with demo_env(database, tmp_path / "install", extra) as env, serving(env) as gw:
        yield gw


def _raw(subject: str) -> bytes:
    return mail(REQ, [IT], subject, "Sent over TLS.").as_bytes(policy=policy.SMTP)


def test_mail_over_starttls_becomes_a_ticket(tls_gateway: Gateway, certs: Certificates) -> None:
    """EHLO offers STARTTLS; after it the session is TLS with the configured certificate
    (verified against the test's CA for 127.0.0.1) and the mail is a ticket."""
    with smtplib.SMTP("127.0.0.1", tls_gateway.port, timeout=30) as s:
        s.ehlo("client.example")
        assert s.has_extn("starttls")
        code, _ = s.starttls(context=ssl.create_default_context(cafile=str(certs.ca)))
        assert code == 220
        assert isinstance(s.sock, ssl.SSLSocket) and s.sock.version() is not None
        s.ehlo("client.example")
        assert not s.has_extn("starttls")  # not offered twice
        s.sendmail(REQ, [IT], _raw("Over STARTTLS"))
    tls_gateway.process()
    assert [t["subject"] for t in tls_gateway.tickets()] == ["Over STARTTLS"]


def test_plain_mail_is_refused_only_when_tls_is_required(tls_gateway: Gateway) -> None:
    """Without STARTTLS: with `require_starttls`, MAIL gets 530 and nothing is queued; without
    it, the plain mail is accepted as before."""
    required = tls_gateway.env.app.settings.smtp.require_starttls
    with smtplib.SMTP("127.0.0.1", tls_gateway.port, timeout=30) as s:
        s.ehlo("client.example")
        code, text = s.mail(REQ)
        if required:
            assert code == 530 and b"STARTTLS" in text
        else:
            assert code == 250
            s.rcpt(IT)
            assert s.data(_raw("Plain"))[0] == 250
    tls_gateway.process()
    assert [t["subject"] for t in tls_gateway.tickets()] == ([] if required else ["Plain"])


def test_a_certificate_that_does_not_load_stops_run(tmp_path: Path, certs: Certificates) -> None:
    """`run` with a key that is not the certificate's: exit 2 and a sentence naming the file,
    before any port opens."""
    from tests.conftest import free_port

    env = {
        "TICKETGATE__DATABASE__URL": f"sqlite:///{tmp_path / 'tg.db'}",
        "TICKETGATE__MAIL__SECRET": "test-secret-0123456789",
        "TICKETGATE__SMTP__PORT": str(free_port()),
        "TICKETGATE__SMTP__TLS_CERT_FILE": str(certs.cert),
        "TICKETGATE__SMTP__TLS_KEY_FILE": str(certs.ca),  # a certificate, not a key
    }
    assert run_cli(env, "init", cwd=tmp_path).returncode == 0
    r = run_cli(env, "run", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "[smtp] tls_cert_file: cannot load" in r.stderr and str(certs.cert) in r.stderr
    for key in ("TICKETGATE__SMTP__TLS_CERT_FILE", "TICKETGATE__SMTP__TLS_KEY_FILE"):
        env.pop(key)
    env["TICKETGATE__SMTP__REQUIRE_STARTTLS"] = "true"
    r = run_cli(env, "run", cwd=tmp_path)
    assert r.returncode == 2 and "require_starttls needs tls_cert_file" in r.stderr


def test_commands_sent_with_starttls_in_the_clear_are_not_run_inside_tls(
    tls_gateway: Gateway, certs: Certificates
) -> None:
    """STARTTLS command injection (CVE-2011-0411, CVE-2024-34083 in aiosmtpd): a MAIL FROM
    pipelined after STARTTLS in the same clear-text packet is not taken as said inside the
    TLS session, so a RCPT there still needs its own MAIL (503)."""
    import socket

    def answer(f: object) -> bytes:
        lines = []
        while True:
            line = f.readline()  # type: ignore[attr-defined]
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    with socket.create_connection(("127.0.0.1", tls_gateway.port), timeout=30) as raw:
        f = raw.makefile("rb")
        assert answer(f).startswith(b"220")
        raw.sendall(b"EHLO client.example\r\n")
        assert answer(f).startswith(b"250")
        raw.sendall(b"STARTTLS\r\nMAIL FROM:<mallory@evil.example>\r\n")
        assert answer(f).startswith(b"220")
        context = ssl.create_default_context(cafile=str(certs.ca))
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            g = tls.makefile("rb")
            tls.sendall(b"EHLO client.example\r\n")
            assert answer(g).startswith(b"250")
            tls.sendall(f"RCPT TO:<{IT}>\r\n".encode())
            assert answer(g).startswith(b"503")
            tls.sendall(b"QUIT\r\n")
    assert tls_gateway.tickets() == []
