{{/* Names, labels and the store address, shared by every template. */}}

{{- define "tessera.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tessera.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "tessera.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "tessera.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Labels of every object; "component" names the part (operator, etcd, monitoring). */}}
{{- define "tessera.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tessera.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tessera.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tessera.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tessera.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tessera.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tessera.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{- define "tessera.agentImage" -}}
{{- default (include "tessera.operatorImage" .) .Values.operator.agentImage }}
{{- end }}

{{- define "tessera.etcdName" -}}
{{- printf "%s-etcd" (include "tessera.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The --store endpoint: etcd://host:port[,host:port...]. */}}
{{- define "tessera.storeEndpoint" -}}
{{- $external := .Values.store.etcd.endpoints }}
{{- if and $external .Values.store.bundled.enabled }}
{{- fail "store: give either store.etcd.endpoints or store.bundled.enabled=true, not both" }}
{{- else if $external }}
{{- printf "etcd://%s" (join "," $external) }}
{{- else if .Values.store.bundled.enabled }}
{{- $name := include "tessera.etcdName" . }}
{{- $members := list }}
{{- range $i := until (int .Values.store.bundled.replicas) }}
{{- $members = append $members (printf "%s-%d.%s.%s.svc:2379" $name $i $name $.Release.Namespace) }}
{{- end }}
{{- printf "etcd://%s" (join "," $members) }}
{{- else }}
{{- fail "store: set store.etcd.endpoints (an existing etcd) or store.bundled.enabled=true" }}
{{- end }}
{{- end }}
