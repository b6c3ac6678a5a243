"""`--fix` on many shapes of manifest: exact text for the common layouts, invariants for all.

Every case checks the promises of `check_fix_invariants`: the fixed text reads back as
`hardening.apply(original, plan)`, text is only inserted, a second fix has nothing to do, and
hardened containers lose their writable-root-filesystem finding.
"""

from __future__ import annotations

import pytest
from lint_support import check_fix_invariants, parse

from webhook.config import Settings
from webhook.fixer import CannotFix
from webhook.lint import fix_source


@pytest.fixture
def settings(core_settings: Settings) -> Settings:
    """These tables pin `profile: core` to what podlock did before the strict rules;
    tests/webhook/test_strict.py and tests/lint/test_lint_strict.py judge the default."""
    return core_settings


POD_HEAD = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n"

# (case, input, exact expected output or None to check the invariants only)
CASES: list[tuple[str, str, str | None]] = [
    (
        "indented sequences, no securityContext, no volumes",
        POD_HEAD + "spec:\n  containers:\n    - name: app\n      image: busybox\n",
        POD_HEAD + "spec:\n  containers:\n    - name: app\n      image: busybox\n"
        "      securityContext:\n        readOnlyRootFilesystem: true\n"
        "      volumeMounts:\n        - name: podlock-app-tmp\n          mountPath: /tmp\n"
        "  volumes:\n    - name: podlock-app-tmp\n      emptyDir: {}\n",
    ),
    (
        "sequences at the parent's indentation",
        POD_HEAD + "spec:\n  containers:\n  - name: app\n    image: busybox\n",
        POD_HEAD + "spec:\n  containers:\n  - name: app\n    image: busybox\n"
        "    securityContext:\n      readOnlyRootFilesystem: true\n"
        "    volumeMounts:\n    - name: podlock-app-tmp\n      mountPath: /tmp\n"
        "  volumes:\n  - name: podlock-app-tmp\n    emptyDir: {}\n",
    ),
    (
        "existing securityContext and volumes, comments at line ends",
        POD_HEAD + "spec:\n  containers:\n  - name: app  # main\n    image: busybox\n"
        "    securityContext:\n      runAsUser: 1000  # not root\n"
        "  volumes:  # none yet but one\n  - name: data\n    emptyDir: {}  # scratch\n"
        "# trailing comment\n",
        POD_HEAD + "spec:\n  containers:\n  - name: app  # main\n    image: busybox\n"
        "    securityContext:\n      runAsUser: 1000  # not root\n"
        "      readOnlyRootFilesystem: true\n"
        "    volumeMounts:\n    - name: podlock-app-tmp\n      mountPath: /tmp\n"
        "  volumes:  # none yet but one\n  - name: data\n    emptyDir: {}  # scratch\n"
        "  - name: podlock-app-tmp\n    emptyDir: {}\n"
        "# trailing comment\n",
    ),
    (
        "an existing /tmp mount: no new volume, only the flag",
        POD_HEAD + "spec:\n  containers:\n  - name: app\n    image: busybox\n"
        "    volumeMounts:\n    - {name: scratch, mountPath: /tmp}\n"
        "  volumes:\n  - {name: scratch, emptyDir: {}}\n",
        POD_HEAD + "spec:\n  containers:\n  - name: app\n    image: busybox\n"
        "    volumeMounts:\n    - {name: scratch, mountPath: /tmp}\n"
        "    securityContext:\n      readOnlyRootFilesystem: true\n"
        "  volumes:\n  - {name: scratch, emptyDir: {}}\n",
    ),
    (
        "flow securityContext: {} and flow lists",
        POD_HEAD + "spec:\n  containers: [{name: app, image: busybox, securityContext: {}}]\n"
        "  volumes: []\n",
        POD_HEAD + "spec:\n  containers: [{name: app, image: busybox, securityContext: "
        "{readOnlyRootFilesystem: true}, volumeMounts: [{name: podlock-app-tmp, mountPath: /tmp}]}]"
        "\n  volumes: [{name: podlock-app-tmp, emptyDir: {}}]\n",
    ),
    (
        "CRLF line endings",
        (POD_HEAD + "spec:\n  containers:\n  - name: app\n    image: busybox\n").replace(
            "\n", "\r\n"
        ),
        (
            POD_HEAD + "spec:\n  containers:\n  - name: app\n    image: busybox\n"
            "    securityContext:\n      readOnlyRootFilesystem: true\n"
            "    volumeMounts:\n    - name: podlock-app-tmp\n      mountPath: /tmp\n"
            "  volumes:\n  - name: podlock-app-tmp\n    emptyDir: {}\n"
        ).replace("\n", "\r\n"),
    ),
    (
        "no newline at the end of the file",
        POD_HEAD + "spec:\n  containers:\n  - name: app\n    image: busybox",
        POD_HEAD + "spec:\n  containers:\n  - name: app\n    image: busybox\n"
        "    securityContext:\n      readOnlyRootFilesystem: true\n"
        "    volumeMounts:\n    - name: podlock-app-tmp\n      mountPath: /tmp\n"
        "  volumes:\n  - name: podlock-app-tmp\n    emptyDir: {}",
    ),
    (
        "JSON with four-space indentation",
        '{\n    "apiVersion": "v1",\n    "kind": "Pod",\n    "metadata": {"name": "p"},\n'
        '    "spec": {\n        "containers": [\n            {\n'
        '                "name": "app",\n                "image": "busybox"\n'
        "            }\n        ]\n    }\n}\n",
        '{\n    "apiVersion": "v1",\n    "kind": "Pod",\n    "metadata": {"name": "p"},\n'
        '    "spec": {\n        "containers": [\n            {\n'
        '                "name": "app",\n                "image": "busybox",\n'
        '                "securityContext": {\n'
        '                    "readOnlyRootFilesystem": true\n                },\n'
        '                "volumeMounts": [\n                    {\n'
        '                        "name": "podlock-app-tmp",\n'
        '                        "mountPath": "/tmp"\n                    }\n'
        "                ]\n            }\n        ],\n"
        '        "volumes": [\n            {\n                "name": "podlock-app-tmp",\n'
        '                "emptyDir": {}\n            }\n        ]\n    }\n}\n',
    ),
    (
        "JSON on one line",
        '{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": '
        '{"containers": [{"name": "app", "image": "busybox", "securityContext": {}}], '
        '"volumes": []}}',
        '{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": '
        '{"containers": [{"name": "app", "image": "busybox", "securityContext": '
        '{"readOnlyRootFilesystem": true}, "volumeMounts": [{"name": "podlock-app-tmp", '
        '"mountPath": "/tmp"}]}], "volumes": [{"name": "podlock-app-tmp", "emptyDir": {}}]}}',
    ),
    (
        "JSON indented with tabs",
        '{\n\t"apiVersion": "v1",\n\t"kind": "Pod",\n\t"metadata": {"name": "p"},\n'
        '\t"spec": {\n\t\t"containers": [\n\t\t\t{\n\t\t\t\t"name": "app",\n'
        '\t\t\t\t"image": "busybox"\n\t\t\t}\n\t\t],\n\t\t"volumes": [\n'
        '\t\t\t{"name": "data", "emptyDir": {}}\n\t\t]\n\t}\n}\n',
        None,
    ),
    (
        "JSON with CRLF line endings and no trailing newline",
        '{\r\n  "apiVersion": "v1",\r\n  "kind": "Pod",\r\n  "metadata": {"name": "p"},\r\n'
        '  "spec": {\r\n    "containers": [\r\n      {"name": "app", "image": "busybox"}\r\n'
        "    ]\r\n  }\r\n}",
        '{\r\n  "apiVersion": "v1",\r\n  "kind": "Pod",\r\n  "metadata": {"name": "p"},\r\n'
        '  "spec": {\r\n    "containers": [\r\n      {"name": "app", "image": "busybox", '
        '"securityContext": {"readOnlyRootFilesystem": true}, "volumeMounts": [{"name": '
        '"podlock-app-tmp", "mountPath": "/tmp"}]}\r\n    ],\r\n    "volumes": [\r\n'
        '      {\r\n        "name": "podlock-app-tmp",\r\n        "emptyDir": {}\r\n'
        "      }\r\n    ]\r\n  }\r\n}",
    ),
    (
        "YAML in JSON style (quoted keys, flow collections)",
        '{"apiVersion": "v1", "kind": "Pod",\n "metadata": {"name": "p"},\n "spec": {\n'
        '  "containers": [{"name": "app", "image": "busybox"}]}}\n',
        '{"apiVersion": "v1", "kind": "Pod",\n "metadata": {"name": "p"},\n "spec": {\n'
        '  "containers": [{"name": "app", "image": "busybox", "securityContext": '
        '{"readOnlyRootFilesystem": true}, "volumeMounts": [{"name": "podlock-app-tmp", '
        '"mountPath": "/tmp"}]}], "volumes": [{"name": "podlock-app-tmp", "emptyDir": {}}]}}\n',
    ),
    (
        "multiple documents: only the one needing it changes",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n---\n"
        + POD_HEAD
        + "spec:\n  containers:\n  - name: app\n    image: busybox\n"
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: b\n",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n---\n"
        + POD_HEAD
        + "spec:\n  containers:\n  - name: app\n    image: busybox\n"
        "    securityContext:\n      readOnlyRootFilesystem: true\n"
        "    volumeMounts:\n    - name: podlock-app-tmp\n      mountPath: /tmp\n"
        "  volumes:\n  - name: podlock-app-tmp\n    emptyDir: {}\n"
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: b\n",
    ),
    (
        "a block scalar as the container's last field",
        POD_HEAD + "spec:\n  containers:\n  - name: app\n    image: busybox\n    command:\n"
        "    - sh\n    - -c\n    - |\n      echo hello\n      sleep 5\n\n"
        "  restartPolicy: Never\n",
        None,
    ),
    (
        "document end markers and explicit starts",
        "--- # the pod\n" + POD_HEAD + "spec:\n  containers:\n  - name: app\n"
        "    image: busybox\n...\n--- !!map\nkind: Other\n",
        None,
    ),
    (
        "UTF-8 text before the insertion points",
        POD_HEAD.replace("name: p", "name: p  # café ☕ 𝄞")
        + "spec:\n  containers:\n  - name: app  # ünïcode\n    image: busybox\n"
        '    env:\n    - {name: GREETING, value: "grüß dich 👋"}\n',
        None,
    ),
    (
        "volumes: null and volumeMounts with no value",
        POD_HEAD + "spec:\n  containers:\n  - name: app\n    image: busybox\n"
        "    volumeMounts:\n  volumes: null\n",
        POD_HEAD + "spec:\n  containers:\n  - name: app\n    image: busybox\n"
        "    volumeMounts: [{name: podlock-app-tmp, mountPath: /tmp}]\n"
        "    securityContext:\n      readOnlyRootFilesystem: true\n"
        "  volumes: [{name: podlock-app-tmp, emptyDir: {}}]\n",
    ),
    (
        "nginx image: a mount per writable path, names that do not collide",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n"
        "    spec:\n      containers:\n      - name: web\n        image: nginx:1.27\n"
        "      volumes:\n      - name: podlock-web-tmp\n        configMap: {name: x}\n",
        None,
    ),
    (
        "CronJob, init and sidecar containers, several already hardened",
        "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: c\nspec:\n"
        "  schedule: '@daily'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n"
        "          initContainers:\n          - name: init\n            image: busybox\n"
        "          containers:\n          - name: main\n            image: busybox\n"
        "            securityContext: {readOnlyRootFilesystem: true}\n"
        "          - name: side\n            image: nginx\n"
        "            securityContext:\n              readOnlyRootFilesystem: false\n",
        None,
    ),
    (
        "kind: List items",
        "apiVersion: v1\nkind: List\nitems:\n- "
        + POD_HEAD.replace("\n", "\n  ").rstrip()
        + "\n  spec:\n    containers:\n    - name: a\n      image: busybox\n"
        "- apiVersion: v1\n  kind: Pod\n  metadata: {name: q}\n  spec:\n"
        "    containers:\n    - name: b\n      image: busybox\n",
        None,
    ),
    (
        "a sequence item whose content starts on the next line",
        POD_HEAD + "spec:\n  containers:\n  -\n    name: app\n    image: busybox\n",
        None,
    ),
    (
        "ephemeral containers get the flag but no volume",
        POD_HEAD + "spec:\n  containers:\n  - name: app\n    image: busybox\n"
        "    securityContext: {readOnlyRootFilesystem: true}\n"
        "  ephemeralContainers:\n  - name: debugger\n    image: busybox\n",
        None,
    ),
]


