"""Rules files in Falco's format: what loads, what each mistake says, appends/overrides."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from detector.alerts import Priority
from detector.errors import ConfigError
from detector.events import Session
from detector.rules import RuleSet, load_rules
from detector.synthetic import engine, exec_, proc, write

# the example rules of the project's seed notes, kept in the repository
SEED = Path(__file__).resolve().parent / "fixtures" / "rules" / "falco-seed-rules.yaml"
SEED_TEXT = """\
- list: linux_shells
  items: [bash, zsh, ksh, sh, csh]

- macro: container
  condition: container.id != host

- rule: detect shell inside a container
  desc: alert if a shell such as bash is open inside the container
  condition: container.id != host and proc.name = bash
  output: bash shell opened (user=%user.name %container.id)
  priority: WARNING

- rule: detect any shell inside a container
  desc: alert if any known shell is open inside the container
  condition: container and proc.name in (linux_shells)
  output: shell opened (user=%user.name shell=%proc.name %container.id)
  priority: WARNING
"""


def load(text: str, name: str = "r.yaml") -> RuleSet:
    return load_rules([(name, textwrap.dedent(text))])


def test_seed_rules_load_unchanged_and_fire_for_bash() -> None:
    assert SEED.is_file(), f"the seed rules are missing: expected {SEED}"
    text = SEED.read_text()
    eng = engine(load(text))
    alerts = eng.process(exec_(proc(300, comm="bash", cmdline=("bash",))), 1)
    assert [a.rule for a in alerts] == [
        "detect shell inside a container",
        "detect any shell inside a container",
    ]
    assert alerts[0].priority is Priority.WARNING
    assert alerts[0].output == "bash shell opened (user=root 3f2a9c3f2a9c)"
    assert alerts[1].output == "shell opened (user=root shell=bash 3f2a9c3f2a9c)"


RULE = "  output: o\n  priority: error\n"

ERRORS = [
    ("- rule: r\n  condition: proc.nme = a\n" + RULE,
     "rules file r.yaml, line 1, rule 'r': unknown field 'proc.nme' at column 1 of the condition"),
    ("- rule: r\n  condition: proc.name = a and (x\n" + RULE,
     "rule 'r': syntax error: expected ')' but found end of condition at column 21"),
    ("- macro: m\n  condition: nosuch\n- rule: r\n  condition: m\n" + RULE,
     "line 1, macro 'm': unknown macro 'nosuch' at column 1"),
    ("- macro: a\n  condition: b\n- macro: b\n  condition: a\n",
     "macro 'a': macros a → b → a loop"),
    ("- list: a\n  items: [b]\n- list: b\n  items: [a]\n", "include each other"),
    ("- rule: r\n  condition: proc.name = a\n  output: o %fd.nme\n  priority: error\n",
     "rule 'r': unknown field '%fd.nme' in output"),
    ("- rule: r\n  condition: proc.name = a\n  output: o\n  priority: urgent\n",
     "rule 'r': unknown priority 'urgent' (one of Emergency, Alert, Critical"),
    ("- rule: r\n  condition: proc.name = a\n  priority: error\n", "rule 'r': missing 'output'"),
    ("- rule: r\n  condition: proc.name = a\n  outptu: o\n" + RULE, "unknown key 'outptu'"),
    ("- rule: r\n  condition: proc.name = a\n  tags: web\n" + RULE, "'tags' must be a list"),
    ("- rule: r\n  condition: proc.name = a\n  enabled: yes please\n" + RULE,
     "'enabled' must be true or false"),
    ("- rule: r\n  condition: ''\n" + RULE, "'condition' must be a non-empty string"),
    ("- rule: r\n  append: true\n  condition: and x\n", "append/override of a rule not defined"),
    ("- rule: r\n  enabled: false\n", "only 'enabled' given for a rule not defined earlier"),
    ("- foo: bar\n", "line 1: an item needs exactly one of rule, macro, list"),
    ("- rule: r\n  condition: a\n- [1]\n", "line 3: expected a mapping"),
    ("rule: r\n", "line 1: expected a list of rule, macro and list items"),
    ("- rule: r\n  condition: [a\n", "line 3: not valid YAML"),
    ("- list: l\n  items: [[a]]\n", "list items must be plain values"),
    ("- rule: r\n  condition: proc.name = a\n  aggregate: {by: pod}\n" + RULE,
     "aggregate 'by' must be session or process"),
    ("- rule: r\n  condition: proc.name = a\n  aggregate: {by: session, idle: soon}\n" + RULE,
     "aggregate 'idle' must be a duration"),
    ("- rule: r\n  condition: proc.name = a\n  aggregate: {by: session, collect: fd.nme}\n"
     + RULE, "aggregate 'collect' names unknown field 'fd.nme'"),
    ("- rule: r\n  condition: proc.name = a\n  exceptions:\n  - name: e\n    fields: [proc.nme]"
     "\n    values: [[x]]\n" + RULE, "exception 'e': unknown field 'proc.nme'"),
    ("- rule: r\n  condition: proc.name = a\n  exceptions:\n  - name: e\n    fields: [proc.name,"
     " fd.name]\n    values: [[x]]\n" + RULE, "needs one entry per field"),
    ("- macro: m\n  condition: a\n  override: {condition: prepend}\n",
     "cannot prepend 'condition'"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), ERRORS, ids=[e[1][:40] for e in ERRORS])
def test_errors_are_one_sentence_naming_file_item_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(text)
    assert message in str(err.value)
    assert "r.yaml" in str(err.value)
    assert "\n" not in str(err.value)


def test_line_numbers_point_at_the_item() -> None:
    text = "- list: a\n  items: [x]\n\n- rule: bad\n  condition: a.b = 1\n" + RULE
    with pytest.raises(ConfigError, match=r"line 4, rule 'bad'"):
        load(text)


def test_every_rule_is_checked_even_disabled_ones() -> None:
    with pytest.raises(ConfigError, match="unknown field"):
        load("- rule: r\n  condition: x.y = 1\n  enabled: false\n" + RULE)


def test_priorities_case_insensitive_and_written_as_falco() -> None:
    for spelling, expected in [("ERROR", "Error"), ("warning", "Warning"), ("Notice", "Notice"),
                               ("INFO", "Informational"), ("critical", "Critical")]:  # fmt: skip
        rules = load(f"- rule: r\n  condition: proc.name = a\n  output: o\n  priority: {spelling}")
        assert rules.rules[0].priority.value == expected


APPEND_BASE = """\
- list: shells
  items: [bash]
