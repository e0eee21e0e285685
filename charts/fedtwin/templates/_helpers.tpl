{{/* Names are truncated to 63 characters: they become DNS labels. */}}
{{- define "fedtwin.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fedtwin.fullname" -}}
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

{{/* <fullname>-<component>, 63 characters at most. Call with (list . "twin"). */}}
{{- define "fedtwin.componentName" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s-%s" (include "fedtwin.fullname" $ctx | trunc (int (sub 62 (len (index . 1))))) (index . 1) | trimSuffix "-" -}}
{{- end -}}

{{- define "fedtwin.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fedtwin.labels" -}}
helm.sh/chart: {{ include "fedtwin.chart" . }}
{{ include "fedtwin.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fedtwin
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "fedtwin.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fedtwin.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fedtwin.componentLabels" -}}
{{ include "fedtwin.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The pods of one role, as the WorkflowTemplates label them (fedtwin.io/role: twin|aggregator). */}}
{{- define "fedtwin.rolePodLabels" -}}
fedtwin.io/role: {{ . }}
{{- end -}}

{{- define "fedtwin.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The platform chart's full name, computed the way that chart computes it. */}}
{{- define "fedtwin.platformFullname" -}}
{{- $release := .Values.platform.releaseName -}}
{{- if contains "fedtwin-platform" $release -}}
{{- $release | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-fedtwin-platform" $release | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* A platform component's name. Call with (list . "minio"). */}}
{{- define "fedtwin.platformComponent" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s-%s" (include "fedtwin.platformFullname" $ctx | trunc (int (sub 62 (len (index . 1))))) (index . 1) | trimSuffix "-" -}}
{{- end -}}

{{- define "fedtwin.platformNamespace" -}}
{{- default .Release.Namespace .Values.platform.namespace -}}
{{- end -}}

{{- define "fedtwin.s3Endpoint" -}}
{{- if .Values.s3.endpoint -}}
{{- .Values.s3.endpoint -}}
{{- else -}}
{{- printf "http://%s.%s.svc:9000" (include "fedtwin.platformComponent" (list . "minio")) (include "fedtwin.platformNamespace" .) -}}
{{- end -}}
{{- end -}}

{{- define "fedtwin.storeUrl" -}}
{{- printf "s3://%s" .Values.s3.bucket -}}
{{- end -}}

{{- define "fedtwin.trackingUri" -}}
{{- if .Values.tracking.enabled -}}
{{- default (printf "http://%s.%s.svc:5000" (include "fedtwin.platformComponent" (list . "mlflow")) (include "fedtwin.platformNamespace" .)) .Values.tracking.uri -}}
{{- end -}}
{{- end -}}

{{- define "fedtwin.twinSecret" -}}
{{- default (include "fedtwin.platformComponent" (list . "s3-twin")) .Values.s3.twinSecret -}}
{{- end -}}

{{- define "fedtwin.aggregatorSecret" -}}
{{- default (include "fedtwin.platformComponent" (list . "s3-aggregator")) .Values.s3.aggregatorSecret -}}
{{- end -}}

{{- define "fedtwin.twinServiceAccount" -}}
{{- default (include "fedtwin.componentName" (list . "twin")) .Values.serviceAccounts.twin.name -}}
{{- end -}}

{{- define "fedtwin.aggregatorServiceAccount" -}}
{{- default (include "fedtwin.componentName" (list . "aggregator")) .Values.serviceAccounts.aggregator.name -}}
{{- end -}}

{{/* "true" when the twin Subnet is rendered: asked for, and the cluster serves kubeovn.io/v1. */}}
{{- define "fedtwin.kubeovnSubnet" -}}
{{- if and .Values.kubeovn.subnet.create (.Capabilities.APIVersions.Has "kubeovn.io/v1") -}}true{{- end -}}
{{- end -}}

{{/* NetworkPolicy peers of a platform service. Call with (list . "s3"|"mlflow"). */}}
{{- define "fedtwin.servicePeers" -}}
{{- $ctx := index . 0 -}}
{{- $svc := index . 1 -}}
{{- $cfg := index $ctx.Values.networkPolicy $svc -}}
{{- $usePlatform := ternary $ctx.Values.s3.platformMinio (not $ctx.Values.tracking.uri) (eq $svc "s3") -}}
{{- $labels := $cfg.podLabels -}}
{{- if and (not $labels) $usePlatform -}}
{{- $labels = dict "app.kubernetes.io/instance" $ctx.Values.platform.releaseName "app.kubernetes.io/component" (ternary "minio" "mlflow" (eq $svc "s3")) -}}
{{- end -}}
{{- $peers := list -}}
{{- if $labels -}}
{{- $peers = append $peers (dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" (include "fedtwin.platformNamespace" $ctx))) "podSelector" (dict "matchLabels" $labels)) -}}
{{- end -}}
{{- range $cfg.cidrs -}}
{{- $peers = append $peers (dict "ipBlock" (dict "cidr" .)) -}}
{{- end -}}
{{- if not $peers -}}
{{- fail (printf "networkPolicy.%s.cidrs (or networkPolicy.%s.podLabels) is required: %s is not the platform chart's, so the NetworkPolicies need to know where it is" $svc $svc (ternary "s3.endpoint" "tracking.uri" (eq $svc "s3"))) -}}
{{- end -}}
{{- toYaml $peers -}}
{{- end -}}

{{/* Fail early on value combinations the schema cannot express. */}}
{{- define "fedtwin.validate" -}}
{{- if and (not .Values.s3.platformMinio) (not .Values.s3.endpoint) -}}
{{- fail "s3.endpoint is required when s3.platformMinio is false: set it to the URL of your S3 service (e.g. --set s3.endpoint=https://s3.example.internal)" -}}
{{- end -}}
{{- if and .Values.karmada.enabled (not .Values.karmada.clusters) -}}
{{- fail "karmada.clusters is required when karmada.enabled is true: list the member clusters (e.g. --set karmada.clusters={member1,member2})" -}}
{{- end -}}
{{- if and (not .Values.serviceAccounts.twin.create) (not .Values.serviceAccounts.twin.name) -}}
{{- fail "serviceAccounts.twin.name is required when serviceAccounts.twin.create is false" -}}
{{- end -}}
{{- if and (not .Values.serviceAccounts.aggregator.create) (not .Values.serviceAccounts.aggregator.name) -}}
{{- fail "serviceAccounts.aggregator.name is required when serviceAccounts.aggregator.create is false" -}}
{{- end -}}
{{- end -}}

{{/* Egress rule to the cluster DNS (UDP and TCP 53). */}}
{{- define "fedtwin.egressDns" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ .Values.networkPolicy.dns.namespace }}
      podSelector:
        matchLabels:
          {{- toYaml .Values.networkPolicy.dns.podLabels | nindent 10 }}
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end -}}

{{/* Egress rule to the Kubernetes API, for the Argo executor. */}}
{{- define "fedtwin.egressApi" -}}
- to:
    {{- range .Values.networkPolicy.kubernetesApi.cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    {{- range .Values.networkPolicy.kubernetesApi.ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- end -}}

{{/*
Default values of the WorkflowTemplates' parameters, by parameter name, as JSON. A parameter is
set only in the templates that declare it; `workflowTemplates.parameters` overrides any of them.
*/}}
{{- define "fedtwin.workflowParameters" -}}
{{- $twin := .Values.resources.twin -}}
{{- $agg := .Values.resources.aggregator -}}
{{- $p := dict
    "image" (include "fedtwin.image" .)
    "store" (include "fedtwin.storeUrl" .)
    "s3-endpoint" (include "fedtwin.s3Endpoint" .)
    "s3-region" .Values.s3.region
    "twin-s3-secret" (include "fedtwin.twinSecret" .)
    "aggregator-s3-secret" (include "fedtwin.aggregatorSecret" .)
    "mlflow-uri" (include "fedtwin.trackingUri" .)
    "mlflow-experiment" .Values.tracking.experiment
    "run-id" .Values.run.id
    "rounds" (int .Values.run.rounds)
    "twins" (int .Values.run.twins)
    "min-twins" .Values.run.minTwins
    "strategy" .Values.run.strategy
    "target-return" (ternary "" (toString .Values.run.targetReturn) (kindIs "invalid" .Values.run.targetReturn))
    "privacy" (ternary .Values.privacy.mode "off" .Values.privacy.enabled)
    "privacy-epsilon" .Values.privacy.targetEpsilon
    "privacy-delta" .Values.privacy.delta
    "twin-dp-noise-secret" .Values.privacy.noiseKeySecrets.twin
    "aggregator-dp-noise-secret" .Values.privacy.noiseKeySecrets.aggregator
    "twin-service-account" (include "fedtwin.twinServiceAccount" .)
    "aggregator-service-account" (include "fedtwin.aggregatorServiceAccount" .)
    "subnet" (ternary .Values.kubeovn.subnet.name "" (eq (include "fedtwin.kubeovnSubnet" .) "true"))
-}}
{{- range $prefix, $res := dict "twin" $twin "aggregator" $agg -}}
{{- range $kind := list "requests" "limits" -}}
{{- range $resource, $quantity := (default dict (get $res $kind)) -}}
{{- $name := ternary "gpu" $resource (eq $resource "nvidia.com/gpu") -}}
{{- $_ := set $p (printf "%s-%s-%s" $prefix $name (trimSuffix "s" $kind)) $quantity -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $name, $value := .Values.workflowTemplates.parameters -}}
{{- $_ := set $p $name $value -}}
{{- end -}}
{{- range $name, $value := $p -}}
{{- $_ := set $p $name (toString $value) -}}
{{- end -}}
{{- toJson $p -}}
{{- end -}}

{{/*
Parameters the chart never sets in one template, by template name, as JSON: there the parameter of
that name means something else than the chart value. fedtwin-member's `twins` is the comma list of
the twin ids one member cluster trains (set per cluster by its OverridePolicy), not the fleet size
`run.twins` (nor `workflowTemplates.parameters.twins`).
*/}}
{{- define "fedtwin.templateOwnParameters" -}}
{{- toJson (dict "fedtwin-member" (list "twins")) -}}
{{- end -}}

{{/*
Karmada helpers (templates/karmada/). The per-member twin Workflow and the OverridePolicies that
patch it share one parameter order, defined here once: an OverridePolicy replaces parameters by
their index (Karmada's plaintext overrider is a JSON patch).
*/}}

{{/* Parameters of the member Workflow, in order (names of fedtwin-member's parameters). */}}
{{- define "fedtwin.karmada.memberParameters" -}}
{{- toJson (list "run-id" "twins" "store" "s3-endpoint") -}}
{{- end -}}

{{/* JSON-patch path of a member Workflow parameter's value. Call with (list . "twins"). */}}
{{- define "fedtwin.karmada.parameterPath" -}}
{{- $names := include "fedtwin.karmada.memberParameters" (index . 0) | fromJsonArray -}}
{{- $wanted := index . 1 -}}
{{- $found := -1 -}}
{{- range $i, $name := $names -}}
{{- if eq $name $wanted -}}{{- $found = $i -}}{{- end -}}
{{- end -}}
{{- if lt $found 0 -}}{{- fail (printf "fedtwin.karmada.parameterPath: no member Workflow parameter %q" $wanted) -}}{{- end -}}
{{- printf "/spec/arguments/parameters/%d/value" $found -}}
{{- end -}}

{{/* The label that marks a member Workflow (a coordinator Workflow never carries it). */}}
{{- define "fedtwin.karmada.memberRoleLabel" -}}
fedtwin.io/multicluster-role: member
{{- end -}}

{{/* What the policies select: the member Workflows of this release. */}}
{{- define "fedtwin.karmada.memberWorkflowSelector" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "fedtwin.karmada.memberRoleLabel" . }}
{{- end -}}

{{/* Member clusters that train twins, sorted (placement of the member Workflows). */}}
{{- define "fedtwin.karmada.memberClusters" -}}
{{- toJson (keys .Values.karmada.members | sortAlpha) -}}
{{- end -}}

{{/* Fail early on Karmada values the schema cannot express. Renders nothing. */}}
{{- define "fedtwin.karmada.validate" -}}
{{- $owner := dict -}}
{{- range $cluster := keys .Values.karmada.members | sortAlpha -}}
{{- if not (has $cluster $.Values.karmada.clusters) -}}
{{- fail (printf "karmada.members.%s: %s is not in karmada.clusters (%s); add it there so that it receives the WorkflowTemplates" $cluster $cluster (join ", " $.Values.karmada.clusters)) -}}
{{- end -}}
{{- range $twin := (get $.Values.karmada.members $cluster).twins -}}
{{- if hasKey $owner $twin -}}
{{- fail (printf "karmada.members: twin %s is in both %s and %s; each twin trains in exactly one member cluster" $twin (get $owner $twin) $cluster) -}}
{{- end -}}
{{- $_ := set $owner $twin $cluster -}}
{{- end -}}
{{- end -}}
{{- if and .Values.karmada.runId (not .Values.karmada.members) -}}
{{- fail "karmada.runId needs karmada.members: list each member cluster's twins (e.g. --set karmada.members.member1.twins={twin-000,twin-001})" -}}
{{- end -}}
{{- end -}}