@pytest.mark.parametrize(("case", "before", "after"), CASES, ids=[c[0] for c in CASES])
def test_fix(case: str, before: str, after: str | None, settings: Settings) -> None:
    fixed = fix_source(parse(before), settings).text
    if after is not None:
        assert fixed == after
    assert fixed != before
    check_fix_invariants(before, fixed, settings, inserts_only="null" not in before)
    # idempotent at the text level too
    assert fix_source(parse(fixed), settings).text == fixed


UNCHANGED = [
    (
        "already hardened",
        POD_HEAD + "spec:\n  containers:\n  - name: app\n    image: busybox\n"
        "    securityContext:\n      readOnlyRootFilesystem: true\n",
    ),
    (
        "explicit false is left for a person to decide",
        POD_HEAD + "spec:\n  containers:\n"
        "  - name: app\n    image: busybox\n    securityContext: {readOnlyRootFilesystem: false}\n",
    ),
    (
        "Windows pod",
        POD_HEAD + "spec:\n  os: {name: windows}\n  containers:\n  - name: app\n"
        "    image: mcr.microsoft.com/windows/nanoserver:ltsc2022\n",
    ),
    (
        "exempt namespace",
        POD_HEAD + "  namespace: kube-system\nspec:\n  containers:\n"
        "  - name: app\n    image: busybox\n",
    ),
    ("no workload at all", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"),
    (
        "not a Kubernetes object (no apiVersion)",
        "kind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: app, image: busybox}]\n",
    ),
    ("empty file", ""),
]


@pytest.mark.parametrize(("case", "text"), UNCHANGED, ids=[c[0] for c in UNCHANGED])
def test_nothing_to_fix_keeps_the_text(case: str, text: str, settings: Settings) -> None:
    assert fix_source(parse(text), settings).text == text


REFUSED = [
    (
        "an alias shared by two containers",
        POD_HEAD + "spec:\n  containers:\n  - name: a\n    image: busybox\n"
        "    securityContext: &sc {runAsUser: 1000}\n"
        "  - name: b\n    image: busybox\n    securityContext: *sc\n",
        "aliases, merge keys",
    ),
    (
        "a securityContext that comes from a merge key",
        POD_HEAD + "spec:\n  containers:\n  - name: a\n    image: busybox\n"
        "    <<: {securityContext: {runAsUser: 1000}}\n",
        "aliases, merge keys",
    ),
]


@pytest.mark.parametrize(("case", "text", "reason"), REFUSED, ids=[c[0] for c in REFUSED])
def test_unsafe_fixes_are_refused(case: str, text: str, reason: str, settings: Settings) -> None:
    with pytest.raises(CannotFix, match=reason):
        fix_source(parse(text), settings)
