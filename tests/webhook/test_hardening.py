"""The hardening plan, checked by applying its JSON Patch and comparing objects."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import jsonpatch
import pytest

from webhook.config import ImageProfile, Settings
from webhook.hardening import (
    apply,
    image_repository,
    parse_writable_paths,
    plan_hardening,
    to_json_patch,
)
from webhook.podspecs import pod_specs


@pytest.fixture
def settings(core_settings: Settings) -> Settings:
    """These tables pin `profile: core` to what podlock did before the strict rules;
    tests/webhook/test_strict.py and tests/lint/test_lint_strict.py judge the default."""
    return core_settings


Obj = dict[str, Any]
RO = {"readOnlyRootFilesystem": True}


def pod(spec: Obj, annotations: dict[str, str] | None = None) -> Obj:
    metadata: Obj = {"name": "p", "namespace": "default"}
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def harden(obj: Obj, settings: Settings, only: set[str] | None = None) -> Obj:
    """Apply the webhook's patch with a real RFC 6902 implementation."""
    ref = next(pod_specs(obj))
    hardening = plan_hardening(ref, settings, only)
    patch = to_json_patch(hardening.ops, ref.path)
    patched: Obj = jsonpatch.apply_patch(obj, patch)
    # --fix applies the same plan with hardening.apply: both must give the same object.
    assert apply(obj, hardening.ops, ref.path) == patched
    return patched


def tmp_volume(name: str) -> Obj:
    return {"name": name, "emptyDir": {}}


