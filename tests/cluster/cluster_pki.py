"""The cluster's PKI: one CA for every certificate, podlock's own `certs/pki.py` for the CA and
the API server's serving certificate, and client certificates (user = CN, groups = O), which
podlock itself never needs. Pure functions returning PEM bytes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs.pki import PemPair, generate_ca, generate_client, generate_serving

__all__ = ["PemPair", "apiserver_serving", "client", "cluster_ca", "now", "service_account_keys"]

# The API server's Service IP is the first address of --service-cluster-ip-range.
SERVICE_CIDR = "10.96.0.0/24"
KUBERNETES_SERVICE_IP = "10.96.0.1"


def cluster_ca(now: datetime) -> PemPair:
    return generate_ca(now=now, common_name="podlock test cluster CA")


def apiserver_serving(ca: PemPair, now: datetime) -> PemPair:
    """Valid for kubernetes.default.svc… (in-cluster clients) and loopback (everyone else)."""
    hosts = ("127.0.0.1", "localhost", KUBERNETES_SERVICE_IP)
    return generate_serving(ca, "kubernetes", "default", hosts, now=now)


def client(ca: PemPair, user: str, groups: Sequence[str] = (), *, now: datetime) -> PemPair:
    """A client-auth certificate the API server maps to `user` in `groups`."""
    return generate_client(ca, user, groups, now=now, validity=timedelta(days=2))


def service_account_keys() -> PemPair:
    """The key pair the API server signs and verifies service-account tokens with (ES256);
    `cert` holds the public key, not a certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return PemPair(cert=public, key=private)


def now() -> datetime:
    return datetime.now(UTC)
