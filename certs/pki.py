"""Certificates for the webhook: pure functions that return PEM bytes and write nothing.

The API server verifies the webhook's serving certificate against the `caBundle` of the webhook
configuration and the Service DNS name it dials (`<svc>.<ns>.svc`), so the serving certificate
carries every name a client in or out of the cluster may use. Keys are ECDSA P-256: the API
server (Go) accepts them and a handshake costs a fraction of an RSA-2048 one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVING_DAYS = 365
# Clock skew between this machine and the API server must not make a fresh certificate invalid.
BACKDATE = timedelta(minutes=5)

# RFC 1123 labels, optionally a leading "*." wildcard; lower case is what DNS compares.
_DNS_NAME = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)


class CertError(ValueError):
    """A name or host that cannot go into a certificate; str() is one sentence."""


@dataclass(frozen=True)
class PemPair:
    cert: bytes
    key: bytes


@dataclass(frozen=True)
class Bundle:
    """What `podlock certs generate` writes: the CA (for `caBundle`) and the serving pair."""

    ca_cert: bytes
    tls_cert: bytes
    tls_key: bytes


def service_dns_names(service: str, namespace: str) -> tuple[str, ...]:
    """The names a Service is reached by, shortest first."""
    return (
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    )


def subject_alt_names(service: str, namespace: str, hosts: Sequence[str]) -> list[x509.GeneralName]:
    """Service names plus extra hosts; IP addresses become IP SANs. Duplicates are dropped."""
    for part, what in ((service, "service name"), (namespace, "namespace")):
        if not part or "." in part or not _DNS_NAME.match(part):
            raise CertError(f"{what} {part!r} is not a valid DNS label")
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in (*service_dns_names(service, namespace), *hosts):
        host = host.strip()
        if host.lower() in seen:
            continue
        seen.add(host.lower())
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if len(host) > 253 or not _DNS_NAME.match(host.lower()):
            raise CertError(f"host {host!r} is neither an IP address nor a valid DNS name")
        names.append(x509.DNSName(host.lower()))
    return names


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def generate_ca(
    *,
    now: datetime,
    common_name: str = "podlock webhook CA",
    validity: timedelta = timedelta(days=CA_DAYS),
) -> PemPair:
    """A self-signed CA that may sign serving certificates only (path length 0)."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return PemPair(cert=_cert_pem(cert), key=_key_pem(key))


def generate_serving(
    ca: PemPair,
    service: str,
    namespace: str,
    hosts: Sequence[str] = (),
    *,
    now: datetime,
    validity: timedelta = timedelta(days=SERVING_DAYS),
) -> PemPair:
    """A server-auth certificate for the Service's DNS names and `hosts`, signed by `ca`."""
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, f"{service}.{namespace}.svc")]
    sans = x509.SubjectAlternativeName(subject_alt_names(service, namespace, hosts))
    return _signed_leaf(ca, subject, ExtendedKeyUsageOID.SERVER_AUTH, [sans], now, validity)


def generate_client(
    ca: PemPair,
    name: str,
    groups: Sequence[str] = (),
    *,
    now: datetime,
    validity: timedelta = timedelta(days=SERVING_DAYS),
) -> PemPair:
    """A client-auth certificate for `name` (its CN) in `groups` (its O entries, which the
    Kubernetes API server reads as the user's groups), signed by `ca`."""
    subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups]
    subject.append(x509.NameAttribute(NameOID.COMMON_NAME, name))
    return _signed_leaf(ca, subject, ExtendedKeyUsageOID.CLIENT_AUTH, [], now, validity)


def _signed_leaf(
    ca: PemPair,
    subject: list[x509.NameAttribute[str]],
    usage: x509.ObjectIdentifier,
    extensions: list[x509.ExtensionType],
    now: datetime,
    validity: timedelta,
) -> PemPair:
    """A new key and an end-entity certificate for it, for `usage`, signed by `ca`."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertError("the CA key is not an ECDSA key")
    key = _new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return PemPair(cert=_cert_pem(builder.sign(ca_key, hashes.SHA256())), key=_key_pem(key))


def generate_bundle(
    service: str,
    namespace: str,
    hosts: Sequence[str] = (),
    *,
    now: datetime,
    days: int = SERVING_DAYS,
) -> Bundle:
    """A fresh CA and a serving pair signed by it. The CA key is not kept: rotate by
    generating a new bundle and updating `caBundle` together with the Secret."""
    ca = generate_ca(now=now)
    serving = generate_serving(
        ca, service, namespace, hosts, now=now, validity=timedelta(days=days)
    )
    return Bundle(ca_cert=ca.cert, tls_cert=serving.cert, tls_key=serving.key)


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """ECDSA keys sign: a CA signs certificates and CRLs too, a serving key only handshakes."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )
