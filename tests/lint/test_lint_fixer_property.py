"""`--fix` on generated pod specs written in many styles (block YAML with and without indented
sequences, flow YAML, JSON at several indentations, CRLF, no final newline): the fixed text
must always keep every promise of `check_fix_invariants`."""

from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lint_support import check_fix_invariants, parse

from webhook.config import Settings, load_settings
from webhook.lint import fix_source

POLICY = load_settings(None)

security_contexts = st.one_of(
    st.just(None),
    st.just({}),
    st.fixed_dictionaries({"runAsUser": st.sampled_from([0, 1000])}),
    st.fixed_dictionaries({"readOnlyRootFilesystem": st.booleans()}),
    st.fixed_dictionaries({"privileged": st.booleans(), "readOnlyRootFilesystem": st.just(True)}),
)
mounts = st.one_of(
    st.just(None),
    st.just([]),
    st.lists(
        st.fixed_dictionaries(
            {
                "name": st.sampled_from(["data", "podlock-app-tmp", "cache"]),
                "mountPath": st.sampled_from(["/tmp", "/var", "/data", "/var/cache/nginx"]),
            }
        ),
        min_size=1,
        max_size=2,
    ),
)


@st.composite
def containers(draw: st.DrawFn, prefix: str) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": draw(st.sampled_from([f"{prefix}app", f"{prefix}side", "nginx"])),
        "image": draw(st.sampled_from(["busybox:1.36", "nginx:1.27", "docker.io/library/nginx"])),
    }
    context = draw(security_contexts)
    if context is not None:
        container["securityContext"] = context
    volume_mounts = draw(mounts)
    if volume_mounts is not None:
        container["volumeMounts"] = volume_mounts
    return container


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": draw(st.lists(containers(""), min_size=1, max_size=3))}
    if draw(st.booleans()):
        spec["initContainers"] = draw(st.lists(containers("init-"), min_size=1, max_size=2))
    volumes = draw(
        st.one_of(
            st.just(None),
            st.just([]),
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["data", "podlock-app-tmp"]), "emptyDir": st.just({})}
                ),
                min_size=1,
                max_size=2,
            ),
        )
    )
    if volumes is not None:
        spec["volumes"] = volumes
    kind = draw(st.sampled_from(["Pod", "Deployment", "CronJob"]))
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}
    template = {"metadata": {"labels": {"app": "x"}}, "spec": spec}
    if kind == "Deployment":
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "d"},
            "spec": {"template": template},
        }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "c"},
        "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": template}}},
    }


class _IndentedDumper(yaml.SafeDumper):
    """Block sequences indented under their key (`key:\\n  - item`), as many people write."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def render(documents: list[dict[str, Any]], style: str) -> str:
    documents = json.loads(json.dumps(documents))  # no shared objects: no YAML anchors
    if style.startswith("json"):
        indent: int | str | None = {"json-compact": None, "json-2": 2, "json-4": 4}.get(style, "\t")
        return json.dumps(documents[0], indent=indent)
    if style == "flow":
        return yaml.safe_dump_all(documents, default_flow_style=True, sort_keys=False, width=60)
    dumper = _IndentedDumper if style == "block-indented" else yaml.SafeDumper
    return yaml.dump_all(
        documents,
        Dumper=dumper,
        default_flow_style=False,
        sort_keys=False,
        indent=4 if style == "block-4" else 2,
    )


STYLES = [
    "block",
    "block-indented",
    "block-4",
    "flow",
    "json-2",
    "json-4",
    "json-tab",
    "json-compact",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    documents=st.lists(pods(), min_size=1, max_size=3),
    style=st.sampled_from(STYLES),
    crlf=st.booleans(),
    final_newline=st.booleans(),
    comment=st.booleans(),
)
def test_fix_keeps_its_promises(
    documents: list[dict[str, Any]], style: str, crlf: bool, final_newline: bool, comment: bool
) -> None:
    text = render(documents, style)
    if comment and not style.startswith("json"):
        text = "# generated\n" + text.replace(": busybox:1.36\n", ": busybox:1.36  # pinned\n")
    if not final_newline:
        text = text.rstrip("\n")
    if crlf:
        text = text.replace("\n", "\r\n")
    run_case(text, POLICY)


def run_case(text: str, policy: Settings) -> None:
    fixed = fix_source(parse(text), policy).text
    check_fix_invariants(text, fixed, policy, inserts_only="null" not in text)
    assert fix_source(parse(fixed), policy).text == fixed
