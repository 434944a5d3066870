"""TLS for the SMTP tests: a throwaway self-signed certificate and a STARTTLS aiosmtpd server.

Test modules take the fixtures by assigning them (``starttls_server =
tls_fixtures.starttls_server``), which pytest finds and ruff does not mistake for
a shadowed import.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from smtp_fixtures import FaultyHandler, free_port


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(certificate, key) for CN=localhost, valid for 127.0.0.1: its own CA, trusted by nobody."""
    if not shutil.which("openssl"):
        pytest.fail("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def starttls_server(self_signed: tuple[Path, Path]) -> Iterator[tuple[int, FaultyHandler]]:
    """(port, handler) of a server on 127.0.0.1 that requires STARTTLS with that certificate."""
    cert, key = self_signed
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler = FaultyHandler()
    port = free_port()
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True
    )
    controller.start()
    try:
        yield port, handler
    finally:
        controller.stop()
