"""The strict profile's rules (the default policy), one row per way past the three rules of
the design: what each refuses, and what it lets through."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from webhook.config import ImageProfile, Settings, clean_path
from webhook.hardening import apply, plan_hardening
from webhook.podspecs import pod_specs
from webhook.policy import evaluate

Spec = dict[str, Any]
DIGEST = "example/app@sha256:" + "0" * 64
# What a container needs to pass every strict rule; each row below breaks one thing.
GOOD = {"readOnlyRootFilesystem": True, "runAsNonRoot": True, "allowPrivilegeEscalation": False}


def c(name: str = "app", image: str = DIGEST, extra: Spec | None = None, **security: Any) -> Spec:
    return {"name": name, "image": image, "securityContext": {**GOOD, **security}, **(extra or {})}


def pod(*containers: Spec, **spec: Any) -> Spec:
    return {"containers": list(containers), **spec}


def mounts(*items: tuple[str, str], **options: Any) -> Spec:
    return {"volumeMounts": [{"name": n, "mountPath": p, **options} for n, p in items]}


EMPTY = [{"name": "scratch", "emptyDir": {}}]
PVC = [{"name": "data", "persistentVolumeClaim": {"claimName": "d"}}]
CONFIG = [{"name": "cfg", "configMap": {"name": "c"}}]

# (id, spec, context, {(rule, container, message)})
CASES: list[tuple[str, Spec, str, set[tuple[str, str, str]]]] = [
    ("clean", pod(c()), "lint", set()),
    # 1. writable mounts only under the roots
    (
        "emptyDir over /usr/bin",
        pod(c(extra=mounts(("scratch", "/usr/bin"))), volumes=EMPTY),
        "template",
        {
            (
                "writable-mount",
                "app",
                "writable volume scratch (emptyDir) at /usr/bin is outside the writable roots",
            )
        },
    ),
    (
        "PVC over the app's directory, via subPath",
        pod(c(extra=mounts(("data", "/app"), subPath="x")), volumes=PVC),
        "template",
        {
            (
                "writable-mount",
                "app",
                "writable volume data (persistentVolumeClaim) at /app is outside the writable "
                "roots",
            )
        },
    ),
    (
        "relative mountPath is made absolute as the kubelet does",
        pod(c(extra=mounts(("scratch", "usr//bin/"))), volumes=EMPTY),
        "template",
        {
            (
                "writable-mount",
                "app",
                "writable volume scratch (emptyDir) at /usr/bin is outside the writable roots",
            )
        },
    ),
    (
        "a .. component is ambiguous under the image's symlinks",
        pod(c(extra=mounts(("scratch", "/var/run/../lib/app"))), volumes=EMPTY),
        "template",
        {
            (
                "writable-mount",
                "app",
                "writable volume scratch (emptyDir) has an unusable mountPath "
                "'/var/run/../lib/app'",
            )
        },
    ),
    (
        "a volume the pod does not declare counts as writable",
        pod(c(extra=mounts(("ghost", "/opt")))),
        "template",
        {
            (
                "writable-mount",
                "app",
                "writable volume ghost (unknown type) at /opt is outside the writable roots",
            )
        },
    ),
    (
        "gitRepo is writable",
        pod(
            c(extra=mounts(("git", "/srv"))),
            volumes=[{"name": "git", "gitRepo": {"repository": "r"}}],
        ),
        "template",
        {
            (
                "writable-mount",
                "app",
                "writable volume git (gitRepo) at /srv is outside the writable roots",
            )
        },
    ),
    (
        "under a root, read-only, or a read-only type: fine",
        pod(
            c(
                extra={
                    "volumeMounts": [
                        {"name": "scratch", "mountPath": "/var/lib/app/"},
                        {"name": "data", "mountPath": "/usr/bin", "readOnly": True},
                        {"name": "cfg", "mountPath": "/usr/local/bin"},
                    ]
                }
            ),
            volumes=EMPTY + PVC + CONFIG,
        ),
        "template",
        set(),
    ),
    # 2. the kubelet's other writable files
    (
        "terminationMessagePath over a binary",
        pod(c(extra={"terminationMessagePath": "/usr/bin/env"})),
        "template",
        {
            (
                "writable-mount",
                "app",
                "terminationMessagePath '/usr/bin/env' (a writable file the kubelet mounts) is "
                "outside the writable roots",
            )
        },
    ),
    (
        "terminationMessagePath at its default or under a root",
        pod(
            c("a", extra={"terminationMessagePath": "/dev/termination-log"}),
            c("b", extra={"terminationMessagePath": "/tmp/done"}),
        ),
        "template",
        set(),
    ),
    (
        "volumeDevices outside /dev",
        pod(c(extra={"volumeDevices": [{"name": "raw", "devicePath": "/usr/lib/libc.so.6"}]})),
        "template",
        {
            (
                "writable-mount",
                "app",
                "volumeDevices devicePath '/usr/lib/libc.so.6' is outside /dev and the writable "
                "roots",
            )
        },
    ),
    (
        "volumeDevices under /dev",
        pod(c(extra={"volumeDevices": [{"name": "raw", "devicePath": "/dev/xvdb"}]})),
        "template",
        set(),
    ),
    # 3. root by default
    (
        "runAsNonRoot unset and no user: lint reports, a template may leave it to mutation",
        pod(c(runAsNonRoot=None)),
        "lint",
        {("run-as-non-root", "app", "runAsNonRoot is not set and no non-zero runAsUser applies")},
    ),
    ("runAsNonRoot unset in a template", pod(c(runAsNonRoot=None)), "template", set()),
    (
        "runAsNonRoot false without a user",
        pod(c(runAsNonRoot=False)),
        "template",
        {("run-as-non-root", "app", "runAsNonRoot is false and no non-zero runAsUser applies")},
    ),
    (
        "runAsNonRoot false inherited from the pod",
        pod(c(runAsNonRoot=None), securityContext={"runAsNonRoot": False}),
        "template",
        {("run-as-non-root", "app", "runAsNonRoot is false and no non-zero runAsUser applies")},
    ),
    (
        "a non-zero user makes runAsNonRoot moot",
        pod(c(runAsNonRoot=False, runAsUser=1000)),
        "lint",
        set(),
    ),
    (
        "the pod's user counts",
        pod(c(runAsNonRoot=None), securityContext={"runAsUser": 7}),
        "pod",
        set(),
    ),
    (
        "allowPrivilegeEscalation true",
        pod(c(allowPrivilegeEscalation=True)),
        "template",
        {("privilege-escalation", "app", "allowPrivilegeEscalation is true")},
    ),
    (
        "allowPrivilegeEscalation unset on an admitted pod",
        pod(c(allowPrivilegeEscalation=None)),
        "pod",
        {("privilege-escalation", "app", "allowPrivilegeEscalation is not set")},
    ),
    # 4. privileged in all but name
    (
        "SYS_ADMIN, whatever its spelling",
        pod(c(capabilities={"add": ["cap_sys_admin", "NET_BIND_SERVICE"]})),
        "template",
        {("capabilities", "app", "capabilities.add has cap_sys_admin, outside the allowed set")},
    ),
    (
        "ALL and SYS_PTRACE",
        pod(c(capabilities={"add": ["ALL", "SYS_PTRACE"]})),
        "template",
        {("capabilities", "app", "capabilities.add has ALL, SYS_PTRACE, outside the allowed set")},
    ),
    (
        "baseline capabilities",
        pod(c(capabilities={"add": ["CHOWN", "CAP_NET_BIND_SERVICE"], "drop": ["ALL"]})),
        "template",
        set(),
    ),
    (
        "unconfined seccomp and AppArmor, container and pod",
        pod(
            c(seccompProfile={"type": "Unconfined"}, appArmorProfile={"type": "Unconfined"}),
            securityContext={"seccompProfile": {"type": "Unconfined"}},
        ),
        "template",
        {
            ("security-profile", "", "pod seccompProfile is Unconfined"),
            ("security-profile", "app", "seccompProfile is Unconfined"),
            ("security-profile", "app", "appArmorProfile is Unconfined"),
        },
    ),
    (
        "SELinux type outside the baseline, a user, Unmasked /proc",
        pod(c(seLinuxOptions={"type": "spc_t"}, procMount="Unmasked")),
        "template",
        {
            ("security-profile", "app", "seLinuxOptions.type 'spc_t' is not a container type"),
            ("security-profile", "app", "procMount is 'Unmasked'"),
        },
    ),
    (
        "pod SELinux user",
        pod(c(), securityContext={"seLinuxOptions": {"user": "system_u"}}),
        "template",
        {("security-profile", "", "pod seLinuxOptions sets a user or role")},
    ),
    (
        "RuntimeDefault, Localhost and container_t are fine",
        pod(
            c(
                seccompProfile={"type": "Localhost", "localhostProfile": "p.json"},
                seLinuxOptions={"type": "container_t", "level": "s0:c1"},
                procMount="Default",
            ),
            securityContext={"seccompProfile": {"type": "RuntimeDefault"}},
        ),
        "template",
        set(),
    ),
    # 5. host access
    (
        "kubectl debug node/...",
        {
            "containers": [c("debugger", image="busybox")],
            "hostPID": True,
            "hostNetwork": True,
            "hostIPC": True,
            "volumes": [{"name": "host-root", "hostPath": {"path": "/"}}],
        },
        "template",
        {
            ("host-access", "", "hostPID is true"),
            ("host-access", "", "hostIPC is true"),
            ("host-access", "", "hostNetwork is true"),
            (
                "host-access",
                "",
                "hostPath volume host-root at / reaches the container runtime's state",
            ),
            ("mutable-image-reference", "debugger", "image busybox is not pinned by a digest"),
        },
    ),
    (
        "the runtime's socket, even read-only and allowlisted",
        pod(
            c(extra=mounts(("sock", "/run/containerd.sock"), readOnly=True)),
            volumes=[{"name": "sock", "hostPath": {"path": "/run//containerd/containerd.sock"}}],
        ),
        "template",
        {
            (
                "host-access",
                "",
                "hostPath volume sock at /run/containerd/containerd.sock reaches the container "
                "runtime's state",
            )
        },
    ),
    (
        "an allowlisted hostPath, but writable",
        pod(
            c(extra=mounts(("tz", "/etc/localtime"))),
            volumes=[{"name": "tz", "hostPath": {"path": "/etc/localtime"}}],
        ),
        "template",
        {
            ("host-access", "", "hostPath volume tz is mounted writable in container app"),
            (
                "writable-mount",
                "app",
                "writable volume tz (hostPath) at /etc/localtime is outside the writable roots",
            ),
        },
    ),
    (
        "an allowlisted hostPath, read-only",
        pod(
            c(extra=mounts(("tz", "/etc/localtime"), readOnly=True)),
            volumes=[{"name": "tz", "hostPath": {"path": "/usr/share/zoneinfo/UTC"}}],
        ),
        "template",
        set(),
    ),
    (
        "any other hostPath",
        pod(c(), volumes=[{"name": "logs", "hostPath": {"path": "/var/log"}}]),
        "template",
        {("host-access", "", "hostPath volume logs (/var/log) is not in hostPaths.readOnly")},
    ),
    (
        "Windows hostProcess",
        {
            "os": {"name": "windows"},
            "containers": [
                {
                    "name": "w",
                    "image": DIGEST,
                    "securityContext": {"windowsOptions": {"hostProcess": True}},
                }
            ],
            "securityContext": {"windowsOptions": {"hostProcess": True}},
            "hostNetwork": True,
        },
        "template",
        {
            ("host-access", "", "hostNetwork is true"),
            ("host-access", "", "windowsOptions.hostProcess is true"),
            ("host-access", "w", "windowsOptions.hostProcess is true"),
        },
    ),
    (
        "shareProcessNamespace with the same (unset) user",
        pod(c("a"), c("b"), shareProcessNamespace=True),
        "template",
        {
            (
                "host-access",
                "",
                "shareProcessNamespace is true and containers may ptrace each other (give each "
                "its own non-zero runAsUser, without SYS_PTRACE)",
            )
        },
    ),
    (
        "shareProcessNamespace with distinct users",
        pod(c("a", runAsUser=1000), c("b", runAsUser=1001), shareProcessNamespace=True),
        "template",
        set(),
    ),
    # 8. mutable image references
    (
        "a tag, pulled Always",
        pod(c(image="registry.example/app:1.2", extra={"imagePullPolicy": "Always"})),
        "template",
        {
            (
                "mutable-image-reference",
                "app",
                "image registry.example/app:1.2 is not pinned by a digest (and imagePullPolicy "
                "is Always)",
            )
        },
    ),
]


@pytest.mark.parametrize(("case", "spec", "context", "expected"), CASES, ids=[c[0] for c in CASES])
def test_strict_rules(
    settings: Settings, case: str, spec: Spec, context: Any, expected: set[tuple[str, str, str]]
) -> None:
    for container in spec["containers"]:  # None in a row means "unset"
        context_of = container["securityContext"]
        for key in [k for k, v in context_of.items() if v is None]:
            del context_of[key]
    found = {(v.rule, v.container, v.message) for v in evaluate(spec, settings, context)}
    assert found == expected


@pytest.mark.parametrize(("case", "spec", "context", "expected"), CASES, ids=[c[0] for c in CASES])
def test_core_judges_none_of_it(
    core_settings: Settings,
    case: str,
    spec: Spec,
    context: Any,
    expected: set[tuple[str, str, str]],
) -> None:
    core_rules = {"privileged-container", "root-user", "writable-root-filesystem"}
    found = {v.rule for v in evaluate(spec, core_settings, context)}
    assert found <= core_rules


def test_each_rule_can_be_switched_off(settings: Settings) -> None:
    everything = [row for row in CASES if row[3]]
    for rule in {r for row in everything for r, _, _ in row[3]}:
        if rule == "mutable-image-reference":
            off = replace(settings, image_action="off")
        else:
            off = replace(settings, enabled_rules=settings.enabled_rules - {rule})
        for _, spec, context, _ in everything:
            assert rule not in {v.rule for v in evaluate(spec, off, context)}


def test_the_allowed_capabilities_come_from_the_policy(settings: Settings) -> None:
    spec = pod(c(capabilities={"add": ["SETUID", "CHOWN"]}))
    assert evaluate(spec, settings, "template") == []
    fewer = replace(settings, allowed_capabilities=frozenset({"NET_BIND_SERVICE"}))
    (violation,) = evaluate(spec, fewer, "template")
    assert violation.message == "capabilities.add has SETUID, CHOWN, outside the allowed set"


def test_an_ephemeral_update_judges_only_the_new_container(settings: Settings) -> None:
    spec = pod(
        c("app"),
        hostPID=True,  # a pod-level fact the update cannot change: judged at creation
        ephemeralContainers=[
            {
                "name": "debugger",
                "image": DIGEST,
                "securityContext": {"capabilities": {"add": ["SYS_PTRACE"]}},
            }
        ],
    )
    found = {(v.rule, v.container) for v in evaluate(spec, settings, "pod", only={"debugger"})}
    assert found == {
        ("capabilities", "debugger"),
        ("writable-root-filesystem", "debugger"),
        ("run-as-non-root", "debugger"),
        ("privilege-escalation", "debugger"),
    }


# --- paths: no spelling of a path gets past the allowlist -------------------------------

SEGMENTS = st.sampled_from(
    ["", ".", "..", "usr", "bin", "tmp", "tmpx", "var", "run", "lib", "x", "..."]
)


@given(st.lists(SEGMENTS, max_size=8), st.booleans(), st.booleans())
@example(["", "", "usr", "bin"], True, False)  # //usr/bin
@example(["tmpx"], True, False)  # a sibling of /tmp, not under it
@example(["tmp", "..", "usr", "bin"], True, True)  # /tmp/../usr/bin/
@example(["var", "run", "..", "lib"], True, False)  # escapes through the /var/run symlink
def test_no_spelling_of_a_path_gets_past_the_check(
    settings: Settings, parts: list[str], absolute: bool, trailing: bool
) -> None:
    raw = ("/" if absolute else "") + "/".join(parts) + ("/" if trailing else "")
    if not raw:
        return
    spec = pod(c(extra=mounts(("scratch", raw))), volumes=EMPTY)
    refused = bool(evaluate(spec, settings, "template"))
    # What the runtime does: the kubelet's filepath.Clean("/" + path), then runc's securejoin,
    # which follows the image's symlinks before applying `..`. Without `..`, the lexical clean
    # is the destination whatever the symlinks; with one, it depends on the image.
    if ".." in parts:
        assert refused, raw
        return
    destination = "/" + "/".join(p for p in parts if p not in ("", "."))
    allowed = any(
        destination == r or destination.startswith(r + "/") for r in settings.writable_roots
    )
    assert refused == (not allowed), raw
    assert clean_path(raw) == destination


# --- hardening ----------------------------------------------------------------------------


def harden(spec: Spec, settings: Settings) -> Spec:
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}
    ref = next(pod_specs(obj))
    result: Spec = apply(obj, plan_hardening(ref, settings).ops, ("spec",))["spec"]
    return result


def test_hardening_sets_what_is_unset_and_then_passes(settings: Settings) -> None:
    spec = pod(
        {"name": "bare", "image": DIGEST},
        {"name": "user", "image": DIGEST, "securityContext": {"runAsUser": 1000}},
        {
            "name": "priv",
            "image": DIGEST,
            "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}},
        },
    )
    hardened = harden(spec, settings)
    contexts = [c["securityContext"] for c in hardened["containers"]]
    assert contexts[0] == {**GOOD}
    assert contexts[1] == {
        "runAsUser": 1000,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
    }
    # false next to an added SYS_ADMIN is refused by the API server: left for validation.
    assert contexts[2] == {
        "capabilities": {"add": ["SYS_ADMIN"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }
    left = {(v.rule, v.container) for v in evaluate(hardened, settings, "pod")}
    assert left == {("capabilities", "priv"), ("privilege-escalation", "priv")}


def test_optional_hardening(settings: Settings) -> None:
    more = replace(settings, drop_all_capabilities=True, seccomp_runtime_default=True)
    spec = pod(
        {"name": "a", "image": DIGEST},
        {"name": "b", "image": DIGEST, "securityContext": {"capabilities": {"add": ["CHOWN"]}}},
    )
    hardened = harden(spec, more)
    assert hardened["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert hardened["containers"][1]["securityContext"]["capabilities"] == {
        "add": ["CHOWN"],
        "drop": ["ALL"],
    }
    for container in hardened["containers"]:
        assert container["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # A pod-level profile is respected; nothing is set twice.
    spec["securityContext"] = {"seccompProfile": {"type": "Localhost", "localhostProfile": "p"}}
    assert all(
        "seccompProfile" not in c["securityContext"] for c in harden(spec, more)["containers"]
    )
    assert harden(hardened, more) == hardened


def test_annotation_and_injection_obey_the_allowlist(settings: Settings) -> None:
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "annotations": {"podlock.io/writable-paths": "/var/lib/app; /opt/app; //usr/bin"},
        },
        "spec": pod({"name": "app", "image": DIGEST}),
    }
    ref = next(pod_specs(obj))
    hardening = plan_hardening(ref, settings)
    assert hardening.notes == (
        "podlock.io/writable-paths: /opt/app is not allowed by the policy: ignored",
        "podlock.io/writable-paths: /usr/bin is not allowed by the policy: ignored",
    )
    spec = apply(obj, hardening.ops, ("spec",))["spec"]
    assert [m["mountPath"] for m in spec["containers"][0]["volumeMounts"]] == [
        "/tmp",
        "/var/lib/app",
    ]
    assert evaluate(spec, settings, "pod") == []


def test_a_profile_path_in_the_annotation_is_only_for_that_image(settings: Settings) -> None:
    profiled = replace(
        settings, image_profiles=(ImageProfile("web", ("nginx",), ("/etc/nginx/conf.d",)),)
    )
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "annotations": {"podlock.io/writable-paths": "/etc/nginx"}},
        "spec": pod({"name": "web", "image": "nginx"}, {"name": "api", "image": DIGEST}),
    }
    # /etc/nginx is above the profile's path, not under it: refused for everyone.
    assert plan_hardening(next(pod_specs(obj)), profiled).notes
    obj["metadata"]["annotations"]["podlock.io/writable-paths"] = "/etc/nginx/conf.d/extra"
    spec = apply(obj, plan_hardening(next(pod_specs(obj)), profiled).ops, ("spec",))["spec"]
    paths = {c["name"]: [m["mountPath"] for m in c["volumeMounts"]] for c in spec["containers"]}
    assert paths == {"web": ["/tmp", "/etc/nginx/conf.d"], "api": ["/tmp"]}
    assert [v.rule for v in evaluate(spec, profiled, "pod")] == ["mutable-image-reference"]


def test_an_image_profile_path_is_writable_for_that_image_only(settings: Settings) -> None:
    profiled = replace(
        settings, image_profiles=(ImageProfile("web", ("nginx",), ("/etc/nginx/conf.d",)),)
    )
    spec = pod(
        c("web", image="nginx@sha256:" + "1" * 64, extra=mounts(("scratch", "/etc/nginx/conf.d"))),
        c("api", extra=mounts(("scratch", "/etc/nginx/conf.d/x"))),
        volumes=EMPTY,
    )
    found = {(v.rule, v.container) for v in evaluate(spec, profiled, "template")}
    assert found == {("writable-mount", "api")}


def test_apparmor_annotation_is_read_where_the_manifest_has_it(settings: Settings) -> None:
    # lint reads the whole manifest; at admission the API server has already copied the
    # annotation into appArmorProfile (pkg/registry/core/pod/strategy.go), which is judged.
    spec = pod(c("web"), c("side"))
    annotations = {
        "container.apparmor.security.beta.kubernetes.io/web": "unconfined",
        "container.apparmor.security.beta.kubernetes.io/side": "runtime/default",
    }
    found = {(v.rule, v.container) for v in evaluate(spec, settings, "lint", None, annotations)}
    assert found == {("security-profile", "web")}
