"""Detector configuration in Falco's style: YAML read once at the edge into frozen
dataclasses. Without a file, the embedded defaults apply (stdout, default rules).

    rules_file: [builtin, /etc/podlock/rules.d]   # order matters; directories allowed
    json_output: false
    priority: debug                # minimum priority of rules loaded
    rule_matching: all             # or `first`, as Falco
    stdout_output: {enabled: true}
    file_output: {enabled: false, filename: /var/log/podlock.log, keep_alive: false}
    program_output: {enabled: false, program: "jq -c .", keep_alive: false}
    http_output: {enabled: false, url: "http://127.0.0.1:2801/", timeout: 2}
    outputs_queue: {capacity: 10000, max_bytes: 16777216, max_retry_interval: 10}
    rate_limit: {enabled: true, rate: 0.2, max_burst: 20, summary_interval: 60}
    k8s_audit: {log_file: "", webhook_bind: "", hold: 2, window: 30, skew: 1}
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from detector.alerts import PRIORITY_NAMES, Priority
from detector.errors import ConfigError
from detector.rules import RuleSet, load_rules

__all__ = ["ConfigError", "DetectorSettings", "load_detector_settings"]

BUILTIN_RULES = "builtin"  # the rules_file entry that names the packaged default rules


def default_rules_path() -> str:
    return str(resources.files("detector").joinpath("default_rules.yaml"))


@dataclass(frozen=True)
class StdoutOutput:
    enabled: bool = True
    """Write each alert to standard output (text, or JSON with json_output / --json)."""


@dataclass(frozen=True)
class FileOutput:
    enabled: bool = False
    filename: str = ""
    """Appended to, one alert per line."""
    keep_alive: bool = False
    """Keep the file open (true) or open, append and close per batch of alerts (false)."""


@dataclass(frozen=True)
class ProgramOutput:
    enabled: bool = False
    program: str = ""
    """A shell command fed alerts on its standard input, one per line."""
    keep_alive: bool = False
    """One long-running program (true) or one run per alert (false, as Falco)."""


@dataclass(frozen=True)
class HttpOutput:
    enabled: bool = False
    url: str = ""
    """Each alert's JSON is POSTed here (falcosidekick takes it as is)."""
    timeout_s: float = 2.0
    """Per request; a sender thread posts so a slow receiver never stalls detection."""
    user_agent: str = "podlock-detector"
    # https:// only, Falco's keys and meanings: the receiver's certificate is checked against
    # the system's CAs, or `ca_cert` (a PEM file) and `ca_path` (a c_rehash'ed directory) when
    # set; `insecure` checks nothing; `mtls` presents `client_cert` with `client_key`.
    insecure: bool = False
    ca_cert: str = ""
    ca_path: str = ""
    mtls: bool = False
    client_cert: str = ""
    client_key: str = ""


@dataclass(frozen=True)
class OutputsQueue:
    """Each enabled output has its own queue and sender thread, bounded by these (Falco's
    `outputs_queue.capacity`, plus a bound in bytes). Alerts that do not fit are dropped,
    counted, logged and reported by the next alert that output delivers."""

    capacity: int = 10_000
    """Alerts waiting per output at most."""
    max_bytes: int = 16 << 20
    """Bytes of encoded alerts waiting per output at most."""
    max_retry_interval_s: float = 10.0
    """Longest wait between retries of a failing output (the wait doubles from 0.1 s)."""


@dataclass(frozen=True)
class RateLimit:
    """A token bucket per (container, rule): `max_burst` alerts at once, then `rate`
    per second. Held-back alerts are counted; the next alert emitted for that
    container and rule reports the count in `podlock.suppressed`, and if none comes
    within `summary_interval_s` the latest held-back alert is released carrying it."""

    enabled: bool = True
    rate: float = 0.2
    max_burst: int = 20
    summary_interval_s: float = 60.0


