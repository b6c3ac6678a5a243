"""certs/rotation.py: the self-managed certificate plan, over a table of stored states with real
certificates, and over years of simulated time, verified the way the API server verifies a
webhook (the serving chain against caBundle, for the Service's DNS name, at that moment)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from certs.pki import PemPair, generate_ca, generate_serving
from certs.rotation import (
    CA_CERT,
    CA_KEY,
    NEXT_CA_CERT,
    NEXT_CA_KEY,
    NEXT_CA_TRUSTED_SINCE,
    RETIRED_CAS,
    RETIRED_UNTIL,
    ROTATE,
    TLS_CERT,
    TLS_KEY,
    Policy,
    Stored,
    plan,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
POLICY = Policy(service="podlock", namespace="podlock-system")
DNS_NAME = "podlock.podlock-system.svc"
CONFIGS = ("MutatingWebhookConfiguration/podlock", "ValidatingWebhookConfiguration/podlock")


def verifies(serving: bytes, bundle: bytes, at: datetime) -> bool:
    """Whether a client trusting `bundle` accepts `serving` for the Service's name at `at`."""
    try:
        roots = x509.load_pem_x509_certificates(bundle)
    except ValueError:
        return False
    verifier = (
        PolicyBuilder().store(Store(roots)).time(at).build_server_verifier(x509.DNSName(DNS_NAME))
    )
    try:
        verifier.verify(x509.load_pem_x509_certificate(serving), [])
    except VerificationError:
        return False
    return True


def stored_from(ca: PemPair, serving: PemPair, **extra: bytes) -> dict[str, bytes]:
    return {CA_CERT: ca.cert, CA_KEY: ca.key, TLS_CERT: serving.cert, TLS_KEY: serving.key, **extra}


def bundles_of(bundle: bytes) -> dict[str, list[bytes]]:
    return {config: [bundle, bundle] for config in CONFIGS}


# Real certificates, made once: CAs at several ages, and serving pairs signed by them.
CA = generate_ca(now=NOW - timedelta(days=30))
OLD_CA = generate_ca(now=NOW - timedelta(days=4 * 365), validity=timedelta(days=5 * 365))
NEXT = generate_ca(now=NOW - timedelta(hours=1))
EXPIRED_CA = generate_ca(now=NOW - timedelta(days=400), validity=timedelta(days=365))
OTHER_CA = generate_ca(now=NOW)
SERVING = generate_serving(CA, "podlock", "podlock-system", now=NOW - timedelta(days=10))
OLD_SERVING = generate_serving(
    CA, "podlock", "podlock-system", now=NOW - timedelta(days=70), validity=timedelta(days=90)
)
SERVING_OF_OLD_CA = generate_serving(OLD_CA, "podlock", "podlock-system", now=NOW)
WRONG_NAME = generate_serving(CA, "other", "podlock-system", now=NOW)
FOREIGN = generate_serving(OTHER_CA, "podlock", "podlock-system", now=NOW)
SINCE = (NOW - timedelta(minutes=6)).isoformat()  # longer ago than the 5-minute trust delay
JUST_NOW = (NOW - timedelta(minutes=1)).isoformat()
LATER = (NOW + timedelta(minutes=30)).isoformat()
AN_HOUR_ON = {RETIRED_UNTIL: (NOW + timedelta(hours=1)).isoformat()}  # the default retire delay

GOOD = stored_from(CA, SERVING)
TRUSTS_CA = bundles_of(CA.cert)
TRUSTS_BOTH = bundles_of(CA.cert + NEXT.cert)
TRUSTS_OLD_AND_NEXT = bundles_of(OLD_CA.cert + NEXT.cert)

