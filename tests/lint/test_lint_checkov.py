"""podlock's verdicts against checkov's on the corpus (`checkov-verdicts.json`, checkov 3.3.30).

CKV_K8S_16 (privileged) ~ privileged-container; CKV_K8S_22 (read-only root filesystem) ~
writable-root-filesystem, both failing an unset value like `podlock lint` does; CKV_K8S_23
(root containers: passes with runAsNonRoot true or a non-zero runAsUser, container's or pod's)
~ run-as-non-root, the strict profile's rule (podlock used to report only an explicit UID 0
here, so this comparison is new; they agree on every object). For every
object both tools report, the verdicts must agree or the difference must be listed below with
its reason; objects only one tool reports must fall in one of the listed coverage classes.
A new unexplained difference, or a listed one that no longer happens, fails the test.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from corpus import corpus_dir

from webhook import manifests
from webhook.config import Settings
from webhook.lint import judged_refs
from webhook.podspecs import CONTAINER_GROUPS
from webhook.policy import PRIVILEGED, RUN_AS_NON_ROOT, WRITABLE_ROOT, evaluate

CHECKS = {"CKV_K8S_16": PRIVILEGED, "CKV_K8S_22": WRITABLE_ROOT, "CKV_K8S_23": RUN_AS_NON_ROOT}

# (file, kind, namespace as checkov writes it, name, check)
Key = tuple[str, str, str, str, str]

# Verdict differences on objects both tools report, with the reason. Where they could come
# from: checkov ignores ephemeralContainers (podlock judges them; the corpus's 4 objects with
# ephemeral containers also have a failing regular container, so the verdicts still agree),
# Windows pods (podlock exempts them from writable-root-filesystem; none in the corpus), and
# non-boolean values such as `privileged: "true"` (none in the corpus). Today: none.
DISAGREEMENTS: dict[Key, str] = {}

# Objects that only one tool reports: (side, class, predicate on the key, reason, objects).
# (OpenShift's DeploymentConfig, 39 objects in the kube-linter fixtures, was one until podlock
# judged the pod templates of kinds it does not know: see the test below.)
COVERAGE: list[tuple[str, str, Callable[[Key], bool], str, int]] = [
    (
        "podlock",
        "CKV_K8S_23 on DeploymentConfig",
        lambda k: k[1] == "DeploymentConfig" and k[4] == "CKV_K8S_23",
        "checkov's verdicts on OpenShift's DeploymentConfig cover only CKV_K8S_16 and "
        "CKV_K8S_22; podlock judges their pod templates for run-as-non-root too",
        39,
    ),
    (
        "checkov",
        "exempt namespace",
        lambda k: k[2] == "kube-system",
        "kube-system is exempt in the default policy: admission never judges it, so lint "
        "does not either",
        3,
    ),
    (
        "checkov",
        "no pod template",
        lambda k: k[4] == "CKV_K8S_23" and k[2] != "kube-system",
        "Deployments with no spec.template (kube-linter fixtures): checkov's CKV_K8S_23 fails "
        "them for want of a pod securityContext; podlock finds no pod spec to judge",
        2,
    ),
    (
        "podlock",
        "no metadata.name",
        lambda k: k[3] == "",
        "objects without metadata.name (generateName or none): checkov gives them no result",
        15,
    ),
]
# Same kind/namespace/name twice in one file: checkov writes two rows per check that cannot be
# told apart, so both sides are compared as a multiset of verdicts.
DUPLICATES = {
    ("controlplaneio__kubesec/test/asset/critical-double-multiple.yml", "kubesec-test"),
    ("stackrox__kube-linter/tests/checks/no-liveness-probe.yml", "dont-fire"),
    ("stackrox__kube-linter/tests/checks/no-readiness-probe.yml", "dont-fire"),
}


def checkov_verdicts(corpus: Path) -> dict[Key, list[str]]:
    rows = json.loads((corpus / "checkov-verdicts.json").read_text())
    verdicts: dict[Key, list[str]] = defaultdict(list)
    for row in rows:
        if row["check_id"] in CHECKS:
            key = (row["file"], row["kind"], row["namespace"], row["name"], row["check_id"])
            verdicts[key].append(row["result"])
    return verdicts


def podlock_verdicts(
    corpus: Path, settings: Settings, groups: tuple[str, ...] = CONTAINER_GROUPS
) -> dict[Key, list[str]]:
    verdicts: dict[Key, list[str]] = defaultdict(list)
    names, _ = manifests.discover([str(corpus)])
    for name in names:
        source = manifests.read(name)
        if isinstance(source, manifests.ParseError):
            continue
        relative = Path(name).relative_to(corpus).as_posix()
        for _, _, ref in judged_refs(source, settings):
            spec = {k: v for k, v in ref.spec.items() if k in groups or k not in CONTAINER_GROUPS}
            rules = {v.rule for v in evaluate(spec, settings, "lint")}
            for check, rule in CHECKS.items():
                key = (relative, ref.kind, ref.namespace or "default", ref.name, check)
                verdicts[key].append("FAILED" if rule in rules else "PASSED")
    return verdicts


@pytest.fixture(scope="module")
def both(settings: Settings) -> tuple[dict[Key, list[str]], dict[Key, list[str]]]:
    corpus = corpus_dir()
    return checkov_verdicts(corpus), podlock_verdicts(corpus, settings)


def test_verdicts_agree_on_every_object_both_report(
    both: tuple[dict[Key, list[str]], dict[Key, list[str]]],
) -> None:
    checkov, podlock = both
    common = sorted(set(checkov) & set(podlock))
    assert len(common) > 1700  # ~585 objects x 3 checks
    differ = {
        k: (checkov[k], podlock[k]) for k in common if Counter(checkov[k]) != Counter(podlock[k])
    }
    unexplained = {k: v for k, v in differ.items() if k not in DISAGREEMENTS}
    assert unexplained == {}, "new disagreement with checkov (checkov, podlock)"
    stale = set(DISAGREEMENTS) - set(differ)
    assert stale == set(), "listed disagreements that no longer happen"
    duplicated = {(k[0], k[3]) for k in common if len(podlock[k]) > 1}
    assert duplicated == DUPLICATES


@pytest.mark.parametrize(
    ("side", "label", "predicate", "reason", "objects"),
    COVERAGE,
    ids=[f"{c[0]} only: {c[1]}" for c in COVERAGE],
)
def test_objects_only_one_tool_reports(
    both: tuple[dict[Key, list[str]], dict[Key, list[str]]],
    side: str,
    label: str,
    predicate: Callable[[Key], bool],
    reason: str,
    objects: int,
) -> None:
    checkov, podlock = both
    only = set(checkov) - set(podlock) if side == "checkov" else set(podlock) - set(checkov)
    in_class = {k[:4] for k in only if predicate(k)}
    assert len(in_class) == objects, reason


def test_every_object_only_one_tool_reports_is_explained(
    both: tuple[dict[Key, list[str]], dict[Key, list[str]]],
) -> None:
    checkov, podlock = both
    for side, only in (
        ("checkov", set(checkov) - set(podlock)),
        ("podlock", set(podlock) - set(checkov)),
    ):
        rules = [c[2] for c in COVERAGE if c[0] == side]
        assert {k for k in only if not any(rule(k) for rule in rules)} == set(), side


def test_deployment_configs_are_judged_by_their_pod_template_and_agree(
    both: tuple[dict[Key, list[str]], dict[Key, list[str]]],
) -> None:
    """checkov knows OpenShift's DeploymentConfig; podlock finds its `spec.template` by shape."""
    checkov, podlock = both
    common = {k for k in set(checkov) & set(podlock) if k[1] == "DeploymentConfig"}
    assert len({k[:4] for k in common}) == 39
    assert all(Counter(checkov[k]) == Counter(podlock[k]) for k in common)


def test_ignoring_ephemeral_containers_like_checkov_changes_nothing_here(
    both: tuple[dict[Key, list[str]], dict[Key, list[str]]], settings: Settings
) -> None:
    """The one documented blind spot of checkov does not move a verdict in this corpus."""
    _, podlock = both
    without = podlock_verdicts(corpus_dir(), settings, ("containers", "initContainers"))
    assert without == podlock
