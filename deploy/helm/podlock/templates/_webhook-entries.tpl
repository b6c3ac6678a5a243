{{/*
One webhook entry. The API server cannot tell podlock a namespace's labels, so each entry
selects its namespaces by the label podlock.io/mode and names the mode in the URL path:
  enforce: label absent, "enforce", or any unknown value (NotIn fails closed on typos)
  warn:    label "warn"   (changes nothing, answers with warnings)
  audit:   label "audit"  (changes nothing, answers with audit annotations)
Every entry skips the exempt namespaces, so podlock never stands between the cluster and its
own control plane, and no entry has an objectSelector: a pod cannot exempt itself.
Arguments: root (the chart context), name, path, mode, rules, failurePolicy, timeout,
reinvoke (mutating entries only), matchConditions (optional).
*/}}
{{- define "podlock.webhookEntry" -}}
{{- $root := .root -}}
- name: {{ .name }}
  admissionReviewVersions: ["v1"]
  clientConfig:
    service:
      name: podlock
      namespace: {{ $root.Release.Namespace }}
      path: {{ .path }}
      port: 443
    {{- $g := $root.Values.certificates.generated }}
    {{- if and (eq $root.Values.certificates.source "generated") (not $g.external) }}
    caBundle: {{ $g.caCert | b64enc }}
    {{- end }}
  rules:
    {{- toYaml .rules | nindent 4 }}
  namespaceSelector:
    matchExpressions:
      - key: kubernetes.io/metadata.name
        operator: NotIn
        values: {{ include "podlock.exempt" $root }}
      - key: podlock.io/mode
        {{- if eq .mode "enforce" }}
        operator: NotIn
        values: [warn, audit]
        {{- else }}
        operator: In
        values: [{{ .mode }}]
        {{- end }}
  {{- with .matchConditions }}
  matchConditions:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  matchPolicy: Equivalent
  sideEffects: None
  failurePolicy: {{ .failurePolicy }}
  {{- if .reinvoke }}
  reinvocationPolicy: IfNeeded
  {{- end }}
  timeoutSeconds: {{ .timeout }}
{{- end }}

{{/* Pods, and the ephemeral containers `kubectl debug` adds to them. */}}
{{- define "podlock.podRules" -}}
- apiGroups: [""]
  apiVersions: ["v1"]
  operations: ["CREATE"]
  resources: ["pods"]
  scope: Namespaced
- apiGroups: [""]
  apiVersions: ["v1"]
  operations: ["UPDATE"]
  resources: ["pods/ephemeralcontainers"]
  scope: Namespaced
{{- end }}

{{/* Plain pod UPDATEs (labels, annotations, finalizers), validated only: the one thing podlock
refuses there is the podlock.io/exempt opt-out added after admission (rule late-exemption). */}}
{{- define "podlock.podUpdateRules" -}}
- apiGroups: [""]
  apiVersions: ["v1"]
  operations: ["UPDATE"]
  resources: ["pods"]
  scope: Namespaced
{{- end }}

{{/*
Which requests of the validating entries reach podlock: all but the plain pod UPDATEs that do
not add the opt-out (label or annotation podlock.io/exempt: "true" in the new pod, not in the
old). podlock judges those it is sent (review.py); this only keeps the rest, a controller's
label or finalizer change, from waiting for podlock or failing while podlock is down.
*/}}
{{- define "podlock.validateConditions" -}}
- name: plain-pod-update-adds-the-opt-out
  expression: >-
    request.resource.resource == 'pods' && request.operation == 'UPDATE' &&
    (!has(request.subResource) || request.subResource == '') ?
    [object, oldObject].map(o, ['labels', 'annotations'].exists(f, f in o.metadata &&
    o.metadata[f].exists(k, k == 'podlock.io/exempt' && o.metadata[f][k] == 'true'))) == [true, false] :
    true
{{- end }}

{{/* Pods and every built-in kind with a pod template: refused at the workload, not pod by pod. */}}
{{- define "podlock.workloadRules" -}}
{{ include "podlock.podRules" . }}
{{ include "podlock.podUpdateRules" . }}
- apiGroups: [""]
  apiVersions: ["v1"]
  operations: ["CREATE", "UPDATE"]
  resources: ["replicationcontrollers"]
  scope: Namespaced
- apiGroups: ["apps"]
  apiVersions: ["v1"]
  operations: ["CREATE", "UPDATE"]
  resources: ["deployments", "statefulsets", "daemonsets", "replicasets"]
  scope: Namespaced
- apiGroups: ["batch"]
  apiVersions: ["v1"]
  operations: ["CREATE", "UPDATE"]
  resources: ["jobs", "cronjobs"]
  scope: Namespaced
{{- end }}
