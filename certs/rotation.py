"""Self-managed webhook certificates: what to do, decided from what is stored and the clock.

`plan()` is pure: given the Secret's contents, the `caBundle` each webhook entry carries and the
time, it says what the Secret must hold, what every `caBundle` must be, and which pair to serve.
The API calls and the files are certs/keeper.py's.

The Secret holds the signing CA and the serving pair it signed; during a CA rotation also the
next CA; and for `retire_delay` after a rotation, the retired CA's certificate. No review fails
while certificates change, because a replica only ever serves a pair whose CA every `caBundle`
already trusts:

- The serving pair is renewed with a third of its life left, signed by the same CA: trusted.
- The CA is renewed with a third of its life left, in two steps. First the next CA is made and
  added to every `caBundle` beside the current one; nothing is signed with it yet. Once this
  code has seen it in every `caBundle` (the time is recorded in the Secret) and `trust_delay`
  has passed, so that every API server has picked the bundle up, it becomes the signing CA and
  a new serving pair is issued from it. The old CA stays in `caBundle` for `retire_delay`, so a
  replica that still serves the old pair keeps working until it reloads (each reads the Secret
  every check interval, seconds to a minute); then it is dropped, so a CA rotated because its
  key leaked stops being trusted within the hour.
- When the Secret is lost (deleted, or its CA unusable), a new CA is made and the CAs every
  `caBundle` held are kept trusted for `retire_delay` the same way, so replicas that have not
  yet read the new Secret keep working. This also makes a switch from another certificate
  source to self-managed certificates seamless.

`podlock certs rotate` asks for either step early through an annotation on the Secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from certs.pki import PemPair, generate_ca, generate_serving, subject_alt_names

CA_VALIDITY = timedelta(days=5 * 365)
SERVING_VALIDITY = timedelta(days=90)
RENEW_AT = 2 / 3  # of a certificate's lifetime: renewed with a third of it left
# From the first sight of the next CA in every caBundle to signing with it: an API server
# applies a changed webhook configuration within seconds; minutes cover a slow one.
TRUST_DELAY = timedelta(minutes=5)
# From a CA's retirement to dropping it from caBundle: every replica has read the Secret (and
# reloaded) many times over by then.
RETIRE_DELAY = timedelta(hours=1)

# The Secret's keys. tls.crt/tls.key make it a valid kubernetes.io/tls Secret too.
TLS_CERT, TLS_KEY = "tls.crt", "tls.key"
CA_CERT, CA_KEY = "ca.crt", "ca.key"
NEXT_CA_CERT, NEXT_CA_KEY = "next-ca.crt", "next-ca.key"
RETIRED_CAS = "retired-ca.crt"  # PEM certificates, concatenated, dropped at RETIRED_UNTIL
# The annotations podlock reads and writes on the Secret (all under this prefix).
ANNOTATION_PREFIX = "podlock.io/"
ROTATE = "podlock.io/rotate"  # set by `podlock certs rotate`: "serving" or "ca"
NEXT_CA_TRUSTED_SINCE = "podlock.io/next-ca-trusted-since"  # ISO 8601, UTC
RETIRED_UNTIL = "podlock.io/retired-cas-trusted-until"  # ISO 8601, UTC

Rotation = Literal["serving", "ca"]
ROTATIONS: tuple[Rotation, ...] = get_args(Rotation)


@dataclass(frozen=True)
class Stored:
    """A Secret's contents: its data (decoded) and its annotations under ANNOTATION_PREFIX."""

    data: Mapping[str, bytes]
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """Whom the serving certificate names and how long certificates live. The names must be
    valid DNS labels (`certs.pki.subject_alt_names` checks them; the keeper does at start)."""

    service: str
    namespace: str
    hosts: tuple[str, ...] = ()  # extra names or IP addresses, for a webhook called by URL
    ca_validity: timedelta = CA_VALIDITY
    serving_validity: timedelta = SERVING_VALIDITY
    trust_delay: timedelta = TRUST_DELAY
    retire_delay: timedelta = RETIRE_DELAY


@dataclass(frozen=True)
class Plan:
    stored: Stored  # what the Secret must hold
    write: bool  # whether that differs from what was read (nothing read: create it)
    bundle: bytes  # what every webhook entry's caBundle must be: PEM, signing CA first
    serving: PemPair  # the pair to serve
    events: tuple[str, ...]  # what changed, one sentence each, for the log


@dataclass(frozen=True)
class _Pair:
    pem: PemPair
    cert: x509.Certificate


