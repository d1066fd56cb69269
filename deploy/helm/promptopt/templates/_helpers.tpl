{{/* The chart's name, or nameOverride. */}}
{{- define "promptopt.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name, prefixed with the chart name unless it contains it. */}}
{{- define "promptopt.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "promptopt.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "promptopt.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "promptopt.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "promptopt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "promptopt.operatorLabels" -}}
{{ include "promptopt.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The Deployment's selector (a subset of the operator Pod's labels). */}}
{{- define "promptopt.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "promptopt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The labels the operator puts on every worker Pod (promptopt_operator.pods.COMPONENT_LABELS): NetworkPolicies
select worker Pods by them.
*/}}
{{- define "promptopt.workerPodLabels" -}}
app.kubernetes.io/name: promptopt-worker
app.kubernetes.io/component: worker
app.kubernetes.io/managed-by: promptopt-operator
{{- end }}

{{- define "promptopt.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "promptopt.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest; the tag defaults to the chart's appVersion. */}}
{{- define "promptopt.image" -}}
{{- $image := index . 0 -}}
{{- $appVersion := index . 1 -}}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $appVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* The namespaces where jobs run, as a JSON list (see jobNamespaces in values.yaml). */}}
{{- define "promptopt.jobNamespaces" -}}
{{- $namespaces := .Values.jobNamespaces | default .Values.watchNamespaces | default (list .Release.Namespace) -}}
{{- $namespaces | uniq | toJson }}
{{- end }}

{{/* A NetworkPolicy egress rule to TCP ports of CIDRs: {cidrs: [...], ports: [...]}. */}}
{{- define "promptopt.egressTo" -}}
- to:
    {{- range .cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    {{- range .ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- end }}

{{/* The demo's simulated LLM Pod, as its Service and the workers' NetworkPolicy select it. */}}
{{- define "promptopt.simulatedLLMSelectorLabels" -}}
app.kubernetes.io/name: {{ include "promptopt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: simulated-llm
{{- end }}