# (case, data, annotations, caBundles seen, what must happen)
# Each expectation: which CA signs after the plan, whether the serving pair is new, the CAs the
# bundle holds (in order), whether the Secret is written, and the annotations left.
Case = tuple[str, dict[str, bytes] | None, dict[str, str], Mapping[str, Sequence[bytes]]]
CASES: list[tuple[Case, tuple[str, bool, tuple[str, ...], bool, dict[str, str]]]] = [
    (("nothing stored", None, {}, {}), ("new", True, ("new",), True, {})),
    # A lost Secret: the CAs caBundle holds stay trusted a while (replicas still serve them).
    (("Secret lost", None, {}, TRUSTS_CA), ("new", True, ("new", "CA"), True, AN_HOUR_ON)),
    (
        ("Secret lost, caBundle holds no CA", None, {}, bundles_of(SERVING.cert)),
        ("new", True, ("new",), True, {}),
    ),
    (("all current", GOOD, {}, TRUSTS_CA), ("CA", False, ("CA",), False, {})),
    (("configurations missing", GOOD, {}, {}), ("CA", False, ("CA",), False, {})),
    (("caBundle empty", GOOD, {}, bundles_of(b"")), ("CA", False, ("CA",), False, {})),
    (
        ("serving has a third left", stored_from(CA, OLD_SERVING), {}, TRUSTS_CA),
        ("CA", True, ("CA",), True, {}),
    ),
    (
        ("serving for another service", stored_from(CA, WRONG_NAME), {}, TRUSTS_CA),
        ("CA", True, ("CA",), True, {}),
    ),
    (
        ("serving from another CA", stored_from(CA, FOREIGN), {}, TRUSTS_CA),
        ("CA", True, ("CA",), True, {}),
    ),
    (
        ("serving key mismatched", {**GOOD, TLS_KEY: FOREIGN.key}, {}, TRUSTS_CA),
        ("CA", True, ("CA",), True, {}),
    ),
    (
        ("serving missing", {CA_CERT: CA.cert, CA_KEY: CA.key}, {}, TRUSTS_CA),
        ("CA", True, ("CA",), True, {}),
    ),
    (
        ("CA expired", stored_from(EXPIRED_CA, SERVING), {}, TRUSTS_CA),
        ("new", True, ("new", "CA"), True, AN_HOUR_ON),
    ),
    (
        ("CA key is garbage", {**GOOD, CA_KEY: b"not a key"}, {}, TRUSTS_CA),
        ("new", True, ("new", "CA"), True, AN_HOUR_ON),
    ),
    (
        (
            "CA has a third left",
            stored_from(OLD_CA, SERVING_OF_OLD_CA),
            {},
            bundles_of(OLD_CA.cert),
        ),
        ("OLD_CA", False, ("OLD_CA", "next"), True, {}),
    ),
    (
        (
            "next CA not yet in every caBundle",
            stored_from(CA, SERVING, **{NEXT_CA_CERT: NEXT.cert, NEXT_CA_KEY: NEXT.key}),
            {},
            {CONFIGS[0]: [CA.cert + NEXT.cert], CONFIGS[1]: [CA.cert + NEXT.cert, CA.cert]},
        ),
        ("CA", False, ("CA", "NEXT"), False, {}),
    ),
    (
        (
            "next CA seen in every caBundle",
            stored_from(CA, SERVING, **{NEXT_CA_CERT: NEXT.cert, NEXT_CA_KEY: NEXT.key}),
            {},
            TRUSTS_BOTH,
        ),
        ("CA", False, ("CA", "NEXT"), True, {NEXT_CA_TRUSTED_SINCE: NOW.isoformat()}),
    ),
    (
        (
            "next CA trusted for less than the delay",
            stored_from(CA, SERVING, **{NEXT_CA_CERT: NEXT.cert, NEXT_CA_KEY: NEXT.key}),
            {NEXT_CA_TRUSTED_SINCE: JUST_NOW},
            TRUSTS_BOTH,
        ),
        ("CA", False, ("CA", "NEXT"), False, {NEXT_CA_TRUSTED_SINCE: JUST_NOW}),
    ),
    (
        (
            "next CA trusted long enough",
            stored_from(CA, SERVING, **{NEXT_CA_CERT: NEXT.cert, NEXT_CA_KEY: NEXT.key}),
            {NEXT_CA_TRUSTED_SINCE: SINCE},
            TRUSTS_BOTH,
        ),
        ("NEXT", True, ("NEXT", "CA"), True, AN_HOUR_ON),
    ),
    (
        (
            "next CA is garbage",
            stored_from(CA, SERVING, **{NEXT_CA_CERT: b"junk", NEXT_CA_KEY: NEXT.key}),
            {NEXT_CA_TRUSTED_SINCE: SINCE},
            TRUSTS_BOTH,
        ),
        ("CA", False, ("CA",), True, {}),
    ),
    (
        (
            "retired CA within its delay",
            {**GOOD, RETIRED_CAS: OLD_CA.cert},
            {RETIRED_UNTIL: LATER},
            TRUSTS_CA,
        ),
        ("CA", False, ("CA", "OLD_CA"), False, {RETIRED_UNTIL: LATER}),
    ),
    (
        (
            "retired CA past its delay",
            {**GOOD, RETIRED_CAS: OLD_CA.cert},
            {RETIRED_UNTIL: JUST_NOW},
            TRUSTS_CA,
        ),
        ("CA", False, ("CA",), True, {}),
    ),
    (
        ("retired CA without a deadline", {**GOOD, RETIRED_CAS: OLD_CA.cert}, {}, TRUSTS_CA),
        ("CA", False, ("CA", "OLD_CA"), True, AN_HOUR_ON),
    ),
    (
        (
            "retired CA expired",
            {**GOOD, RETIRED_CAS: EXPIRED_CA.cert + OLD_CA.cert},
            {RETIRED_UNTIL: LATER},
            TRUSTS_CA,
        ),
        ("CA", False, ("CA", "OLD_CA"), True, {RETIRED_UNTIL: LATER}),
    ),
    (("rotate serving", GOOD, {ROTATE: "serving"}, TRUSTS_CA), ("CA", True, ("CA",), True, {})),
    (("rotate CA", GOOD, {ROTATE: "ca"}, TRUSTS_CA), ("CA", False, ("CA", "next"), True, {})),
    (("rotate nonsense", GOOD, {ROTATE: "all"}, TRUSTS_CA), ("CA", False, ("CA",), True, {})),
]
NAMED = {"CA": CA, "OLD_CA": OLD_CA, "NEXT": NEXT}