def plan(
    current: Stored | None,
    bundles: Mapping[str, Sequence[bytes]],
    now: datetime,
    policy: Policy,
) -> Plan:
    """What the Secret, the caBundles and the served pair must be at `now`.

    `bundles` maps each webhook configuration that exists to the caBundle of each of its
    entries (b"" where none is set).
    """
    data = dict(current.data) if current else {}
    annotations = dict(current.annotations) if current else {}
    events: list[str] = []
    requested = annotations.pop(ROTATE, None)
    if requested is not None and requested not in ROTATIONS:
        events.append(f"ignored {ROTATE}={requested!r}: expected one of {', '.join(ROTATIONS)}")
        requested = None

    ca = _pair(data, CA_CERT, CA_KEY, now)
    retiring: list[x509.Certificate] = []  # CAs that stop signing now but stay trusted a while
    if ca is None:
        retiring = _cas_trusted_by(bundles, now)
        if current is not None:
            events.append(f"the Secret holds no usable CA ({CA_CERT}, {CA_KEY}): made a new one")
        ca = _new_ca(now, policy)
        data[CA_CERT], data[CA_KEY] = ca.pem.cert, ca.pem.key
        for key in (NEXT_CA_CERT, NEXT_CA_KEY):
            data.pop(key, None)
        annotations.pop(NEXT_CA_TRUSTED_SINCE, None)
        events.append(f"made a CA valid until {_until(ca)}")

    next_ca = _pair(data, NEXT_CA_CERT, NEXT_CA_KEY, now)
    if next_ca is None and (NEXT_CA_CERT in data or NEXT_CA_KEY in data):
        events.append("dropped an unusable next CA")
        data.pop(NEXT_CA_CERT, None)
        data.pop(NEXT_CA_KEY, None)
        annotations.pop(NEXT_CA_TRUSTED_SINCE, None)
    if next_ca is None and (requested == "ca" or _due(ca.cert, now)):
        next_ca = _new_ca(now, policy)
        data[NEXT_CA_CERT], data[NEXT_CA_KEY] = next_ca.pem.cert, next_ca.pem.key
        annotations.pop(NEXT_CA_TRUSTED_SINCE, None)
        events.append(
            f"made the next CA, valid until {_until(next_ca)}: trusted from now on, "
            f"signing once every caBundle has carried it for {policy.trust_delay}"
        )

    if next_ca is not None:
        since = _parse_time(annotations.get(NEXT_CA_TRUSTED_SINCE))
        if since is None and _all_trust(bundles, next_ca.cert):
            since = now
            annotations[NEXT_CA_TRUSTED_SINCE] = now.isoformat()
            events.append("every caBundle carries the next CA")
        if since is not None and now >= since + policy.trust_delay:
            retiring.insert(0, ca.cert)
            ca = next_ca
            next_ca = None
            data[CA_CERT], data[CA_KEY] = ca.pem.cert, ca.pem.key
            del data[NEXT_CA_CERT], data[NEXT_CA_KEY]
            annotations.pop(NEXT_CA_TRUSTED_SINCE, None)
            events.append(
                f"the next CA signs from now on; the previous one stays trusted for "
                f"{policy.retire_delay}"
            )
    retired = _retire(data, annotations, [c for c in retiring if c != ca.cert], now, policy, events)

    serving = _pair(data, TLS_CERT, TLS_KEY, now)
    why = _serving_problem(serving, ca, now, policy, requested == "serving")
    if why is not None:
        serving = _new_serving(ca, now, policy)
        data[TLS_CERT], data[TLS_KEY] = serving.pem.cert, serving.pem.key
        events.append(f"issued a serving certificate valid until {_until(serving)} ({why})")
    assert serving is not None  # _serving_problem says why whenever it is None

    trusted = [ca.cert, *([next_ca.cert] if next_ca else []), *retired]
    stored = Stored(data=data, annotations=annotations)
    return Plan(
        stored=stored,
        write=current is None or stored != current,
        bundle=b"".join(_pem(c) for c in trusted),
        serving=serving.pem,
        events=tuple(events),
    )