- macro: interesting
  condition: proc.name in (shells)
- rule: r
  desc: d
  condition: interesting
  output: o %proc.name
  priority: notice
  tags: [maturity_stable]
"""


@pytest.mark.parametrize(
    ("extra", "fires_for"),
    [
        ("", {"bash"}),
        ("- list: shells\n  items: [zsh]\n  append: true\n", {"bash", "zsh"}),
        ("- list: shells\n  items: [zsh]\n  override: {items: append}\n", {"bash", "zsh"}),
        ("- list: shells\n  items: [zsh]\n  override: {items: replace}\n", {"zsh"}),
        ("- list: shells\n  items: [zsh]\n", {"zsh"}),  # redefinition replaces
        ("- macro: interesting\n  condition: or proc.name = ksh\n  append: true\n",
         {"bash", "ksh"}),
        ("- rule: r\n  condition: and not proc.name = bash\n  append: true\n", set()),
        ("- rule: r\n  condition: proc.name = ksh\n  override: {condition: replace}\n", {"ksh"}),
        ("- rule: r\n  enabled: false\n", set()),
        ("- rule: r\n  exceptions:\n  - name: e\n    fields: proc.name\n    values: [bash]\n"
         "  override: {exceptions: append}\n", set()),
        ("- list: more\n  items: [csh]\n- list: shells\n  items: [more]\n  append: true\n",
         {"bash", "csh"}),
    ],
)  # fmt: skip
def test_appends_and_overrides(extra: str, fires_for: set[str]) -> None:
    eng = engine(load_rules([("base.yaml", APPEND_BASE), ("local.yaml", extra)]))
    fired = set()
    for name in ("bash", "zsh", "ksh", "csh", "dash"):
        if eng.process(exec_(proc(300, comm=name)), 1):
            fired.add(name)
    assert fired == fires_for


def test_exceptions_multi_field() -> None:
    rules = load(
        """\
        - rule: r
          condition: evt.type = open
          output: o
          priority: notice
          exceptions:
          - name: known
            fields: [proc.name, fd.directory]
            comps: [=, in]
            values:
            - [nginx, [/var/cache/nginx, /tmp]]
        """
    )
    eng = engine(rules)
    nginx, other = proc(1, comm="nginx"), proc(2, comm="cp")
    assert eng.process(write(nginx, "/var/cache/nginx/a"), 1) == []
    assert eng.process(write(nginx, "/tmp/a"), 1) == []
    assert len(eng.process(write(nginx, "/etc/a"), 1)) == 1
    assert len(eng.process(write(other, "/tmp/a"), 1)) == 1


def test_tolerated_items_and_skips() -> None:
    rules = load(
        """\
        - required_engine_version: 0.26.0
        - required_plugin_versions: [{name: k8saudit, version: 0.1.0}]
        - rule: audit
          condition: ka.verb = create
          output: o
          priority: notice
          source: k8s_audit
        - rule: future
          condition: fd.sip = 1.2.3.4
          output: o
          priority: notice
          skip-if-unknown-filter: true
        - rule: kept
          condition: proc.name = x
          output: o
          priority: notice
          warn_evttypes: false
        """
    )
    assert [r.name for r in rules.rules] == ["kept"]
    assert len(rules.warnings) == 2


def test_empty_file_and_empty_list() -> None:
    assert load("").rules == ()
    rules = load("- list: l\n  items: []\n- rule: r\n  condition: proc.name in (l)\n" + RULE)
    assert engine(rules).rules_for("execve") == ()  # an empty list matches nothing


def test_output_template_fields_and_literal_percent_args() -> None:
    rules = load(
        "- rule: r\n  condition: proc.name = x\n"
        "  output: 'a %proc.name. b %k8s.pod.label[app] %proc.pid'\n  priority: notice\n"
    )
    rule = rules.rules[0]
    assert rule.output.fields == (("proc.name", None), ("k8s.pod.label", "app"), ("proc.pid", None))
    keys = [k for k, _n, _a in rule.output_refs]
    assert "k8s.pod.label[app]" in keys and "podlock.drops" in keys and keys == sorted(keys)


def test_rule_matching_first_stops_at_first_rule() -> None:
    text = SEED_TEXT
    eng = engine(load(text), rule_matching="first")
    alerts = eng.process(exec_(proc(300, comm="bash")), 1)
    assert [a.rule for a in alerts] == ["detect shell inside a container"]


def test_min_priority_drops_less_severe_rules() -> None:
    eng = engine(min_priority=Priority.ERROR)
    assert {r.priority for r in eng.rules} <= {Priority.ERROR, Priority.CRITICAL}
    assert eng.process(exec_(proc(300, comm="sh", session=Session.EXEC, session_id=300)), 1) == []
