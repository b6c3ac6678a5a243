"""AdmissionReview in, AdmissionReview out: the whole admission decision, without HTTP.

The Flask app and `podlock review` both call `review()` and send its bytes unchanged, so the
two can never disagree. Error contract (what the HTTP layer turns into status codes):

    object allowed            -> Outcome, allowed: true (HTTP 200)
    object denied             -> Outcome, allowed: false, status.code 403 (HTTP 200)
    request unusable          -> RequestError(400): not JSON, not AdmissionReview v1, no uid
    request too large         -> RequestError(413)
    anything else             -> our bug: the HTTP layer's 500
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import orjson
import pybase64

from webhook import policy
from webhook.config import IMAGE_RULE, Mode, Settings
from webhook.hardening import plan_hardening, to_json_patch
from webhook.podspecs import WORKLOAD_KINDS, PodSpecRef, containers, mapping, pod_spec
from webhook.projection import decode_review

Endpoint = Literal["mutate", "validate"]
MAX_BODY_BYTES = 6 * 1024 * 1024
TOO_LARGE = f"request body is larger than {MAX_BODY_BYTES} bytes"
MAX_WARNING = 119  # the API server shows warnings under 120 characters
API_VERSION = "admission.k8s.io/v1"


class RequestError(Exception):
    """The request itself is unusable (not the object in it)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Outcome:
    # Plain classes, not NamedTuples or dataclasses: compiled by mypyc they are native objects,
    # while those are built by Python-level constructors on every admission.
    def __init__(
        self,
        body: bytes,  # the serialized AdmissionReview response
        allowed: bool,
        operation: str,
        rules: tuple[str, ...],  # rules that fired, as violations or would-be violations
        patched: bool,
    ) -> None:
        self.body = body
        self.allowed = allowed
        self.operation = operation
        self.rules = rules
        self.patched = patched

    def _fields(self) -> tuple[bytes, bool, str, tuple[str, ...], bool]:
        return (self.body, self.allowed, self.operation, self.rules, self.patched)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Outcome) and self._fields() == other._fields()

    def __repr__(self) -> str:
        return f"Outcome{self._fields()!r}"


class _Request:
    def __init__(
        self,
        uid: str,
        operation: str,
        kind: str,
        resource: str,
        sub_resource: str,
        namespace: str,
        name: str,
        obj: Mapping[str, Any],
        old: Mapping[str, Any],
    ) -> None:
        self.uid = uid
        self.operation = operation
        self.kind = kind
        self.resource = resource
        self.sub_resource = sub_resource
        self.namespace = namespace
        self.name = name
        self.obj = obj
        self.old = old


class _Answer:
    def __init__(
        self,
        allowed: bool = True,
        message: str = "",
        patch: list[dict[str, Any]] | None = None,
        warnings: tuple[str, ...] = (),
        audit: Mapping[str, str] | None = None,
        rules: tuple[str, ...] = (),
    ) -> None:
        self.allowed = allowed
        self.message = message
        self.patch = patch
        self.warnings = warnings
        self.audit = audit
        self.rules = rules


def review(raw: bytes, endpoint: Endpoint, mode: Mode, settings: Settings) -> Outcome:
    if len(raw) > MAX_BODY_BYTES:
        raise RequestError(413, TOO_LARGE)
    request = parse_request(raw)
    if request.namespace in settings.exempt_namespaces:
        answer = _Answer()
    elif endpoint == "mutate":
        answer = _mutate(request, mode, settings)
    else:
        answer = _validate(request, mode, settings)
    return Outcome(
        body=_serialize(request.uid, answer),
        allowed=answer.allowed,
        operation=request.operation,
        rules=answer.rules,
        patched=answer.patch is not None,
    )


