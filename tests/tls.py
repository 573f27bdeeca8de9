"""Certificates for tests of TLS (IMAP, SMTP STARTTLS): a CA of the test's own and a server
certificate for 127.0.0.1 it signed, made with the openssl command. A test trusts the CA
through `ssl.create_default_context(cafile=...)` or OpenSSL's `SSL_CERT_FILE`."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class TlsUnavailable(RuntimeError):
    """openssl is missing or failed; the message says why."""


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA's certificate (PEM): what a client trusts
    cert: Path  # the server's certificate for 127.0.0.1 (PEM)
    key: Path  # its key (PEM, unencrypted)


def make_certificates(folder: Path) -> Certificates:
    """A CA and a 127.0.0.1 server certificate in ``folder`` (made if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TlsUnavailable("openssl is not installed: no certificate for TLS")

    def run(command: str, subject: str = "") -> None:
        """One openssl command (words without spaces), then ``-subj`` when given."""
        args = [openssl, *command.split(), *(("-subj", subject) if subject else ())]
        try:
            subprocess.run(args, cwd=folder, check=True, capture_output=True, timeout=60)
        except subprocess.CalledProcessError as e:
            raise TlsUnavailable(f"openssl {command.split()[0]} failed: {e.stderr!r}") from e

    run("req -x509 -newkey rsa:2048 -nodes -days 2 -keyout ca.key -out ca.pem", "/CN=test CA")
    run("req -newkey rsa:2048 -nodes -keyout server.key -out server.csr", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n", encoding="ascii")
    run(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2"
        " -extfile san.ext -out server.pem"
    )
    return Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key")
