{{/* Names are truncated to 63 characters: they become DNS labels. */}}
{{- define "fedtwin-platform.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fedtwin-platform.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's resource name: <fullname>-<component>, 63 characters at most. Call with (list . "minio"). */}}
{{- define "fedtwin-platform.componentName" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s-%s" (include "fedtwin-platform.fullname" $ctx | trunc (int (sub 62 (len (index . 1))))) (index . 1) | trimSuffix "-" -}}
{{- end -}}

{{- define "fedtwin-platform.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fedtwin-platform.labels" -}}
helm.sh/chart: {{ include "fedtwin-platform.chart" . }}
{{ include "fedtwin-platform.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fedtwin
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "fedtwin-platform.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fedtwin-platform.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of one component. Call with (list . "minio"). */}}
{{- define "fedtwin-platform.componentLabels" -}}
{{ include "fedtwin-platform.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "fedtwin-platform.componentSelectorLabels" -}}
{{ include "fedtwin-platform.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* An image reference repository:tag, with @digest when one is given. Call with .Values.<component>.image. */}}
{{- define "fedtwin-platform.image" -}}
{{- printf "%s:%s" .repository .tag -}}{{- with .digest -}}@{{ . }}{{- end -}}
{{- end -}}

{{/* Fail early on value combinations the schema cannot express. */}}
{{- define "fedtwin-platform.validate" -}}
{{- if and (not .Values.minio.enabled) (not .Values.s3.external.endpoint) -}}
{{- fail "s3.external.endpoint is required when minio.enabled is false: set it to the URL of your S3 service (e.g. --set s3.external.endpoint=https://s3.example.internal)" -}}
{{- end -}}
{{- if and .Values.minio.enabled .Values.s3.external.endpoint -}}
{{- fail (printf "s3.external.endpoint (%s) is set while minio.enabled is true: set minio.enabled=false to use the external endpoint, or clear s3.external.endpoint" .Values.s3.external.endpoint) -}}
{{- end -}}
{{- if and (include "fedtwin-platform.provisionIdentities" .) (not .Values.minio.enabled) (not .Values.s3.external.adminSecret) -}}
{{- fail "s3.external.adminSecret is required when s3.identities.create and s3.external.minioAdminApi are true: the bucket Job needs admin credentials to create the scoped users" -}}
{{- end -}}
{{- if not (include "fedtwin-platform.provisionIdentities" .) -}}
{{- range $id := include "fedtwin-platform.identities" . | fromJsonArray -}}
{{- if not (index $.Values.s3.identities $id).existingSecret -}}
{{- fail (printf "s3.identities.%s.existingSecret is required: this S3 endpoint cannot get users created by the chart (minio.enabled=false and s3.external.minioAdminApi=false, or s3.identities.create=false), so give a Secret with keys accessKey and secretKey" $id) -}}
{{- end -}}
{{- end -}}
{{- if $.Values.s3.identities.twinIds -}}
{{- fail "s3.identities.twinIds needs the chart to create users: set s3.identities.create=true on MinIO (or an external endpoint with s3.external.minioAdminApi=true)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The scoped S3 identities this release has, as a JSON list: twin, aggregator, logs (when enabled), mlflow (with MLflow). */}}
{{- define "fedtwin-platform.identities" -}}
{{- $ids := list "twin" "aggregator" -}}
{{- if .Values.s3.identities.logs.enabled -}}{{- $ids = append $ids "logs" -}}{{- end -}}
{{- if .Values.mlflow.enabled -}}{{- $ids = append $ids "mlflow" -}}{{- end -}}
{{- toJson $ids -}}
{{- end -}}

{{/* "true" when the bucket Job creates the scoped users and policies with the MinIO admin API. */}}
{{- define "fedtwin-platform.provisionIdentities" -}}
{{- if and .Values.s3.identities.create (or .Values.minio.enabled .Values.s3.external.minioAdminApi) -}}true{{- end -}}
{{- end -}}

{{/* S3 endpoint URL as pods in the cluster see it. */}}
{{- define "fedtwin-platform.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "http://%s.%s.svc:%d" (include "fedtwin-platform.componentName" (list . "minio")) .Release.Namespace (int .Values.minio.service.apiPort) -}}
{{- else -}}
{{- .Values.s3.external.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "fedtwin-platform.mlflowUri" -}}
{{- printf "http://%s.%s.svc:%d" (include "fedtwin-platform.componentName" (list . "mlflow")) .Release.Namespace (int .Values.mlflow.service.port) -}}
{{- end -}}

{{- define "fedtwin-platform.minioSecretName" -}}
{{- default (include "fedtwin-platform.componentName" (list . "minio-root")) .Values.minio.existingSecret -}}
{{- end -}}

{{/* Secret of one S3 identity. Call with (list . "twin"). */}}
{{- define "fedtwin-platform.identitySecretName" -}}
{{- $ctx := index . 0 -}}
{{- $id := index . 1 -}}
{{- default (include "fedtwin-platform.componentName" (list $ctx (printf "s3-%s" $id))) (index $ctx.Values.s3.identities $id).existingSecret -}}
{{- end -}}

{{/*
A secret value that stays the same across upgrades: the value already stored in the cluster when
there is one (lookup; empty under `helm template`), else a new random one. Returns it base64-encoded.
Call with (dict "ctx" . "name" SECRET "key" KEY "length" N).
*/}}
{{- define "fedtwin-platform.stableSecret" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .name -}}
{{- if and $existing $existing.data (hasKey $existing.data .key) -}}
{{- index $existing.data .key -}}
{{- else -}}
{{- randAlphaNum (int .length) | b64enc -}}
{{- end -}}
{{- end -}}

{{- define "fedtwin-platform.kubeovnStorageSubnet" -}}
{{- if and .Values.minio.enabled .Values.kubeovn.storageSubnet.create (.Capabilities.APIVersions.Has "kubeovn.io/v1") -}}true{{- end -}}
{{- end -}}
