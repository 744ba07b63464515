{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "shadowproxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of the namespaced objects of this release: at most 52 characters, so that the
     longest suffix (-replicas) still fits 63, and a StatefulSet of this name can create
     pods (its controller-revision-hash label adds 11). */}}
{{- define "shadowproxy.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The traffic Service may take over the name clients already call. */}}
{{- define "shadowproxy.serviceName" -}}
{{- default (include "shadowproxy.fullname" .) .Values.service.name -}}
{{- end -}}

{{- define "shadowproxy.adminServiceName" -}}
{{- printf "%s-admin" (include "shadowproxy.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shadowproxy.headlessServiceName" -}}
{{- printf "%s-replicas" (include "shadowproxy.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shadowproxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "shadowproxy.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "shadowproxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shadowproxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "shadowproxy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "shadowproxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: proxy
{{- end -}}

{{- define "shadowproxy.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* Ports come from the rendered config so the container, the probes and the Services
     can never disagree with what `serve` binds. */}}
{{- define "shadowproxy.trafficPort" -}}
{{- $l := .Values.config.listen | default dict -}}
{{- $l.port | default 8080 | int -}}
{{- end -}}

{{- define "shadowproxy.adminPort" -}}
{{- $a := .Values.config.admin | default dict -}}
{{- $a.port | default 9090 | int -}}
{{- end -}}

{{/* Seconds the pod may take to stop: preStop sleep, then the proxy's own drain
     (drain_delay_s, then up to grace_s for requests in flight), then the flush of the
     comparator's last snapshot and of the pair log (each bounded by max(grace_s, 1)), plus
     a margin. Shadow work is cancelled, not awaited. Kubernetes kills the pod at the end of
     it, so it must cover every phase. */}}
{{- define "shadowproxy.terminationGrace" -}}
{{- $s := .Values.config.shutdown | default dict -}}
{{- $drain := 5.0 -}}
{{- if hasKey $s "drain_delay_s" }}{{ $drain = $s.drain_delay_s | float64 }}{{ end -}}
{{- $grace := 25.0 -}}
{{- if hasKey $s "grace_s" }}{{ $grace = $s.grace_s | float64 }}{{ end -}}
{{- $flush := mulf 2.0 (maxf $grace 1.0) -}}
{{- $total := addf (.Values.lifecycle.preStopSleepSeconds | float64) $drain $grace $flush (.Values.lifecycle.extraGraceSeconds | float64) -}}
{{- ceil $total | int -}}
{{- end -}}

{{- define "shadowproxy.modelsVolumeName" -}}models{{- end -}}

{{/* The Secret holding the sampling key: the operator's, or the chart's; empty for none. */}}
{{- define "shadowproxy.samplingSecret" -}}
{{- if .Values.samplingKey.existingSecret -}}
{{- .Values.samplingKey.existingSecret -}}
{{- else if .Values.samplingKey.create -}}
{{- printf "%s-sampling" (include "shadowproxy.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The proxy's workload: a StatefulSet when each replica keeps its snapshot on a claim. */}}
{{- define "shadowproxy.workloadKind" -}}
{{- ternary "StatefulSet" "Deployment" (.Values.persistence.enabled | default false) -}}
{{- end -}}
