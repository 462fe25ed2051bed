{{/*
Chart name, capped at 63 characters (a DNS label).
*/}}
{{- define "codingjob-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources, capped at 63 characters. A release name that already
contains the chart name, or that the chart name starts with (release `codingjob`), is used as
is, so `helm install codingjob` names its MinIO `codingjob-minio` rather than
`codingjob-codingjob-operator-minio`.
*/}}
{{- define "codingjob-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if or (contains $name .Release.Name) (hasPrefix .Release.Name $name) }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version for the helm.sh/chart label.
*/}}
{{- define "codingjob-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every resource of the release.
*/}}
{{- define "codingjob-operator.labels" -}}
helm.sh/chart: {{ include "codingjob-operator.chart" . }}
{{ include "codingjob-operator.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: codingjob
{{- end }}

{{/*
Labels that identify the release; each workload adds `app.kubernetes.io/component` so that
the operator's, MinIO's and the scripted model's selectors never overlap.
*/}}
{{- define "codingjob-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "codingjob-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the operator's ServiceAccount.
*/}}
{{- define "codingjob-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "codingjob-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Operator image reference; the archiver Jobs run the same image.
*/}}
{{- define "codingjob-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
"true" when the bundled MinIO is deployed: asked for, and no external store configured.
*/}}
{{- define "codingjob-operator.minio.enabled" -}}
{{- if and .Values.minio.enabled (not .Values.storage.endpoint) }}true{{ end }}
{{- end }}

{{/*
Name of the bundled MinIO's Deployment, Service and PVC.
*/}}
{{- define "codingjob-operator.minio.fullname" -}}
{{- /* Cut the prefix, not the suffix, so the name never equals the operator's. */}}
{{- printf "%s-minio" (include "codingjob-operator.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/*
"true" when the operator archives to object storage (bundled MinIO or an external store).
*/}}
{{- define "codingjob-operator.storage.enabled" -}}
{{- if or (include "codingjob-operator.minio.enabled" .) .Values.storage.endpoint }}true{{ end }}
{{- end }}

{{/*
`host:port` the operator and the archiver reach object storage at.
*/}}
{{- define "codingjob-operator.storage.endpoint" -}}
{{- if .Values.storage.endpoint }}
{{- .Values.storage.endpoint }}
{{- else }}
{{- printf "%s.%s.svc:%d" (include "codingjob-operator.minio.fullname" .) .Release.Namespace (int .Values.minio.service.port) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the object storage credentials.
*/}}
{{- define "codingjob-operator.storage.secretName" -}}
{{- if .Values.storage.existingSecret }}
{{- .Values.storage.existingSecret }}
{{- else }}
{{- printf "%s-storage" (include "codingjob-operator.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}
{{- end }}

{{/*
The scripted demo model's in-cluster base URL.
*/}}
{{- define "codingjob-operator.scriptedModel.baseURL" -}}
{{- printf "http://scripted-model.%s.svc:%d/v1" .Release.Namespace (int .Values.scriptedModel.port) }}
{{- end }}

{{/*
The ClusterKopfPeering the replicas meet on: peering.name, else the release's full name (two
releases on one cluster must not pause each other).
*/}}
{{- define "codingjob-operator.peeringName" -}}
{{- .Values.peering.name | default (include "codingjob-operator.fullname" .) }}
{{- end }}

{{/*
Name of the gateway's Deployment, Service, ServiceAccount and RBAC objects.
*/}}
{{- define "codingjob-operator.gateway.fullname" -}}
{{- printf "%s-gateway" (include "codingjob-operator.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
Name of the ClusterRole to bind to the gateway's users (`<gateway fullname>-user`).
*/}}
{{- define "codingjob-operator.gateway.userRole" -}}
{{- printf "%s-gateway-user" (include "codingjob-operator.fullname" . | trunc 50 | trimSuffix "-") }}
{{- end }}

{{/*
"true" when watchNamespaces lists plain names only: the operator then gets a Role in each of those
namespaces and cluster-wide rights only for cluster-scoped resources. Globs (`team-*`) or an empty
list mean namespaces not known at install time, which only a ClusterRole can cover.
*/}}
{{- define "codingjob-operator.rbac.namespaced" -}}
{{- if .Values.watchNamespaces -}}
{{- $plain := true -}}
{{- range .Values.watchNamespaces -}}
{{- if regexMatch "[*?!]" . -}}{{- $plain = false -}}{{- end -}}
{{- end -}}
{{- if $plain -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The operator's rules on namespaced resources, one per purpose (README: Permissions).
*/}}
{{- define "codingjob-operator.rbac.namespacedRules" }}
  # CodingJobs: watch them, keep kopf's finalizer and progress annotations, delete expired ones.
  - apiGroups: [codingjob.dev]
    resources: [codingjobs]
    verbs: [get, list, watch, patch, update, delete]
  # CodingJob status: phase, conditions, steps, tokens, download URL.
  - apiGroups: [codingjob.dev]
    resources: [codingjobs/status]
    verbs: [get, patch, update]
  # Children carry an ownerReference with blockOwnerDeletion to their CodingJob, which needs
  # update on the owner's finalizers (OwnerReferencesPermissionEnforcement).
  - apiGroups: [codingjob.dev]
    resources: [codingjobs/finalizers]
    verbs: [update]
  # The agent pod: create it, watch its phase and container exits, delete it when done.
  - apiGroups: [""]
    resources: [pods]
    verbs: [get, list, watch, create, delete]
  # Read the context-manager sidecar's /stats (steps, tokens) through the API server's proxy.
  - apiGroups: [""]
    resources: [pods/proxy]
    verbs: [get]
  # The desktop Service (noVNC) of each job.
  - apiGroups: [""]
    resources: [services]
    verbs: [get, create, patch]
  # The workspace PVC of each job; deleted once the workspace is archived.
  - apiGroups: [""]
    resources: [persistentvolumeclaims]
    verbs: [get, create, delete]
  # The per-job session Secret (VNC password, Jupyter token) and the archiver's storage
  # credentials Secret. No `get`: the operator lists Secrets only with a label selector (its own
  # managed-by label, or the owner's codingjob.dev/model-credentials consent), so it is never
  # made to read a Secret by a name a job author chose.
  - apiGroups: [""]
    resources: [secrets]
    verbs: [list, create, patch, delete]
  # The sandbox ServiceAccount a class names, created (without token automount) when missing.
  - apiGroups: [""]
    resources: [serviceaccounts]
    verbs: [create]
  # The sandbox NetworkPolicy of each job.
  - apiGroups: [networking.k8s.io]
    resources: [networkpolicies]
    verbs: [get, create, patch]
  # The archiver Job that zips a finished workspace into object storage.
  - apiGroups: [batch]
    resources: [jobs]
    verbs: [get, list, watch, create, delete]
  # Events on CodingJobs (kopf posts handler progress and warnings), core API.
  - apiGroups: [""]
    resources: [events]
    verbs: [create, patch]
  # The same events through the events.k8s.io API, which newer clients use.
  - apiGroups: [events.k8s.io]
    resources: [events]
    verbs: [create, patch]
{{- end -}}

{{/* The model relay's name (Deployment, Service, ServiceAccount, PVC, ConfigMap). */}}
{{- define "codingjob-operator.relay.fullname" -}}
{{- printf "%s-model-relay" (include "codingjob-operator.fullname" . | trunc 39 | trimSuffix "-") }}
{{- end }}

{{/* The Secret with the relay's signing key. */}}
{{- define "codingjob-operator.relay.signingKeySecret" -}}
{{- .Values.relay.existingSigningKeySecret | default (printf "%s-signing-key" (include "codingjob-operator.relay.fullname" .)) }}
{{- end }}

{{/*
The relay's providers: the configured ones, else the scripted model when it is enabled (with the
key it requires, if any), else the operator's default endpoint (keyless: a key would be an
author's, and those jobs bypass the relay).
*/}}
{{- define "codingjob-operator.relay.providers" -}}
{{- if .Values.relay.providers }}
{{- toYaml .Values.relay.providers }}
{{- else if .Values.scriptedModel.enabled }}
{{- $scripted := dict "name" "scripted" "baseURL" (include "codingjob-operator.scriptedModel.baseURL" .) }}
{{- with .Values.scriptedModel.apiKeySecret }}
{{- if .name }}
{{- /* The key the scripted model requires: the relay holds it, like a real provider's. */}}
{{- $_ := set $scripted "apiKeySecret" (dict "name" .name "key" .key) }}
{{- end }}
{{- end }}
{{- toYaml (list $scripted) }}
{{- else if .Values.defaultModel.baseURL }}
{{- toYaml (list (dict "name" "default" "baseURL" .Values.defaultModel.baseURL)) }}
{{- else }}
{{- toYaml list }}
{{- end }}
{{- end }}

{{/* The default provider of jobs. */}}
{{- define "codingjob-operator.relay.defaultProvider" -}}
{{- $providers := include "codingjob-operator.relay.providers" . | fromYamlArray }}
{{- .Values.relay.defaultProvider | default (($providers | first | default dict).name) | default "" }}
{{- end }}

{{/* The relay's OpenAI-compatible URL, as the sidecars use it. */}}
{{- define "codingjob-operator.relay.url" -}}
{{- printf "http://%s.%s.svc:%d/v1" (include "codingjob-operator.relay.fullname" .) .Release.Namespace (int .Values.relay.port) }}
{{- end }}

{{/*
Name of the Secret with the operator's own storage identity: with the bundled MinIO a
bucket-scoped user the setup hook creates (the root user stays with MinIO), else existingSecret.
*/}}
{{- define "codingjob-operator.storage.operatorSecretName" -}}
{{- if include "codingjob-operator.minio.enabled" . }}
{{- printf "%s-storage-operator" (include "codingjob-operator.fullname" . | trunc 46 | trimSuffix "-") }}
{{- else }}
{{- include "codingjob-operator.storage.secretName" . }}
{{- end }}
{{- end }}

{{/*
Name of the Secret with the read-only identity that signs download URLs ("" when none).
*/}}
{{- define "codingjob-operator.storage.signerSecretName" -}}
{{- if include "codingjob-operator.minio.enabled" . }}
{{- printf "%s-storage-signer" (include "codingjob-operator.fullname" . | trunc 48 | trimSuffix "-") }}
{{- else }}
{{- .Values.storage.signerSecret }}
{{- end }}
{{- end }}
