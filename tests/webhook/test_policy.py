"""The three pod rules, one row per case."""

from __future__ import annotations

from typing import Any

import pytest

from webhook.config import Settings
from webhook.policy import evaluate


@pytest.fixture
def settings(core_settings: Settings) -> Settings:
    """These tables pin `profile: core` to what podlock did before the strict rules;
    tests/webhook/test_strict.py and tests/lint/test_lint_strict.py judge the default."""
    return core_settings


Spec = dict[str, Any]


def pod(*containers: Spec, **spec: Any) -> Spec:
    return {"containers": list(containers), **spec}


def c(name: str = "app", **security: Any) -> Spec:
    container: Spec = {"name": name, "image": "example/app:1"}
    if security:
        container["securityContext"] = security
    return container


RO = {"readOnlyRootFilesystem": True}

CASES = [
    # (id, spec, context, expected {(rule, container, message)})
    ("clean", pod(c(**RO)), "lint", set()),
    (
        "privileged",
        pod(c(privileged=True, **RO)),
        "lint",
        {("privileged-container", "app", "privileged is true")},
    ),
    ("privileged false", pod(c(privileged=False, **RO)), "lint", set()),
    ("root container", pod(c(runAsUser=0, **RO)), "lint", {("root-user", "app", "runAsUser is 0")}),
    (
        "root from pod",
        pod(c(**RO), securityContext={"runAsUser": 0}),
        "lint",
        {("root-user", "app", "runAsUser is 0 (inherited from the pod's securityContext)")},
    ),
    (
        "pod root overridden by every container",
        pod(
            c("a", runAsUser=1000, **RO),
            c("b", runAsUser=2000, **RO),
            securityContext={"runAsUser": 0},
        ),
        "lint",
        set(),
    ),
    (
        "pod root overridden by one container only",
        pod(c("a", runAsUser=1000, **RO), c("b", **RO), securityContext={"runAsUser": 0}),
        "lint",
        {("root-user", "b", "runAsUser is 0 (inherited from the pod's securityContext)")},
    ),
    (
        "container root over non-root pod",
        pod(c(runAsUser=0, **RO), securityContext={"runAsUser": 5}),
        "lint",
        {("root-user", "app", "runAsUser is 0")},
    ),
    ("runAsUser false is not 0", pod(c(runAsUser=False, **RO)), "lint", set()),
    (
        "unset rofs, lint",
        pod(c()),
        "lint",
        {("writable-root-filesystem", "app", "readOnlyRootFilesystem is not set")},
    ),
    (
        "unset rofs, pod",
        pod(c()),
        "pod",
        {("writable-root-filesystem", "app", "readOnlyRootFilesystem is not set")},
    ),
    ("unset rofs, template", pod(c()), "template", set()),
    (
        "false rofs, template",
        pod(c(readOnlyRootFilesystem=False)),
        "template",
        {("writable-root-filesystem", "app", "readOnlyRootFilesystem is false")},
    ),
    ("windows pod exempt from rofs", pod(c(), os={"name": "windows"}), "lint", set()),
    (
        "windows pod still judged for privileged",
        pod(c(privileged=True), os={"name": "windows"}),
        "lint",
        {("privileged-container", "app", "privileged is true")},
    ),
    (
        "init and ephemeral containers",
        {
            "containers": [c("main", **RO)],
            "initContainers": [c("init", privileged=True, **RO)],
            "ephemeralContainers": [c("debug", runAsUser=0, **RO)],
        },
        "lint",
        {
            ("privileged-container", "init", "privileged is true"),
            ("root-user", "debug", "runAsUser is 0"),
        },
    ),
    ("junk containers are skipped", {"containers": ["x", None, 3, c(**RO)]}, "lint", set()),
    (
        "securityContext of wrong type",
        pod({"name": "app", "securityContext": "yes"}),
        "template",
        set(),
    ),
    (
        "rofs of wrong type",
        pod(c(readOnlyRootFilesystem="true")),
        "template",
        {("writable-root-filesystem", "app", "readOnlyRootFilesystem is 'true', not true")},
    ),
]


@pytest.mark.parametrize(
    ("spec", "context", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_rules(
    settings: Settings, spec: Spec, context: Any, expected: set[tuple[str, str, str]]
) -> None:
    found = {(v.rule, v.container, v.message) for v in evaluate(spec, settings, context)}
    assert found == expected


def test_violation_paths_point_at_the_field(settings: Settings) -> None:
    spec = pod(c("a", privileged=True), c("b"), securityContext={"runAsUser": 0})
    paths = {(v.rule, v.container): v.path for v in evaluate(spec, settings, "lint")}
    assert paths[("privileged-container", "a")] == (
        "containers",
        0,
        "securityContext",
        "privileged",
    )
    assert paths[("root-user", "b")] == ("securityContext", "runAsUser")
    assert paths[("writable-root-filesystem", "b")] == (
        "containers",
        1,
        "securityContext",
        "readOnlyRootFilesystem",
    )


def test_disabled_rules_are_not_reported(settings: Settings) -> None:
    from dataclasses import replace

    only_root = replace(settings, enabled_rules=frozenset({"root-user"}))
    found = evaluate(pod(c(privileged=True, runAsUser=0)), only_root, "lint")
    assert [v.rule for v in found] == ["root-user"]


def test_only_limits_to_named_containers(settings: Settings) -> None:
    spec = pod(c("old", privileged=True), c("new", privileged=True))
    assert [
        v.container
        for v in evaluate(spec, settings, "pod", only={"new"})
        if v.rule == "privileged-container"
    ] == ["new"]