@dataclass(frozen=True)
class K8sAudit:
    """Who ran each exec session, from the API server's audit events (detector/audit.py).
    Off unless a source is given."""

    log_file: str = ""
    """The API server's audit log (`--audit-log-path`), followed across rotation."""
    webhook_bind: str = ""
    """HOST:PORT to serve the audit webhook backend on (`--audit-webhook-config-file`)."""
    webhook_cert: str = ""
    webhook_key: str = ""
    """TLS for the webhook backend; plain HTTP without them."""
    hold_s: float = 2.0
    """How long an exec-session alert waits for its audit record."""
    window_s: float = 30.0
    """A session starts at most this long after its request was received."""
    skew_s: float = 1.0
    """How far the node's clock may run behind the API server's."""

    @property
    def enabled(self) -> bool:
        return bool(self.log_file or self.webhook_bind)


@dataclass(frozen=True)
class DetectorSettings:
    rules: RuleSet
    rules_files: tuple[str, ...] = ()
    """The rules files loaded, in order (directories expanded)."""
    json_output: bool = False
    priority: Priority = Priority.DEBUG
    """Rules less severe than this are not loaded."""
    rule_matching: Literal["all", "first"] = "all"
    """`all`: every matching rule alerts; `first`: only the first, in load order."""
    stdout_output: StdoutOutput = field(default_factory=StdoutOutput)
    file_output: FileOutput = field(default_factory=FileOutput)
    program_output: ProgramOutput = field(default_factory=ProgramOutput)
    http_output: HttpOutput = field(default_factory=HttpOutput)
    outputs_queue: OutputsQueue = field(default_factory=OutputsQueue)
    rate_limit: RateLimit = field(default_factory=RateLimit)
    k8s_audit: K8sAudit = field(default_factory=K8sAudit)
    hostname: str = ""
    """Alerts' `hostname`: $NODE_NAME, else the host name."""


HTTP_TLS_KEYS = frozenset(
    {"user_agent", "insecure", "ca_cert", "ca_path", "mtls", "client_cert", "client_key"}
)

_TOP_KEYS = frozenset(
    {
        "rules_file", "json_output", "priority", "rule_matching", "stdout_output",
        "file_output", "program_output", "http_output", "rate_limit", "outputs_queue",
        "k8s_audit",
    }
)  # fmt: skip