@pytest.mark.parametrize(("case", "expected"), CASES, ids=[c[0][0] for c in CASES])
def test_plan(
    case: Case, expected: tuple[str, bool, tuple[str, ...], bool, dict[str, str]]
) -> None:
    _, data, annotations, bundles = case
    signer, new_serving, trusted, write, left = expected
    current = None if data is None else Stored(data=data, annotations=annotations)
    result = plan(current, bundles, NOW, POLICY)
    after = result.stored.data

    signing = after[CA_CERT]
    if signer == "new":
        assert signing not in {ca.cert for ca in (CA, OLD_CA, NEXT, EXPIRED_CA)}
    else:
        assert signing == NAMED[signer].cert
    assert (result.serving.cert != (data or {}).get(TLS_CERT)) is new_serving
    assert (after[TLS_CERT], after[TLS_KEY]) == (result.serving.cert, result.serving.key)

    bundle = x509.load_pem_x509_certificates(result.bundle)
    assert len(bundle) == len(trusted)
    for cert, name in zip(bundle, trusted, strict=True):
        pem = cert.public_bytes(serialization.Encoding.PEM)
        if name in NAMED:
            assert pem == NAMED[name].cert, name
        elif name == "new":
            assert pem == signing
        elif name == "next":
            assert pem == after[NEXT_CA_CERT]
    assert result.write is write
    assert dict(result.stored.annotations) == left
    # Whatever happened, the pair to serve is trusted by the bundle the plan asks for.
    assert verifies(result.serving.cert, result.bundle, NOW)
    # Every write says why in the log.
    assert bool(result.events) is result.write


def test_a_plan_is_stable() -> None:
    # Applying a plan and planning again, with the bundles patched, changes nothing.
    first = plan(None, {}, NOW, POLICY)
    again = plan(first.stored, bundles_of(first.bundle), NOW + timedelta(hours=1), POLICY)
    assert not again.write
    assert again.events == ()
    assert again.serving == first.serving


def test_serving_never_outlives_its_ca() -> None:
    short = replace(POLICY, ca_validity=timedelta(days=30), serving_validity=timedelta(days=90))
    result = plan(None, {}, NOW, short)
    ca = x509.load_pem_x509_certificate(result.stored.data[CA_CERT])
    serving = x509.load_pem_x509_certificate(result.serving.cert)
    assert serving.not_valid_after_utc <= ca.not_valid_after_utc


@pytest.mark.parametrize("rotate_ca_at", [None, timedelta(days=3, hours=6)])
def test_no_review_fails_over_months_of_rotations(rotate_ca_at: timedelta | None) -> None:
    """The keeper's loop over 150 simulated days with a 30-day CA and 4-day serving pairs (so
    several serving renewals and CA rotations happen), checked every 6 hours the way it runs:
    the Secret is written, then every caBundle patched, then this replica serves the new pair;
    a slow replica serves what the Secret held two checks ago. At every moment each pair served
    anywhere must verify against the caBundle the API server holds then."""
    policy = replace(
        POLICY,
        ca_validity=timedelta(days=30),
        serving_validity=timedelta(days=4),
        trust_delay=timedelta(hours=12),
        retire_delay=timedelta(hours=12),  # as long as the slow replica lags (two steps)
    )
    step = timedelta(hours=6)
    now = NOW
    first = plan(None, {}, now, policy)
    stored, bundle, served = first.stored, first.bundle, first.serving.cert
    cas_seen, servings_seen = {stored.data[CA_CERT]}, {served}
    history = [served, served]  # what was served one and two checks ago
    for i in range(1, 150 * 4):
        now = NOW + i * step
        if rotate_ca_at is not None and now - NOW == rotate_ca_at:
            stored = Stored(stored.data, {**stored.annotations, ROTATE: "ca"})
        result = plan(stored, bundles_of(bundle), now, policy)
        lagging = history[0]  # the slow replica
        # Secret written (the other replica may load the new pair now), bundle not yet patched:
        assert verifies(result.serving.cert, bundle, now), f"step {i}: new pair, old bundle"
        assert verifies(lagging, bundle, now), f"step {i}: old pair, old bundle"
        bundle = result.bundle  # caBundle patched
        assert verifies(result.serving.cert, bundle, now), f"step {i}: new pair, new bundle"
        assert verifies(lagging, bundle, now), f"step {i}: old pair, new bundle"
        stored, served = result.stored, result.serving.cert
        history = [history[1], served]
        cas_seen.add(stored.data[CA_CERT])
        servings_seen.add(served)
    assert len(cas_seen) >= 6  # 150 days of 30-day CAs renewed with a third left
    assert len(servings_seen) >= 40
    # Retired CAs do not pile up: each leaves the bundle after the retire delay.
    assert len(x509.load_pem_x509_certificates(bundle)) <= 2