CASES: list[tuple[str, Obj, Obj]] = [
    (
        "no volumes key, no securityContext",
        {"containers": [{"name": "app", "image": "busybox"}]},
        {
            "containers": [
                {
                    "name": "app",
                    "image": "busybox",
                    "securityContext": RO,
                    "volumeMounts": [{"name": "podlock-app-tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [tmp_volume("podlock-app-tmp")],
        },
    ),
    (
        "existing securityContext and volumes",
        {
            "containers": [
                {"name": "app", "image": "busybox", "securityContext": {"runAsUser": 1000}}
            ],
            "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}],
        },
        {
            "containers": [
                {
                    "name": "app",
                    "image": "busybox",
                    "securityContext": {"runAsUser": 1000, "readOnlyRootFilesystem": True},
                    "volumeMounts": [{"name": "podlock-app-tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [
                {"name": "cfg", "configMap": {"name": "cfg"}},
                tmp_volume("podlock-app-tmp"),
            ],
        },
    ),
    (
        "an existing /tmp mount is kept and not duplicated",
        {
            "containers": [
                {
                    "name": "app",
                    "image": "busybox",
                    "volumeMounts": [{"name": "t", "mountPath": "/tmp/"}],
                }
            ],
            "volumes": [{"name": "t", "emptyDir": {}}],
        },
        {
            "containers": [
                {
                    "name": "app",
                    "image": "busybox",
                    "volumeMounts": [{"name": "t", "mountPath": "/tmp/"}],
                    "securityContext": RO,
                }
            ],
            "volumes": [{"name": "t", "emptyDir": {}}],
        },
    ),
    (
        "the volume name podlock would choose is taken",
        {
            "containers": [{"name": "app", "image": "busybox"}],
            "volumes": [{"name": "podlock-app-tmp", "hostPath": {"path": "/x"}}],
        },
        {
            "containers": [
                {
                    "name": "app",
                    "image": "busybox",
                    "securityContext": RO,
                    "volumeMounts": [{"name": "podlock-app-tmp-2", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [
                {"name": "podlock-app-tmp", "hostPath": {"path": "/x"}},
                tmp_volume("podlock-app-tmp-2"),
            ],
        },
    ),
    (
        "nginx gets its cache and run dirs; a parent mount /var covers both",
        {
            "containers": [
                {"name": "web", "image": "nginx:1.27"},
                {
                    "name": "web2",
                    "image": "nginx",
                    "volumeMounts": [{"name": "v", "mountPath": "/var"}],
                },
            ],
            "volumes": [{"name": "v", "emptyDir": {}}],
        },
        {
            "containers": [
                {
                    "name": "web",
                    "image": "nginx:1.27",
                    "securityContext": RO,
                    "volumeMounts": [
                        {"name": "podlock-web-tmp", "mountPath": "/tmp"},
                        {"name": "podlock-web-var-cache-nginx", "mountPath": "/var/cache/nginx"},
                        {"name": "podlock-web-var-run", "mountPath": "/var/run"},
                    ],
                },
                {
                    "name": "web2",
                    "image": "nginx",
                    "volumeMounts": [
                        {"name": "v", "mountPath": "/var"},
                        {"name": "podlock-web2-tmp", "mountPath": "/tmp"},
                    ],
                    "securityContext": RO,
                },
            ],
            "volumes": [
                {"name": "v", "emptyDir": {}},
                tmp_volume("podlock-web-tmp"),
                tmp_volume("podlock-web-var-cache-nginx"),
                tmp_volume("podlock-web-var-run"),
                tmp_volume("podlock-web2-tmp"),
            ],
        },
    ),
    (
        "explicit true is left as written, explicit false is left for validation",
        {
            "containers": [
                {"name": "a", "securityContext": {"readOnlyRootFilesystem": True}},
                {"name": "b", "securityContext": {"readOnlyRootFilesystem": False}},
            ]
        },
        {
            "containers": [
                {"name": "a", "securityContext": {"readOnlyRootFilesystem": True}},
                {"name": "b", "securityContext": {"readOnlyRootFilesystem": False}},
            ]
        },
    ),
    (
        "windows pods are never given readOnlyRootFilesystem",
        {"os": {"name": "windows"}, "containers": [{"name": "app"}]},
        {"os": {"name": "windows"}, "containers": [{"name": "app"}]},
    ),
    (
        "init and ephemeral containers: ephemeral ones get no volume",
        {
            "initContainers": [{"name": "init"}],
            "containers": [{"name": "app", "securityContext": RO}],
            "ephemeralContainers": [{"name": "dbg"}],
        },
        {
            "initContainers": [
                {
                    "name": "init",
                    "securityContext": RO,
                    "volumeMounts": [{"name": "podlock-init-tmp", "mountPath": "/tmp"}],
                }
            ],
            "containers": [{"name": "app", "securityContext": RO}],
            "ephemeralContainers": [{"name": "dbg", "securityContext": RO}],
            "volumes": [tmp_volume("podlock-init-tmp")],
        },
    ),
    (
        "null securityContext and null volumes are replaced",
        {
            "containers": [{"name": "app", "securityContext": None, "volumeMounts": None}],
            "volumes": None,
        },
        {
            "containers": [
                {
                    "name": "app",
                    "securityContext": RO,
                    "volumeMounts": [{"name": "podlock-app-tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [tmp_volume("podlock-app-tmp")],
        },
    ),
]


@pytest.mark.parametrize(("spec", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hardening(settings: Settings, spec: Obj, expected: Obj) -> None:
    assert harden(pod(spec), settings)["spec"] == expected


@pytest.mark.parametrize(("spec", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hardening_twice_changes_nothing(settings: Settings, spec: Obj, expected: Obj) -> None:
    once = harden(pod(spec), settings)
    assert plan_hardening(next(pod_specs(once)), settings).ops == ()


def test_input_is_never_modified(settings: Settings) -> None:
    obj = pod({"containers": [{"name": "app"}]})
    before = copy.deepcopy(obj)
    harden(obj, settings)
    assert obj == before


def test_annotation_paths_per_container(settings: Settings) -> None:
    obj = pod(
        {"containers": [{"name": "web"}, {"name": "worker"}]},
        {"podlock.io/writable-paths": "web=/var/lib/web,/cache; /scratch\nworker=/spool"},
    )
    spec = harden(obj, settings)["spec"]
    mounts = {c["name"]: [m["mountPath"] for m in c["volumeMounts"]] for c in spec["containers"]}
    assert mounts == {
        "web": ["/tmp", "/scratch", "/var/lib/web", "/cache"],
        "worker": ["/tmp", "/scratch", "/spool"],
    }


@pytest.mark.parametrize(
    ("value", "expected", "ignored"),
    [
        ("/data", {"*": ("/data",)}, 0),
        ("app=/a, /b/ ;other=/c", {"app": ("/a", "/b"), "other": ("/c",)}, 0),
        ("/", {}, 1),
        ("app=/usr/bin", {}, 1),
        ("app=/usr", {}, 1),  # a parent would hide /usr/bin
        ("app=/usr/local/bin/tool", {}, 1),
        ("relative/path", {}, 1),
        ("/a/../etc", {}, 1),
        ("", {}, 0),
    ],
)
def test_writable_paths_annotation(
    settings: Settings, value: str, expected: dict[str, tuple[str, ...]], ignored: int
) -> None:
    paths, notes = parse_writable_paths(value, settings)
    assert paths == expected
    assert len(notes) == ignored


def test_ephemeral_update_hardens_only_new_containers_without_volumes(settings: Settings) -> None:
    obj = pod(
        {
            "containers": [{"name": "app", "securityContext": RO}],
            "ephemeralContainers": [{"name": "old"}, {"name": "new"}],
        }
    )
    spec = harden(obj, settings, only={"new"})["spec"]
    assert spec["ephemeralContainers"] == [{"name": "old"}, {"name": "new", "securityContext": RO}]
    assert "volumes" not in spec


def test_empty_dir_settings_and_profiles(settings: Settings) -> None:
    custom = replace(
        settings,
        empty_dir_medium="Memory",
        empty_dir_size_limit="64Mi",
        image_profiles=(ImageProfile("pg", ("*/postgres", "postgres"), ("/var/run/postgresql",)),),
    )
    spec = harden(
        pod({"containers": [{"name": "db", "image": "docker.io/bitnami/postgres:16"}]}), custom
    )["spec"]
    assert [m["mountPath"] for m in spec["containers"][0]["volumeMounts"]] == [
        "/tmp",
        "/var/run/postgresql",
    ]
    assert spec["volumes"][0]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Mi"}


def test_long_names_stay_dns_labels(settings: Settings) -> None:
    name = "a" * 60
    obj = pod({"containers": [{"name": name}]}, {"podlock.io/writable-paths": "/" + "b" * 70})
    for volume in harden(obj, settings)["spec"]["volumes"]:
        assert len(volume["name"]) <= 63
        assert volume["name"].replace("-", "").isalnum()


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("nginx", "nginx"),
        ("nginx:1.27", "nginx"),
        ("nginx:stable-alpine", "nginx"),
        ("docker.io/library/nginx@sha256:" + "0" * 64, "nginx"),
        ("docker.io/library/nginx:1.27@sha256:" + "0" * 64, "nginx"),
        ("localhost:5000/nginx:1", "nginx"),
        ("quay.io/org/app:v1", "org/app"),
        ("bitnami/nginx", "bitnami/nginx"),
    ],
)
def test_image_repository(image: str, repository: str) -> None:
    assert image_repository(image) == repository
