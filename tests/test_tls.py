"""TLS against a real HTTPS emulator with a certificate made here: an untrusted certificate
is a settings problem (named, not retried); the same server with its CA bundle just works."""

from __future__ import annotations

import datetime
import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from cml_tasks import CMLClient, CMLSettings, CMLTLSError, RetryPolicy
from cml_tasks._retry import is_retryable
from cml_tasks.cli import ExitCode, app
from cml_tasks.emulator import DEFAULT_V1_KEY, Emulator


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (certificate, key), PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cml-emulator-test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Emulator, Path]]:
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    with Emulator(ssl_certfile=str(cert), ssl_keyfile=str(key)) as emu:
        yield emu, cert


def test_untrusted_certificate_is_not_retried_and_names_the_settings(
    tls: tuple[Emulator, Path],
) -> None:
    emu, _ = tls
    assert emu.url.startswith("https://")
    slow_retries = RetryPolicy(attempts=5, timeout=60, wait_initial=1, wait_max=1)
    settings = CMLSettings.load(_env_file=None, api_key=DEFAULT_V1_KEY)
    started = time.monotonic()
    with CMLClient(settings, retry=slow_retries) as client, pytest.raises(CMLTLSError) as caught:
        client.start(emu.job_url("alice", "risk-analysis", "208"))
    assert time.monotonic() - started < 1  # a retry would have waited ~1 s first
    assert "CML_CA_BUNDLE" in str(caught.value) and "CML_VERIFY_TLS" in str(caught.value)
    assert not is_retryable(caught.value)
    assert emu.runs() == []


def test_untrusted_certificate_on_the_command_line(tls: tuple[Emulator, Path]) -> None:
    emu, _ = tls
    result = CliRunner().invoke(
        app,
        ["start", emu.job_url("alice", "risk-analysis", "208")],
        env={"CML_API_KEY": DEFAULT_V1_KEY},
    )
    assert result.exit_code == ExitCode.SERVER, result.output
    assert "not trusted" in result.output and "CML_CA_BUNDLE" in result.output
    assert "Traceback" not in result.output


def test_the_ca_bundle_makes_it_trusted(tls: tuple[Emulator, Path]) -> None:
    emu, cert = tls
    settings = CMLSettings.load(_env_file=None, api_key=DEFAULT_V1_KEY, ca_bundle=cert)
    with CMLClient(settings) as client:
        run = client.start(emu.job_url("alice", "risk-analysis", "208"))
    assert run.engine_id == emu.runs()[-1]["id"]
