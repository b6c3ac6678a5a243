"""The policy file: defaults, overrides, and one clear sentence for every kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from webhook.config import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return str(path)


def test_embedded_default() -> None:
    settings = load_settings(None)
    assert settings.default_mode == "enforce"
    assert settings.enabled_rules == {
        "privileged-container",
        "root-user",
        "writable-root-filesystem",
    }
    assert settings.exec_action == "audit"
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
    assert settings.enabled_rules == {"privileged-container", "writable-root-filesystem"}
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