def _retire(
    data: dict[str, bytes],
    annotations: dict[str, str],
    retiring: Sequence[x509.Certificate],
    now: datetime,
    policy: Policy,
    events: list[str],
) -> list[x509.Certificate]:
    """The retired CAs still trusted, stored back: `retiring` joins them for `retire_delay`;
    all are dropped once that has passed, an expired one at once (it verifies nothing)."""
    stored = _certificates(data.get(RETIRED_CAS, b""))
    until = _parse_time(annotations.get(RETIRED_UNTIL))
    if stored and until is not None and now >= until:
        events.append(f"no longer trusts {len(stored)} retired CA(s)")
        stored = []
    retired = [c for c in stored if now < _not_after(c)]
    if len(retired) < len(stored):
        events.append(f"no longer trusts {len(stored) - len(retired)} expired retired CA(s)")
    if retiring:
        retired = [*retiring, *(c for c in retired if c not in retiring)]
        until = now + policy.retire_delay
    if not retired:
        data.pop(RETIRED_CAS, None)
        annotations.pop(RETIRED_UNTIL, None)
        return []
    data[RETIRED_CAS] = b"".join(_pem(c) for c in retired)
    if until is None:  # missing or unreadable (an edited Secret): never drop early
        until = now + policy.retire_delay
        events.append(f"retired CA(s) without a deadline: trusted until {until.isoformat()}")
    annotations[RETIRED_UNTIL] = until.isoformat()
    return retired


def _cas_trusted_by(
    bundles: Mapping[str, Sequence[bytes]], now: datetime
) -> list[x509.Certificate]:
    """The CA certificates, valid now, that the caBundles hold, each once."""
    found: list[x509.Certificate] = []
    for entries in bundles.values():
        for bundle in entries:
            for cert in _certificates(bundle):
                try:
                    is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
                except x509.ExtensionNotFound:
                    is_ca = False
                valid = cert.not_valid_before_utc <= now < _not_after(cert)
                if is_ca and valid and cert not in found:
                    found.append(cert)
    return found


def _serving_problem(
    serving: _Pair | None, ca: _Pair, now: datetime, policy: Policy, requested: bool
) -> str | None:
    """Why the stored serving pair must be replaced, or None when it may stay."""
    if serving is None:
        return "none usable was stored"
    if requested:
        return "rotation requested"
    try:
        serving.cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return "the stored one is not signed by the signing CA"
    if _due(serving.cert, now):
        return "the stored one has a third of its life left"
    wanted = set(subject_alt_names(policy.service, policy.namespace, policy.hosts))
    try:
        names = serving.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return "the stored one names no host"
    if set(names.value) != wanted:
        return "the stored one does not carry exactly the names wanted"
    return None


def _new_ca(now: datetime, policy: Policy) -> _Pair:
    # The date in the name tells the CAs of a rotation apart (openssl x509 -subject).
    name = f"podlock webhook CA {now:%Y-%m-%dT%H:%M:%SZ}"
    pem = generate_ca(now=now, common_name=name, validity=policy.ca_validity)
    return _Pair(pem, x509.load_pem_x509_certificate(pem.cert))


def _new_serving(ca: _Pair, now: datetime, policy: Policy) -> _Pair:
    # Never past the CA's own end: a certificate its issuer outlives nobody would verify.
    validity = min(policy.serving_validity, _not_after(ca.cert) - now)
    pem = generate_serving(
        ca.pem, policy.service, policy.namespace, policy.hosts, now=now, validity=validity
    )
    return _Pair(pem, x509.load_pem_x509_certificate(pem.cert))


def _pair(data: Mapping[str, bytes], cert_key: str, key_key: str, now: datetime) -> _Pair | None:
    """The stored pair if both parts parse, belong together and the certificate is valid now."""
    try:
        cert = x509.load_pem_x509_certificate(data[cert_key])
        key = serialization.load_pem_private_key(data[key_key], password=None)
    except (KeyError, ValueError, TypeError):
        return None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        return None
    if not cert.not_valid_before_utc <= now < _not_after(cert):
        return None
    return _Pair(PemPair(cert=data[cert_key], key=data[key_key]), cert)


def _due(cert: x509.Certificate, now: datetime) -> bool:
    start, end = cert.not_valid_before_utc, _not_after(cert)
    return now >= start + (end - start) * RENEW_AT


def _all_trust(bundles: Mapping[str, Sequence[bytes]], cert: x509.Certificate) -> bool:
    return all(cert in _certificates(bundle) for entries in bundles.values() for bundle in entries)


def _certificates(pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:  # empty, or not PEM
        return []


def _parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _not_after(cert: x509.Certificate) -> datetime:
    return cert.not_valid_after_utc


def _until(pair: _Pair) -> str:
    return _not_after(pair.cert).isoformat()


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