def parse_request(raw: bytes) -> _Request:
    try:
        data = decode_review(raw)
    except orjson.JSONDecodeError as err:
        raise RequestError(400, f"request body is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise RequestError(400, "request body is not a JSON object")
    if data.get("kind") != "AdmissionReview" or data.get("apiVersion") != API_VERSION:
        raise RequestError(400, f"request body is not an AdmissionReview {API_VERSION}")
    request = data.get("request")
    if not isinstance(request, dict):
        raise RequestError(400, "AdmissionReview has no request object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise RequestError(400, "AdmissionReview request has no uid")
    return _Request(
        uid=uid,
        operation=_text(request.get("operation")),
        kind=_text(mapping(request.get("kind")).get("kind")),
        resource=_text(mapping(request.get("resource")).get("resource")),
        sub_resource=_text(request.get("subResource")),
        namespace=_text(request.get("namespace")),
        name=_text(request.get("name")),
        obj=mapping(request.get("object")),
        old=mapping(request.get("oldObject")),
    )


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _new_ephemeral(request: _Request) -> frozenset[str]:
    def names(obj: Mapping[str, Any]) -> set[str]:
        spec = mapping(obj.get("spec"))
        return {c.name for c in containers(spec) if c.group == "ephemeralContainers"}

    return frozenset(names(request.obj) - names(request.old))


def _is_pod(request: _Request, sub_resource: str) -> bool:
    return request.resource == "pods" and request.sub_resource == sub_resource


def _mutate(request: _Request, mode: Mode, settings: Settings) -> _Answer:
    if _is_pod(request, "") and request.operation == "CREATE":
        only = None
    elif _is_pod(request, "ephemeralcontainers") and request.operation == "UPDATE":
        only = _new_ephemeral(request)
        if not only:
            return _Answer()
    else:
        return _Answer()
    ref = pod_spec(request.obj, request.kind)  # the request's kind is authoritative
    if ref is None or _exempt(request, ref, settings):
        return _Answer()
    hardening = plan_hardening(ref, settings, only)
    notes = [f"podlock: {note}" for note in hardening.notes]
    if not hardening.ops:
        return _Answer(warnings=_warnings(notes))
    rules = _hardened_rules(hardening.keys)
    if mode == "enforce":
        patch = to_json_patch(hardening.ops, ("spec",))
        done = [f"podlock {change}" for change in hardening.changes]
        return _Answer(patch=patch, warnings=_warnings(done + notes), rules=rules)
    if mode == "warn":
        would = [f"podlock would {change}" for change in hardening.changes]
        return _Answer(warnings=_warnings(would + notes), rules=rules)
    return _Answer(audit={"mutations": "; ".join(hardening.changes)}, rules=rules)


_HARDENED_BY = (
    ("readOnlyRootFilesystem", policy.WRITABLE_ROOT),
    ("runAsNonRoot", policy.RUN_AS_NON_ROOT),
    ("allowPrivilegeEscalation", policy.PRIVILEGE_ESCALATION),
    ("capabilities", policy.CAPABILITIES),
    ("seccompProfile", policy.SECURITY_PROFILE),
)


def _hardened_rules(keys: frozenset[str]) -> tuple[str, ...]:
    """The rules whose fields the plan sets, for the metrics (in a fixed order)."""
    return tuple([rule for key, rule in _HARDENED_BY if key in keys]) or (policy.WRITABLE_ROOT,)


def _exempt(request: _Request, ref: PodSpecRef, settings: Settings) -> bool:
    """Exempt by namespace or opt-out; on UPDATE the opt-out must predate the change."""
    old = pod_spec(request.old, request.kind) if request.operation == "UPDATE" else None
    if request.operation == "UPDATE" and old is None:
        old = _NO_OLD
    return policy.exemption(ref, request.namespace, settings, old) is not None


_NO_OLD = PodSpecRef("", "", "", (), {}, {}, {})  # an UPDATE whose old object has no pod spec


def _validate(request: _Request, mode: Mode, settings: Settings) -> _Answer:
    if request.operation == "CONNECT":
        return _validate_exec(request, mode, settings)
    debug: _Answer | None = None
    if request.kind == "Pod":
        if _is_pod(request, "") and request.operation == "CREATE":
            violations = _judge(request, request.obj, settings, "pod", None)
        elif _is_pod(request, "ephemeralcontainers") and request.operation == "UPDATE":
            added = _new_ephemeral(request)
            violations = _judge(request, request.obj, settings, "pod", added)
            if added and policy.DEBUG_AS_EXEC in settings.enabled_rules:
                ref = pod_spec(request.obj, request.kind)
                if ref is not None and not _exempt(request, ref, settings):
                    debug = _validate_debug(request, added, mode, settings)
        elif _is_pod(request, "") and request.operation == "UPDATE":
            # Only an opt-out added after admission: a label change or finalizer removal on
            # any pod (one created before podlock, an exempt one) is never refused.
            violations = _late_opt_out(request, settings)
        else:
            return _Answer()
    elif request.kind in WORKLOAD_KINDS and request.operation in ("CREATE", "UPDATE"):
        violations = _judge(request, request.obj, settings, "template", None)
        if request.operation == "UPDATE" and violations:
            # Only what this change introduces: scaling or relabelling a legacy workload passes.
            before = {
                (v.rule, v.container)
                for v in _judge(request, request.old, settings, "template", None)
            }
            violations = [v for v in violations if (v.rule, v.container) not in before]
    else:
        return _Answer()
    if debug is not None and (not debug.allowed or not violations):
        return debug
    if not violations:
        return _Answer()
    answer = _answer(request, violations, mode, settings)
    if debug is not None and answer.allowed:  # both say something: keep both
        answer.warnings = debug.warnings + answer.warnings
        answer.audit = {**(debug.audit or {}), **(answer.audit or {})}
        answer.rules = (*debug.rules, *answer.rules)
    return answer


def _answer(
    request: _Request, violations: list[policy.Violation], mode: Mode, settings: Settings
) -> _Answer:
    rules = tuple(dict.fromkeys([v.rule for v in violations]))
    lines = [v.describe() for v in violations]
    if mode == "enforce":
        # A rule whose action is warn (mutable-image-reference) warns, even here.
        warn_only = settings.image_action == "warn"
        refused = [
            line
            for v, line in zip(violations, lines, strict=True)
            if not (warn_only and v.rule == IMAGE_RULE)
        ]
        if refused:
            subject = f"{request.kind} {request.namespace}/{_object_name(request)}"
            message = f"podlock denied {subject}: " + "; ".join(refused)
            return _Answer(allowed=False, message=message, rules=rules)
        return _Answer(warnings=_warnings(tuple(f"podlock: {line}" for line in lines)), rules=rules)
    if mode == "warn":
        return _Answer(warnings=_warnings(tuple(f"podlock: {line}" for line in lines)), rules=rules)
    return _Answer(audit={"violations": "; ".join(lines)}, rules=rules)


def _late_opt_out(request: _Request, settings: Settings) -> list[policy.Violation]:
    ref = pod_spec(request.obj, request.kind)
    if ref is None:
        return []
    old = pod_spec(request.old, request.kind) or _NO_OLD
    return policy.late_exemption(ref, old, request.namespace, settings)


def _validate_debug(
    request: _Request, added: frozenset[str], mode: Mode, settings: Settings
) -> _Answer | None:
    """`kubectl debug` adds an ephemeral container: exec by another door, so the exec
    rule's action applies to it too (capped by the namespace's mode, as for exec)."""
    action = _weakest(settings.exec_action, mode)
    if action == "off":
        return None
    what = (
        f"kubectl debug into pod {request.namespace}/{request.name or _object_name(request)}"
        f" (ephemeral container {', '.join(sorted(added))})"
    )
    return _exec_answer(action, what)


def _exec_answer(action: str, what: str) -> _Answer:
    """exec-into-hardened-pod's answer for `what` (an exec, attach or debug): deny, warn or
    audit (`off` is decided by the caller)."""
    rules = (policy.EXEC_INTO_POD,)
    if action == "deny":
        message = (
            f"podlock denied {what}: {policy.EXEC_INTO_POD}: containers here are immutable; "
            "ship a new image instead"
        )
        return _Answer(allowed=False, message=message, rules=rules)
    if action == "warn":
        warning = f"podlock: {policy.EXEC_INTO_POD}: {what}"
        return _Answer(warnings=_warnings((warning,)), rules=rules)
    return _Answer(audit={"exec": what}, rules=rules)


def _object_name(request: _Request) -> str:
    metadata = mapping(request.obj.get("metadata"))
    name = request.name or metadata.get("name") or metadata.get("generateName") or ""
    return name if isinstance(name, str) else ""


def _judge(
    request: _Request,
    obj: Mapping[str, Any],
    settings: Settings,
    context: policy.Context,
    only: frozenset[str] | None,
) -> list[policy.Violation]:
    ref = pod_spec(obj, request.kind)
    if ref is None or _exempt(request, ref, settings):
        return []
    return policy.evaluate(ref.spec, settings, context, only, ref.annotations)


def _validate_exec(request: _Request, mode: Mode, settings: Settings) -> _Answer:
    if request.resource != "pods" or request.sub_resource not in ("exec", "attach"):
        return _Answer()
    action = _weakest(settings.exec_action, mode)
    if action == "off":
        return _Answer()
    options = request.obj
    container = _text(options.get("container")) or "(default)"
    command = options.get("command")
    argv = " ".join(c for c in command if isinstance(c, str)) if isinstance(command, list) else ""
    what = f"kubectl {request.sub_resource} into pod {request.namespace}/{request.name}"
    detail = f"container {container}" + (f", command {argv}" if argv else "")
    return _exec_answer(action, f"{what} ({detail})")


_STRENGTH = {"off": 0, "audit": 1, "warn": 2, "deny": 3}
_MODE_CAP = {"enforce": "deny", "warn": "warn", "audit": "audit"}


def _weakest(action: str, mode: Mode) -> str:
    """A namespace's mode caps the exec rule's action: warn namespaces never deny."""
    cap = _MODE_CAP[mode]
    return action if _STRENGTH[action] <= _STRENGTH[cap] else cap


def _warnings(lines: Sequence[str]) -> tuple[str, ...]:
    return tuple(
        [line if len(line) <= MAX_WARNING else line[: MAX_WARNING - 1] + "…" for line in lines]
    )


def _serialize(uid: str, answer: _Answer) -> bytes:
    response: dict[str, Any] = {"uid": uid, "allowed": answer.allowed}
    if not answer.allowed:
        response["status"] = {"code": 403, "reason": "Forbidden", "message": answer.message}
    if answer.patch is not None:
        response["patchType"] = "JSONPatch"
        response["patch"] = pybase64.b64encode_as_string(orjson.dumps(answer.patch))
    if answer.warnings:
        response["warnings"] = list(answer.warnings)
    if answer.audit:
        response["auditAnnotations"] = dict(answer.audit)
    review = {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}
    return orjson.dumps(review, option=orjson.OPT_APPEND_NEWLINE)
