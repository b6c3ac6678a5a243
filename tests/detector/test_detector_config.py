"""Detector configuration: embedded defaults, Falco-style keys, one-sentence errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.alerts import Priority
from detector.config import OutputsQueue, default_rules_path, load_detector_settings
from detector.errors import ConfigError

RULE = "- rule: r\n  condition: proc.name = x\n  output: o\n  priority: notice\n"


def test_embedded_defaults() -> None:
    s = load_detector_settings(None, [], environ={"NODE_NAME": "node-7"})
    assert s.rules_files == (default_rules_path(),)
    assert len(s.rules.rules) == 7
    assert s.stdout_output.enabled and not s.file_output.enabled
    assert not s.json_output and s.priority is Priority.DEBUG and s.rule_matching == "all"
    assert s.rate_limit.enabled and s.rate_limit.max_burst == 20
    assert s.hostname == "node-7"


def test_full_config(tmp_path: Path) -> None:
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "rules.d" / "b.yaml").write_text(RULE.replace("r\n", "b\n", 1))
    (tmp_path / "rules.d" / "a.yml").write_text(RULE.replace("r\n", "a\n", 1))
    (tmp_path / "rules.d" / "notes.txt").write_text("ignored")
    config = tmp_path / "podlock.yaml"
    config.write_text(
        """\
rules_file:
  - builtin
  - rules.d
json_output: true
priority: WARNING
rule_matching: first
stdout_output: {enabled: false}
file_output: {enabled: true, filename: /tmp/podlock.log, keep_alive: true}
program_output: {enabled: true, program: "jq -c .", keep_alive: true}
http_output: {enabled: true, url: "http://127.0.0.1:2801/", timeout: 0.5}
rate_limit: {enabled: true, rate: 2, max_burst: 5, summary_interval: 30}
outputs_queue: {capacity: 500, max_bytes: 1048576, max_retry_interval: 2.5}
"""
    )
    s = load_detector_settings(str(config), [], environ={})
    assert [Path(f).name for f in s.rules_files] == ["default_rules.yaml", "a.yml", "b.yaml"]
    assert [r.name for r in s.rules.rules][-2:] == ["a", "b"]
    assert s.json_output and s.priority is Priority.WARNING and s.rule_matching == "first"
    assert not s.stdout_output.enabled
    assert (s.file_output.filename, s.file_output.keep_alive) == ("/tmp/podlock.log", True)
    assert s.program_output.program == "jq -c ."
    assert (s.http_output.url, s.http_output.timeout_s) == ("http://127.0.0.1:2801/", 0.5)
    assert (s.rate_limit.rate, s.rate_limit.max_burst, s.rate_limit.summary_interval_s) == (
        2.0, 5, 30.0
    )  # fmt: skip
    assert s.outputs_queue == OutputsQueue(500, 1 << 20, 2.5)


def test_cli_rules_replace_config_rules_file(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text(RULE)
    config = tmp_path / "c.yaml"
    config.write_text("rules_file: [builtin]\n")
    s = load_detector_settings(str(config), [str(mine)], environ={})
    assert s.rules_files == (str(mine),)
    assert [r.name for r in s.rules.rules] == ["r"]


ERRORS = [
    ("priority: loud\n", "key 'priority': unknown priority 'loud'"),
    ("json_output: yes please\n", "key 'json_output': must be true or false"),
    ("file_output: {enabled: true}\n", "key 'file_output.filename': required when enabled"),
    ("file_output: {enabled: true, filename: x, keep: 1}\n", "key 'file_output.keep': unknown key"),
    ("program_output: {enabled: true}\n", "key 'program_output.program': required when enabled"),
    ("http_output: {enabled: true, url: 'ftp://x'}\n", "key 'http_output.url': must be an http"),
    ("http_output: true\n", "key 'http_output': must be a mapping"),
    ("http_output: {enabled: true, url: 'http://x/', ca_cert: /ca.pem}\n",
     "key 'http_output.ca_cert': set for a plain http:// url, which has no TLS"),
    ("http_output: {enabled: true, url: 'https://x/', mtls: true, client_cert: c.pem}\n",
     "key 'http_output.mtls': needs both client_cert and client_key"),
    ("http_output: {insecure: 'yes'}\n", "key 'http_output.insecure': must be true or false"),
    ("rate_limit: {rate: -1}\n", "key 'rate_limit.rate': must be a non-negative number"),
    ("rate_limit: {max_burst: 0}\n", "key 'rate_limit.max_burst': must be at least 1"),
    ("rate_limit: {max_burst: 2.5}\n", "key 'rate_limit.max_burst': must be a whole number"),
    ("outputs_queue: {capacity: 0}\n", "key 'outputs_queue': capacity must be at least 1"),
    ("outputs_queue: {max_bytes: 100}\n", "max_bytes at least 65536"),
    ("outputs_queue: {size: 3}\n", "key 'outputs_queue.size': unknown key"),
    ("outputs_queue: {max_retry_interval: 0}\n", "'outputs_queue.max_retry_interval': must be"),
    ("rules_file: [nosuch.yaml]\n", "key 'rules_file': "),
    ("rules_file: {a: b}\n", "key 'rules_file': must be a list of paths"),
    ("rule_matching: some\n", "key 'rule_matching': must be all or first"),
    ("outputs: {rate: 1}\n", "key 'outputs': unknown key"),
    ("- a\n", "expected a mapping of keys at the top"),
    ("priority: [\n", "line 2: not valid YAML"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), ERRORS, ids=[e[1][:40] for e in ERRORS])
def test_config_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "podlock.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_detector_settings(str(config), [], environ={})
    assert str(err.value).startswith(f"config file {config}")
    assert message in str(err.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*/nope.yaml: cannot read it"):
        load_detector_settings(str(tmp_path / "nope.yaml"), [], environ={})


def test_bad_rules_file_from_cli_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- rule: r\n  condition: proc.nme = x\n  output: o\n  priority: notice\n")
    with pytest.raises(ConfigError, match=rf"rules file {bad}, line 1, rule 'r': unknown field"):
        load_detector_settings(None, [str(bad)], environ={})


def test_default_rules_are_package_data() -> None:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    assert '"*.yaml"' in pyproject.read_text().split("[tool.setuptools.package-data]")[1]
    assert Path(default_rules_path()).parent.name == "detector"
