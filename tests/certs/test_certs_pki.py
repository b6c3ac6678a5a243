"""certs/: the generated CA and serving certificate, checked with the cryptography library and
with a real TLS handshake (Python's ssl verifies the chain and the host name like a client)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import ssl
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.cli import run
from certs.pki import (
    BACKDATE,
    Bundle,
    CertError,
    generate_bundle,
    service_dns_names,
    subject_alt_names,
)

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return generate_bundle("podlock", "podlock-system", ["127.0.0.1", "::1", "Localhost"], now=NOW)


def _sans(pem: bytes) -> tuple[list[str], list[str]]:
    cert = x509.load_pem_x509_certificate(pem)
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = ext.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    return dns, ips


def test_serving_cert_names(bundle: Bundle) -> None:
    dns, ips = _sans(bundle.tls_cert)
    assert dns == [
        "podlock",
        "podlock.podlock-system",
        "podlock.podlock-system.svc",
        "podlock.podlock-system.svc.cluster.local",
        "localhost",
    ]
    assert ips == ["127.0.0.1", "::1"]


def test_serving_cert_is_signed_by_ca_and_valid_now(bundle: Bundle) -> None:
    ca = x509.load_pem_x509_certificate(bundle.ca_cert)
    leaf = x509.load_pem_x509_certificate(bundle.tls_cert)
    leaf.verify_directly_issued_by(ca)
    assert leaf.not_valid_before_utc == NOW - BACKDATE
    assert leaf.not_valid_after_utc == NOW + timedelta(days=365)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)


@pytest.mark.parametrize(
    ("service", "namespace", "hosts", "problem"),
    [
        ("", "ns", [], "service name ''"),
        ("svc", "", [], "namespace ''"),
        ("Svc", "ns", [], "service name 'Svc'"),
        ("s.vc", "ns", [], "service name 's.vc'"),
        ("svc", "ns", ["bad host"], "host 'bad host'"),
        ("svc", "ns", ["-leading.dash"], "host '-leading.dash'"),
        ("svc", "ns", ["a" * 64 + ".example"], "host 'aaaa"),
    ],
)
def test_bad_names_are_refused_with_one_sentence(
    service: str, namespace: str, hosts: list[str], problem: str
) -> None:
    with pytest.raises(CertError) as err:
        subject_alt_names(service, namespace, hosts)
    assert str(err.value).startswith(problem)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("hosts", "dns_extra", "ips"),
    [
        ([], [], []),
        (["10.0.0.1"], [], ["10.0.0.1"]),
        (["webhook.example.com", "*.example.org"], ["webhook.example.com", "*.example.org"], []),
        (["podlock.ns", "fd00::1"], [], ["fd00::1"]),  # duplicate of a Service name is dropped
    ],
)
def test_extra_hosts(hosts: list[str], dns_extra: list[str], ips: list[str]) -> None:
    names = subject_alt_names("podlock", "ns", hosts)
    dns = [n.value for n in names if isinstance(n, x509.DNSName)]
    got_ips = [n.value for n in names if isinstance(n, x509.IPAddress)]
    assert dns == [*service_dns_names("podlock", "ns"), *dns_extra]
    assert got_ips == [ipaddress.ip_address(ip) for ip in ips]


def test_cli_writes_files_with_modes(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    args = argparse.Namespace(
        certs_command="generate", out=str(out), service="wh", namespace="sec", host=["127.0.0.1"]
    )
    assert run(args) == 0
    assert sorted(os.listdir(out)) == ["ca.crt", "tls.crt", "tls.key"]
    assert stat.S_IMODE((out / "tls.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "tls.crt").stat().st_mode) == 0o644
    dns, ips = _sans((out / "tls.crt").read_bytes())
    assert dns[-1] == "wh.sec.svc.cluster.local"
    assert ips == ["127.0.0.1"]


def test_cli_bad_host_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(
        certs_command="generate", out=str(tmp_path), service="wh", namespace="sec", host=["a b"]
    )
    assert run(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "host 'a b'" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "server_hostname", ["podlock.podlock-system.svc", "podlock.podlock-system", "localhost"]
)
def test_real_handshake_verifies_chain_and_name(
    bundle: Bundle, tmp_path: Path, server_hostname: str
) -> None:
    """A verifying client accepts the pair for every Service name (like the API server)."""
    (tmp_path / "tls.crt").write_bytes(bundle.tls_cert)
    (tmp_path / "tls.key").write_bytes(bundle.tls_key)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client_ctx = ssl.create_default_context(cadata=bundle.ca_cert.decode())

    a, b = socket.socketpair()
    with a, b:
        server = server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
        t = threading.Thread(target=server.do_handshake)
        t.start()
        with server, client_ctx.wrap_socket(b, server_hostname=server_hostname) as client:
            assert client.version() in ("TLSv1.2", "TLSv1.3")
            t.join(5)
