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

{{- define "fedtwin.logsSecret" -}}
{{- default (include "fedtwin.platformComponent" (list . "s3-logs")) .Values.s3.logsSecret -}}
{{- end -}}

{{/* "true" when twin pods archive their logs with the logs identity (artifactRepository.archiveLogs; null = s3.platformMinio). */}}
{{- define "fedtwin.archiveLogs" -}}
{{- $on := .Values.artifactRepository.archiveLogs -}}
{{- if kindIs "invalid" $on -}}{{- $on = .Values.s3.platformMinio -}}{{- end -}}
{{- if $on -}}true{{- end -}}
{{- end -}}

{{/*
An Argo S3 location of this release's bucket with one identity's credentials, as JSON. Call with
(dict "ctx" . "secret" SECRET "endpoint" ENDPOINT) and merge the key (keyFormat in a repository,
key in a template's archiveLocation).
*/}}
{{- define "fedtwin.s3Location" -}}
{{- $url := urlParse (include "fedtwin.s3Endpoint" .ctx) -}}
{{- toJson (dict
      "bucket" .ctx.Values.s3.bucket
      "endpoint" (default $url.host .endpoint)
      "insecure" (eq $url.scheme "http")
      "region" .ctx.Values.s3.region
      "accessKeySecret" (dict "name" .secret "key" "accessKey")
      "secretKeySecret" (dict "name" .secret "key" "secretKey")) -}}
{{- end -}}

{{/*
The archiveLocation the chart gives every twin pod template, as JSON. Argo mounts the Secret of a
template's archive location into the wait container only (workflow/controller/workflowpod.go,
createSecretVolumesAndMounts, v4.0.7), never into main, where the twin's code runs. Without a location
of its own a twin template would archive with the Workflow's repository, the aggregator identity;
so with logs off it is {archiveLogs: false}. The endpoint is the Workflow's `s3-endpoint` parameter
without its scheme (an Argo expression), so each Karmada member cluster archives to its own endpoint.
*/}}
{{- define "fedtwin.twinArchiveLocation" -}}
{{- if include "fedtwin.archiveLogs" . -}}
{{- $endpoint := "{{=sprig.regexReplaceAll('^https?://', workflow.parameters['s3-endpoint'], '')}}" -}}
{{- $s3 := include "fedtwin.s3Location" (dict "ctx" . "secret" (include "fedtwin.logsSecret" .) "endpoint" $endpoint) | fromJson -}}
{{- $_ := set $s3 "key" .Values.artifactRepository.logsKeyFormat -}}
{{- toJson (dict "archiveLogs" true "s3" $s3) -}}
{{- else -}}
{{- toJson (dict "archiveLogs" false) -}}
{{- end -}}
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

{{/*
NetworkPolicies are enforced after Service translation (Calico, kindnet, KubeOVN, Cilium): a pod's
packet to a Service IP has become a packet to one of its endpoints (pod IP and target port) by the
time a policy sees it. So every peer below is where the traffic really goes: the DNS and platform
pods by selector, the API server by its endpoint addresses and port, never a Service IP.
*/}}

{{/* Egress rule to the cluster DNS pods, on the port they listen on (UDP and TCP). */}}
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
      port: {{ .Values.networkPolicy.dns.port }}
    - protocol: TCP
      port: {{ .Values.networkPolicy.dns.port }}
{{- end -}}

{{/*
The object `lookup` returns, as JSON ({} under `helm template`, `--dry-run` or without read access).
Call with (list . apiVersion kind namespace name). A helper of its own so that the tests can stand
in for a cluster.
*/}}
{{- define "fedtwin.lookup" -}}
{{- toJson (lookup (index . 1) (index . 2) (index . 3) (index . 4)) -}}
{{- end -}}

{{/* An address as a one-host CIDR (/32, or /128 for IPv6). */}}
{{- define "fedtwin.hostCidr" -}}
{{- printf "%s/%s" . (ternary "128" "32" (contains ":" .)) -}}
{{- end -}}

{{/*
Where the Argo executor reaches the Kubernetes API, as JSON {"cidrs": [...], "ports": [...]}:
`networkPolicy.kubernetesApi.cidrs` when set, else the endpoints of the `kubernetes` Service in
`default` looked up at install (its EndpointSlice, else its Endpoints), i.e. the API server
addresses and port (usually 6443) that remain after Service translation. Ports:
`networkPolicy.kubernetesApi.ports`, else the looked-up ones, else 443 and 6443. With
karmada.enabled nothing is looked up: this release lives in the Karmada API server, whose own
endpoints are not the member clusters'. Empty cidrs when unknown (see fedtwin.kubernetesApiRequired).
*/}}
{{- define "fedtwin.kubernetesApi" -}}
{{- $cfg := .Values.networkPolicy.kubernetesApi -}}
{{- $cidrs := list -}}
{{- $ports := list -}}
{{- if $cfg.cidrs -}}
{{- $cidrs = $cfg.cidrs -}}
{{- else if not .Values.karmada.enabled -}}
{{- $slice := include "fedtwin.lookup" (list . "discovery.k8s.io/v1" "EndpointSlice" "default" "kubernetes") | fromJson -}}
{{- range $endpoint := (default list $slice.endpoints) -}}
{{- if ne (toString (dig "conditions" "ready" true $endpoint)) "false" -}}
{{- range $address := (default list $endpoint.addresses) -}}
{{- $cidrs = append $cidrs (include "fedtwin.hostCidr" $address) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range (default list $slice.ports) -}}
{{- $ports = append $ports (int .port) -}}
{{- end -}}
{{- if not $cidrs -}}
{{- $ports = list -}}
{{- $endpoints := include "fedtwin.lookup" (list . "v1" "Endpoints" "default" "kubernetes") | fromJson -}}
{{- range $subset := (default list $endpoints.subsets) -}}
{{- range (default list $subset.addresses) -}}
{{- $cidrs = append $cidrs (include "fedtwin.hostCidr" .ip) -}}
{{- end -}}
{{- range (default list $subset.ports) -}}
{{- $ports = append $ports (int .port) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $cfg.ports -}}
{{- $ports = $cfg.ports -}}
{{- else if not $ports -}}
{{- $ports = list 443 6443 -}}
{{- end -}}
{{- toJson (dict "cidrs" (uniq $cidrs) "ports" (uniq $ports)) -}}
{{- end -}}

