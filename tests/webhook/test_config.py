"""The policy file: defaults, overrides, and one clear sentence for every kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhook.config import CORE_RULES, POD_RULES, STRICT_RULES, ConfigError, load_settings


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return str(path)


def test_embedded_default() -> None:
    settings = load_settings(None)
    assert settings.default_mode == "enforce"
    assert settings.profile == "strict"
    assert settings.enabled_rules == set(POD_RULES)
    assert settings.exec_action == "audit"
    assert settings.image_action == "warn"
    assert (settings.drop_all_capabilities, settings.seccomp_runtime_default) == (False, False)
    assert settings.exempt_namespaces == ("kube-system", "podlock-system")
    assert settings.default_writable_paths == ("/tmp",)
    assert "/" in settings.forbidden_writable_paths
    assert [p.name for p in settings.image_profiles] == ["nginx"]


def test_a_file_overrides_only_what_it_says(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            "rules:\n  root-user: off\n  exec-into-hardened-pod: deny\n"
            "emptyDir: {medium: Memory, sizeLimit: 32Mi}\nexemptNamespaces: [infra]\n",
        )
    )
    assert settings.enabled_rules == set(POD_RULES) - {"root-user"}
    assert settings.exec_action == "deny"
    assert (settings.empty_dir_medium, settings.empty_dir_size_limit) == ("Memory", "32Mi")
    assert settings.exempt_namespaces == ("infra",)
    assert settings.default_writable_paths == ("/tmp",)  # untouched keys keep the default


def test_a_key_left_out_inside_a_section_keeps_the_default(tmp_path: Path) -> None:
    # Setting only the default writable paths must not drop the forbidden list: that list is
    # what stops a pod from asking for a writable /usr/bin.
    default = load_settings(None)
    settings = load_settings(write(tmp_path, "writablePaths:\n  defaults: [/tmp, /var/tmp]\n"))
    assert settings.default_writable_paths == ("/tmp", "/var/tmp")
    assert settings.forbidden_writable_paths == default.forbidden_writable_paths
    assert "/usr/bin" in settings.forbidden_writable_paths
    only_size = load_settings(write(tmp_path, "emptyDir:\n  sizeLimit: 64Mi\n"))
    assert (only_size.empty_dir_medium, only_size.empty_dir_size_limit) == ("", "64Mi")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rules:\n  exec-into-hardened-pod: off\n", "off"),
        ("rules:\n  exec-into-hardened-pod: 'off'\n", "off"),
        ("rules:\n  exec-into-hardened-pod: warn\n", "warn"),
    ],
)
def test_exec_rule_takes_an_action(tmp_path: Path, text: str, expected: str) -> None:
    assert load_settings(write(tmp_path, text)).exec_action == expected


def test_core_is_the_three_rules_of_the_design(tmp_path: Path) -> None:
    core = load_settings(write(tmp_path, "profile: core\n"))
    assert core.enabled_rules == set(CORE_RULES)
    assert (core.exec_action, core.image_action) == ("audit", "off")


@pytest.mark.parametrize("rule", STRICT_RULES)
def test_a_rule_named_explicitly_wins_over_the_profile(tmp_path: Path, rule: str) -> None:
    core_plus = load_settings(write(tmp_path, f"profile: core\nrules:\n  {rule}: on\n"))
    assert core_plus.enabled_rules == {*CORE_RULES, rule}
    strict_minus = load_settings(write(tmp_path, f"rules:\n  {rule}: off\n"))
    assert strict_minus.enabled_rules == set(POD_RULES) - {rule}


def test_image_rule_takes_an_action(tmp_path: Path) -> None:
    text = "profile: core\nrules:\n  mutable-image-reference: deny\n"
    assert load_settings(write(tmp_path, text)).image_action == "deny"
    text = "rules:\n  mutable-image-reference: off\n"
    assert load_settings(write(tmp_path, text)).image_action == "off"


def test_strict_keys(tmp_path: Path) -> None:
    text = (
        "capabilities: {allowed: [cap_net_bind_service]}\n"
        "hostPaths: {readOnly: [/etc/ssl/certs/]}\n"
        "hardening: {dropAllCapabilities: on, seccompRuntimeDefault: on}\n"
        "writablePaths: {roots: [/srv//state/, /tmp]}\n"
    )
    settings = load_settings(write(tmp_path, text))
    assert settings.allowed_capabilities == {"NET_BIND_SERVICE"}
    assert settings.host_paths_read_only == ("/etc/ssl/certs",)
    assert settings.drop_all_capabilities and settings.seccomp_runtime_default
    assert settings.writable_roots == ("/srv/state", "/tmp")


def test_empty_file_is_the_default(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")) == load_settings(None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("defaultMode: block\n", "defaultMode: must be one of enforce, warn, audit, not 'block'"),
        ("rules:\n  root-user: maybe\n", "rules.root-user: must be on or off, not 'maybe'"),
        ("rules:\n  no-such-rule: on\n", "rules.no-such-rule: unknown key"),
        ("rules: [a]\n", "rules: must be a mapping, not a list"),
        ("exemptNamespace: [a]\n", "exemptNamespace: unknown key"),
        ("exemptNamespaces: kube-system\n", "exemptNamespaces: must be a list of strings"),
        ("exemptNamespaces: [1]\n", "exemptNamespaces[0]: must be a non-empty string"),
        (
            "writablePaths:\n  defaults: [tmp]\n",
            "writablePaths.defaults[0]: must be an absolute path",
        ),
        ("imageProfiles: {}\n", "imageProfiles: must be a list"),
        ("imageProfiles:\n- {name: x, images: [a], paths: [rel]}\n", "imageProfiles[0].paths[0]"),
        ("emptyDir: {medium: Disk}\n", "emptyDir.medium: must be one of '', Memory"),
        ("kind: Deployment\n", "kind: must be Policy"),
        ("profile: lax\n", "profile: must be one of core, strict, not 'lax'"),
        ("rules:\n  mutable-image-reference: on\n", "must be one of deny, warn, off, not True"),
        ("hardening: {dropAll: on}\n", "hardening.dropAll: unknown key"),
        ("writablePaths: {roots: [/var/../usr]}\n", "writablePaths.roots[0]: must not contain"),
        (
            "writablePaths: {defaults: [/srv]}\n",
            "writablePaths.defaults[0]: /srv is not under writablePaths.roots",
        ),
        ("hostPaths: {readOnly: [etc]}\n", "hostPaths.readOnly[0]: must be an absolute path"),
        ("- a\n- b\n", "the policy must be a mapping of keys, not a list"),
        ("rules:\n  root-user: on\n bad-indent: 1\n", "line 3: not valid YAML"),
        ("rules: {\n", "not valid YAML"),
    ],
)
def test_bad_files_get_one_sentence(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    error = str(caught.value)
    assert error.startswith(f"{path}: ")
    assert message in error
    assert "\n" not in error


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the policy file"):
        load_settings(str(tmp_path / "absent.yaml"))
    binary = tmp_path / "policy.bin"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(str(binary))