def load_detector_settings(
    config_path: str | None,
    rules_paths: list[str],
    environ: Mapping[str, str] | None = None,
) -> DetectorSettings:
    """Read the config file (if any) and the rules files; `rules_paths` (from --rules)
    replace the config's `rules_file`. Raises ConfigError naming file, key, problem."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    base = Path.cwd()
    where = "built-in configuration"
    if config_path is not None:
        where = f"config file {config_path}"
        raw = _read_config(config_path)
        base = Path(config_path).resolve().parent
    reader = _Reader(where, raw)
    reader.check_keys(raw, _TOP_KEYS, "")

    if rules_paths:
        entries, entry_base = list(rules_paths), Path.cwd()
    else:
        entries = reader.str_list("rules_file", [BUILTIN_RULES])
        entry_base = base
    files = _expand_rules_entries(entries, entry_base, where)
    rules = load_rules([(f, _read_text(f)) for f in files])

    priority_text = reader.text("priority", "debug")
    priority = Priority.parse(priority_text)
    if priority is None:
        raise ConfigError(
            f"{where}: key 'priority': unknown priority '{priority_text}' (one of {PRIORITY_NAMES})"
        )
    matching = reader.text("rule_matching", "all")
    if matching not in ("all", "first"):
        raise ConfigError(f"{where}: key 'rule_matching': must be all or first")

    stdout = reader.section("stdout_output", {"enabled"})
    file_out = reader.section("file_output", {"enabled", "filename", "keep_alive"})
    prog = reader.section("program_output", {"enabled", "program", "keep_alive"})
    http = reader.section("http_output", {"enabled", "url", "timeout", *HTTP_TLS_KEYS})
    queue = reader.section("outputs_queue", {"capacity", "max_bytes", "max_retry_interval"})
    rate = reader.section("rate_limit", {"enabled", "rate", "max_burst", "summary_interval"})
    audit = reader.section(
        "k8s_audit",
        {"log_file", "webhook_bind", "webhook_cert", "webhook_key", "hold", "window", "skew"},
    )

    file_output = FileOutput(
        enabled=reader.flag("file_output.enabled", False, file_out),
        filename=reader.text("file_output.filename", "", file_out),
        keep_alive=reader.flag("file_output.keep_alive", False, file_out),
    )
    if file_output.enabled and not file_output.filename:
        raise ConfigError(f"{where}: key 'file_output.filename': required when enabled")
    program_output = ProgramOutput(
        enabled=reader.flag("program_output.enabled", False, prog),
        program=reader.text("program_output.program", "", prog),
        keep_alive=reader.flag("program_output.keep_alive", False, prog),
    )
    if program_output.enabled and not program_output.program:
        raise ConfigError(f"{where}: key 'program_output.program': required when enabled")
    http_output = HttpOutput(
        enabled=reader.flag("http_output.enabled", False, http),
        url=reader.text("http_output.url", "", http),
        timeout_s=reader.number("http_output.timeout", 2.0, http),
        user_agent=reader.text("http_output.user_agent", "podlock-detector", http),
        insecure=reader.flag("http_output.insecure", False, http),
        ca_cert=reader.text("http_output.ca_cert", "", http),
        ca_path=reader.text("http_output.ca_path", "", http),
        mtls=reader.flag("http_output.mtls", False, http),
        client_cert=reader.text("http_output.client_cert", "", http),
        client_key=reader.text("http_output.client_key", "", http),
    )
    if http_output.enabled and not http_output.url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: key 'http_output.url': must be an http:// or https:// URL")
    tls_keys = [key for key in sorted(HTTP_TLS_KEYS) if key in http and key != "user_agent"]
    if http_output.enabled and http_output.url.startswith("http://") and tls_keys:
        raise ConfigError(
            f"{where}: key 'http_output.{tls_keys[0]}': set for a plain http:// url, which has "
            "no TLS (use https://)"
        )
    if http_output.mtls and not (http_output.client_cert and http_output.client_key):
        raise ConfigError(f"{where}: key 'http_output.mtls': needs both client_cert and client_key")
    outputs_queue = OutputsQueue(
        capacity=int(reader.number("outputs_queue.capacity", 10_000, queue, whole=True)),
        max_bytes=int(reader.number("outputs_queue.max_bytes", 16 << 20, queue, whole=True)),
        max_retry_interval_s=reader.number("outputs_queue.max_retry_interval", 10.0, queue),
    )
    if outputs_queue.capacity < 1 or outputs_queue.max_bytes < 65536:
        raise ConfigError(
            f"{where}: key 'outputs_queue': capacity must be at least 1 and max_bytes at "
            "least 65536 (an unbounded queue is not offered)"
        )
    if outputs_queue.max_retry_interval_s < 0.1:
        raise ConfigError(f"{where}: key 'outputs_queue.max_retry_interval': must be at least 0.1")
    rate_limit = RateLimit(
        enabled=reader.flag("rate_limit.enabled", True, rate),
        rate=reader.number("rate_limit.rate", 0.2, rate),
        max_burst=int(reader.number("rate_limit.max_burst", 20, rate, whole=True)),
        summary_interval_s=reader.number("rate_limit.summary_interval", 60.0, rate),
    )
    if rate_limit.max_burst < 1:
        raise ConfigError(f"{where}: key 'rate_limit.max_burst': must be at least 1")

    k8s_audit = K8sAudit(
        log_file=reader.text("k8s_audit.log_file", "", audit),
        webhook_bind=reader.text("k8s_audit.webhook_bind", "", audit),
        webhook_cert=reader.text("k8s_audit.webhook_cert", "", audit),
        webhook_key=reader.text("k8s_audit.webhook_key", "", audit),
        hold_s=reader.number("k8s_audit.hold", 2.0, audit),
        window_s=reader.number("k8s_audit.window", 30.0, audit),
        skew_s=reader.number("k8s_audit.skew", 1.0, audit),
    )
    bind = k8s_audit.webhook_bind
    if bind and not bind.rpartition(":")[2].isdigit():
        raise ConfigError(f"{where}: key 'k8s_audit.webhook_bind': must be HOST:PORT, not {bind!r}")
    if bool(k8s_audit.webhook_cert) != bool(k8s_audit.webhook_key):
        raise ConfigError(f"{where}: key 'k8s_audit.webhook_key': give both the cert and the key")

    return DetectorSettings(
        rules=rules,
        rules_files=tuple(files),
        json_output=reader.flag("json_output", False),
        priority=priority,
        rule_matching="first" if matching == "first" else "all",
        stdout_output=StdoutOutput(enabled=reader.flag("stdout_output.enabled", True, stdout)),
        file_output=file_output,
        program_output=program_output,
        http_output=http_output,
        outputs_queue=outputs_queue,
        rate_limit=rate_limit,
        k8s_audit=k8s_audit,
        hostname=env.get("NODE_NAME") or socket.gethostname(),
    )


def _read_text(path: str, what: str = "rules file") -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise ConfigError(f"{what} {path}: cannot read it: {reason}") from None


def _read_config(path: str) -> dict[str, Any]:
    text = _read_text(path, "config file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "syntax error"
        raise ConfigError(f"config file {path}{line}: not valid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys at the top")
    return data


def _expand_rules_entries(entries: list[str], base: Path, where: str) -> list[str]:
    files: list[str] = []
    for entry in entries:
        if entry == BUILTIN_RULES:
            files.append(default_rules_path())
            continue
        path = Path(entry) if Path(entry).is_absolute() else base / entry
        if path.is_dir():
            files.extend(str(p) for p in sorted(path.iterdir()) if p.suffix in (".yaml", ".yml"))
        elif path.exists():
            files.append(str(path))
        else:
            raise ConfigError(f"{where}: key 'rules_file': {path} does not exist")
    return files


class _Reader:
    """Typed reads of config keys, each failure naming the file and the dotted key."""

    def __init__(self, where: str, raw: dict[str, Any]) -> None:
        self.where = where
        self.raw = raw

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where}: key '{key}': {problem}")

    def check_keys(
        self, raw: Mapping[str, Any], allowed: frozenset[str] | set[str], at: str
    ) -> None:
        for key in raw:
            if key not in allowed:
                name = f"{at}.{key}" if at else str(key)
                raise self.fail(name, f"unknown key (known: {', '.join(sorted(allowed))})")

    def section(self, key: str, allowed: set[str]) -> dict[str, Any]:
        value = self.raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, "must be a mapping")
        self.check_keys(value, allowed, key)
        return value

    def _get(self, key: str, src: Mapping[str, Any] | None) -> Any:
        return (self.raw if src is None else src).get(key.rsplit(".", 1)[-1])

    def flag(self, key: str, default: bool, src: Mapping[str, Any] | None = None) -> bool:
        value = self._get(key, src)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, not {value!r}")
        return value

    def text(self, key: str, default: str, src: Mapping[str, Any] | None = None) -> str:
        value = self._get(key, src)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, not {value!r}")
        return value

    def number(
        self, key: str, default: float, src: Mapping[str, Any] | None = None, whole: bool = False
    ) -> float:
        value = self._get(key, src)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise self.fail(key, f"must be a non-negative number, not {value!r}")
        if whole and not isinstance(value, int):
            raise self.fail(key, f"must be a whole number, not {value!r}")
        return float(value)

    def str_list(self, key: str, default: list[str]) -> list[str]:
        value = self.raw.get(key)
        if value is None:
            return default
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "must be a list of paths")
        return list(value)