{{/*
"true" when the Kubernetes API addresses must be known: a NetworkPolicy allows them (unless the
Cilium entity does it instead) or the private KubeOVN Subnet must let them through.
*/}}
{{- define "fedtwin.kubernetesApiRequired" -}}
{{- if or (and .Values.networkPolicy.enabled (not (include "fedtwin.ciliumApiServer" .))) (include "fedtwin.kubeovnSubnet" .) -}}true{{- end -}}
{{- end -}}

{{/* The API addresses as a list, failing with what to set when they are required but unknown. */}}
{{- define "fedtwin.kubernetesApiCidrs" -}}
{{- $api := include "fedtwin.kubernetesApi" . | fromJson -}}
{{- if and (not $api.cidrs) (include "fedtwin.kubernetesApiRequired" .) -}}
{{- if .Values.karmada.enabled -}}
{{- fail "networkPolicy.kubernetesApi.cidrs is required when karmada.enabled is true: the policies go to the member clusters, whose API servers this release cannot look up; list the addresses kubectl get endpoints kubernetes -n default prints in every member cluster (e.g. --set networkPolicy.kubernetesApi.cidrs={172.18.0.3/32,172.18.0.4/32})" -}}
{{- end -}}
{{- fail "networkPolicy.kubernetesApi.cidrs is required: the kubernetes endpoints in namespace default could not be looked up (helm template, --dry-run or no read access); set it to the addresses kubectl get endpoints kubernetes -n default prints (e.g. --set networkPolicy.kubernetesApi.cidrs={172.18.0.2/32})" -}}
{{- end -}}
{{- toJson $api.cidrs -}}
{{- end -}}

{{/* Egress rule to the Kubernetes API server endpoints, for the Argo executor (none when unknown and not required). */}}
{{- define "fedtwin.egressApi" -}}
{{- $cidrs := include "fedtwin.kubernetesApiCidrs" . | fromJsonArray -}}
{{- if $cidrs -}}
{{- $to := list -}}
{{- range $cidrs -}}{{- $to = append $to (dict "ipBlock" (dict "cidr" .)) -}}{{- end -}}
{{- $ports := list -}}
{{- range (include "fedtwin.kubernetesApi" . | fromJson).ports -}}{{- $ports = append $ports (dict "protocol" "TCP" "port" (int .)) -}}{{- end -}}
- to:
    {{- toYaml $to | nindent 4 }}
  ports:
    {{- toYaml $ports | nindent 4 }}
{{- end -}}
{{- end -}}

{{/*
CIDRs of the subnet the cluster DNS pods run on, as JSON: `kubeovn.subnet.dnsCidrs`, else the
`ovn.kubernetes.io/cidr` annotation KubeOVN keeps on the DNS namespace (the CIDR of the subnet its
pods get addresses from). Fails naming the value when neither is there.
*/}}
{{- define "fedtwin.kubeovnDnsCidrs" -}}
{{- $cidrs := .Values.kubeovn.subnet.dnsCidrs -}}
{{- if not $cidrs -}}
{{- $namespace := include "fedtwin.lookup" (list . "v1" "Namespace" "" .Values.networkPolicy.dns.namespace) | fromJson -}}
{{- $cidrs = without (splitList "," (dig "metadata" "annotations" "ovn.kubernetes.io/cidr" "" $namespace)) "" -}}
{{- end -}}
{{- if not $cidrs -}}
{{- fail (printf "kubeovn.subnet.dnsCidrs is required: the private twin Subnet drops all traffic outside allowSubnets, and the subnet of the DNS pods could not be looked up (no ovn.kubernetes.io/cidr annotation on namespace %s, or helm template); set it to the CIDR of that subnet, kubectl get subnet (usually ovn-default, e.g. --set kubeovn.subnet.dnsCidrs={10.16.0.0/16})" .Values.networkPolicy.dns.namespace) -}}
{{- end -}}
{{- toJson $cidrs -}}
{{- end -}}

{{/* "true" when the CiliumNetworkPolicy allowing the kube-apiserver entity is rendered. */}}
{{- define "fedtwin.ciliumApiServer" -}}
{{- if and .Values.networkPolicy.enabled .Values.networkPolicy.cilium.apiServerEntity (.Capabilities.APIVersions.Has "cilium.io/v2") -}}true{{- end -}}
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

{{/*
WorkflowTemplates whose Workflows Karmada propagates (the member Workflow runs fedtwin-member). With
karmada.enabled their ttlStrategy is removed: Argo in a member cluster would delete the finished
Workflow, and Karmada, which still holds it, would create it again and run it again. Such a Workflow
is deleted through Karmada after the run (karmada/delete-run.sh). podGC stays: pods are Argo's own.
*/}}
{{- define "fedtwin.karmada.propagatedWorkflowTemplates" -}}
{{- toJson (list "fedtwin-member") -}}
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
