{{/* Names and labels shared by the templates. */}}

{{- define "pms.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name: the release name, or release-chart when it lacks the chart's name. */}}
{{- define "pms.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The headless Service that gives each pod its DNS name. */}}
{{- define "pms.headless" -}}
{{- printf "%s-headless" (include "pms.fullname" .) }}
{{- end }}

{{- define "pms.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pms.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pms.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pms.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pms.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "pms.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: pms
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "pms.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Nodes that form the cluster at its first start. */}}
{{- define "pms.initialMembers" -}}
{{- $members := int .Values.cluster.initialMembers }}
{{- if eq $members 0 }}{{ $members = int .Values.replicas }}{{ end }}
{{- if gt $members (int .Values.replicas) }}
{{- fail (printf "cluster.initialMembers (%d) is more than replicas (%d): the initial members are pods of the StatefulSet" $members (int .Values.replicas)) }}
{{- end }}
{{- $members }}
{{- end }}

{{/*
--peers of the initial members: node n is pod n-1, reached at its headless-Service DNS name.
$(POD_NAMESPACE) is expanded by the kubelet (an earlier env var of the container).
*/}}
{{- define "pms.peers" -}}
{{- $fullname := include "pms.fullname" . }}
{{- $headless := include "pms.headless" . }}
{{- $peers := list }}
{{- range $ordinal := until (int (include "pms.initialMembers" .)) }}
{{- $peers = append $peers (printf "%d=%s-%d.%s.$(POD_NAMESPACE).svc.%s:%d" (add1 $ordinal) $fullname $ordinal $headless $.Values.cluster.clusterDomain (int $.Values.ports.grpc)) }}
{{- end }}
{{- join "," $peers }}
{{- end }}
