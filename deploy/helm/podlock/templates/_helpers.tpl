{{/* Labels every object carries. */}}
{{- define "podlock.labels" -}}
app.kubernetes.io/name: podlock
app.kubernetes.io/part-of: podlock
{{- end }}

{{- define "podlock.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The exempt namespaces, the release namespace always among them: the one list both the
webhook selectors and the policy file use. */}}
{{- define "podlock.exempt" -}}
{{ toJson (uniq (append .Values.exemptNamespaces .Release.Namespace)) }}
{{- end }}

{{- define "podlock.selfManaged" -}}
{{- if eq .Values.certificates.source "self-managed" }}true{{ end }}
{{- end }}

{{/* What values.schema.json cannot say. */}}
{{- define "podlock.checkValues" -}}
{{- $g := .Values.certificates.generated }}
{{- if and (eq .Values.certificates.source "generated") (not $g.external) (not (and $g.caCert $g.tlsCert $g.tlsKey)) }}
{{- fail "certificates.source=generated: give certificates.generated.caCert, tlsCert and tlsKey (--set-file with the files `podlock certs generate` writes), or set certificates.generated.external=true" }}
{{- end }}
{{- end }}

{{/* modeAdminGroups as CEL string literals: 'a', 'b' */}}
{{- define "podlock.quotedGroups" -}}
{{- $quoted := list }}
{{- range .Values.modeAdminGroups }}
{{- if or (contains "'" .) (contains "\\" .) }}{{ fail (printf "modeAdminGroups: %q: a group name with a quote or a backslash cannot go into the CEL list" .) }}{{ end }}
{{- $quoted = append $quoted (printf "'%s'" .) }}
{{- end }}
{{- join ", " $quoted }}
{{- end }}
