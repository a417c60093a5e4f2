{{- define "ugo.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "ugo.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ugo.labels" -}}
{{ include "ugo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: upload-grant-operator
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ugo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "ugo.fullname" .) .Values.serviceAccount.name }}
{{- else -}}{{ required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{- /* How the replicas share the work: "sharding" with more than one replica
and sharding.enabled (active-active, a Lease per shard), else
"leader-election" with leaderElection.enabled (one leads, the others stand
by), else empty (no Lease). A release upgraded with --reuse-values from a
chart without sharding.* has none: it keeps leader election. */ -}}
{{- define "ugo.replicaMode" -}}
{{- if and (gt (int .Values.replicaCount) 1) (.Values.sharding | default dict).enabled -}}sharding
{{- else if .Values.leaderElection.enabled -}}leader-election
{{- end -}}
{{- end -}}

{{- /* operator.watchNamespaces plus the one-element shorthand
operator.watchNamespace, sorted, each once, comma-separated; empty: all. */ -}}
{{- define "ugo.watchNamespaces" -}}
{{- $ns := concat (.Values.operator.watchNamespaces | default list) (compact (list .Values.operator.watchNamespace)) -}}
{{- $ns | uniq | sortAlpha | join "," -}}
{{- end -}}

{{- /* The operator's namespaced powers: in its ClusterRole without a watch
list, in a Role in each watched namespace with one. */ -}}
{{- define "ugo.namespacedRules" -}}
# Watch grants; patch them to add and remove the finalizer that revokes
# the Secret on deletion.
- apiGroups: [grants.io]
  resources: [uploadgrants]
  verbs: [get, list, watch, patch]
# Report Ready, expiresAt, refreshAt and the URL fingerprint.
- apiGroups: [grants.io]
  resources: [uploadgrants/status]
  verbs: [get, patch]
# Write, renew and revoke the Secrets that carry URLs. The watch is
# metadata-only and label-selected; a GET confirms a name is free before
# creating; deletes carry the Secret's uid as a precondition.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch, delete]
# Issued, Renewed, Revoked, Denied and Failed events on grants.
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- if .Values.rolloutRestarts.enabled }}
# Rollout restarts: read a workload's pod template and patch two
# annotations into it, as `kubectl rollout restart` does.
- apiGroups: [apps]
  resources: [deployments, statefulsets, daemonsets]
  verbs: [get, patch]
{{- end }}
{{- end -}}

{{- /* repository@digest when image.digest is set (the tag is then ignored),
else repository:tag, the tag defaulting to the chart's appVersion. */ -}}
{{- define "ugo.image" -}}
{{- if .Values.image.digest -}}{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}{{- end -}}
{{- end -}}

{{- /* The label matchers the alerts read the operator's metrics with:
metrics.prometheusRule.selector, else this release's metrics Service as a
ServiceMonitor scrapes it (job is the Service's name). */ -}}
{{- define "ugo.metricsSelector" -}}
{{- .Values.metrics.prometheusRule.selector | default (printf "job=%q,namespace=%q" (printf "%s-metrics" (include "ugo.fullname" .)) .Release.Namespace) -}}
{{- end -}}
