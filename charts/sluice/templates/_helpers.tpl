{{/*
Names, labels and the settings several templates share.
*/}}

{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every object's name. Kept to 40 characters so that "<fullname>-queue-worker" and
"<fullname>-nats-headless" stay DNS labels (63).
*/}}
{{- define "sluice.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sluice.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "sluice.labels" -}}
helm.sh/chart: {{ include "sluice.chart" . }}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sluice
{{- end -}}

{{/* Labels of one component: call with (dict "root" $ "component" "gateway"). */}}
{{- define "sluice.componentLabels" -}}
{{ include "sluice.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* What a component's selectors match: (dict "root" $ "component" "gateway"). */}}
{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sluice.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "sluice.gatewayServiceAccount" -}}
{{- printf "%s-gateway" (include "sluice.fullname" .) -}}
{{- end -}}
{{- define "sluice.queueWorkerServiceAccount" -}}
{{- printf "%s-queue-worker" (include "sluice.fullname" .) -}}
{{- end -}}
{{- define "sluice.autoscalerServiceAccount" -}}
{{- printf "%s-autoscaler" (include "sluice.fullname" .) -}}
{{- end -}}

{{/* The Lease the autoscalers elect their leader with. */}}
{{- define "sluice.autoscalerLease" -}}
{{- printf "%s-autoscaler" (include "sluice.fullname" .) -}}
{{- end -}}

{{/* The gateway as the queue workers reach it. */}}
{{- define "sluice.gatewayUrl" -}}
{{- printf "http://%s-gateway.%s.svc:%d" (include "sluice.fullname" .) .Release.Namespace (int .Values.gateway.service.port) -}}
{{- end -}}

{{- define "sluice.basicAuthSecret" -}}
{{- default (printf "%s-basic-auth" (include "sluice.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "sluice.internalTokenSecret" -}}
{{- default (printf "%s-internal-token" (include "sluice.fullname" .)) .Values.internalToken.existingSecret -}}
{{- end -}}
{{- define "sluice.internalTokenKey" -}}
{{- if .Values.internalToken.existingSecret -}}
{{- .Values.internalToken.existingSecretKey -}}
{{- else -}}
internal-token
{{- end -}}
{{- end -}}

{{/*
The Secret and key holding SLUICE_DATABASE_URL: the bundled Postgres's Secret, the user's own
Secret, or one the chart makes from postgresql.external.url.
*/}}
{{- define "sluice.databaseSecret" -}}
{{- if .Values.postgresql.enabled -}}
{{- printf "%s-postgresql" (include "sluice.fullname" .) -}}
{{- else if .Values.postgresql.external.existingSecret -}}
{{- .Values.postgresql.external.existingSecret -}}
{{- else if .Values.postgresql.external.url -}}
{{- printf "%s-database" (include "sluice.fullname" .) -}}
{{- else -}}
{{- fail "postgresql.enabled is false: set postgresql.external.url or postgresql.external.existingSecret" -}}
{{- end -}}
{{- end -}}
{{- define "sluice.databaseSecretKey" -}}
{{- if and (not .Values.postgresql.enabled) .Values.postgresql.external.existingSecret -}}
{{- .Values.postgresql.external.existingSecretKey -}}
{{- else -}}
database-url
{{- end -}}
{{- end -}}

{{/* SLUICE_NATS_URL as an EnvVar: a plain URL, or from a Secret. */}}
{{- define "sluice.natsUrlEnv" -}}
- name: SLUICE_NATS_URL
{{- if .Values.nats.enabled }}
  value: {{ printf "nats://%s-nats.%s.svc:4222" (include "sluice.fullname" .) .Release.Namespace | quote }}
{{- else if .Values.nats.external.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.nats.external.existingSecret }}
      key: {{ .Values.nats.external.existingSecretKey }}
{{- else if .Values.nats.external.url }}
  value: {{ .Values.nats.external.url | quote }}
{{- else }}
{{- fail "nats.enabled is false: set nats.external.url or nats.external.existingSecret" }}
{{- end }}
{{- end -}}

{{/* The environment every Sluice process shares: where Postgres and NATS are, and logging. */}}
{{- define "sluice.backendEnv" -}}
- name: SLUICE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "sluice.databaseSecret" . }}
      key: {{ include "sluice.databaseSecretKey" . }}
{{ include "sluice.natsUrlEnv" . }}
- name: SLUICE_LOG
  value: {{ .Values.logLevel | quote }}
{{- end -}}

{{- define "sluice.internalTokenEnv" -}}
- name: SLUICE_INTERNAL_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "sluice.internalTokenSecret" . }}
      key: {{ include "sluice.internalTokenKey" . }}
{{- end -}}

{{/* The callback policy flags, the same for gateways and queue workers. */}}
{{- define "sluice.callbackArgs" -}}
- --callback-allow-private={{ .Values.callbacks.allowPrivate }}
{{- range .Values.callbacks.allow }}
- {{ printf "--callback-allow=%s" . | quote }}
{{- end }}
{{- range .Values.callbacks.deny }}
- {{ printf "--callback-deny=%s" . | quote }}
{{- end }}
{{- end -}}

{{/* Pod security context of the Sluice processes: a fixed non-root user. */}}
{{- define "sluice.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container security context: call with the user id, e.g. (include "sluice.containerSecurityContext" 10001). */}}
{{- define "sluice.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Scheduling for a component: (dict "root" $ "component" "gateway" "values" .Values.gateway).
Without an affinity of the user's, replicas prefer different nodes.
*/}}
{{- define "sluice.scheduling" -}}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .values.affinity }}
affinity:
  {{- toYaml .values.affinity | nindent 2 }}
{{- else }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "sluice.selectorLabels" (dict "root" .root "component" .component) | nindent 14 }}
{{- end }}
{{- end -}}

{{/*
A generated secret value that outlives upgrades: the value already in the cluster when the
Secret exists (lookup), else a new random one. Call with
(dict "namespace" ns "name" secretName "key" key "length" 32).
Offline rendering (helm template, --dry-run) cannot look, and makes a new one each time.
*/}}
{{- define "sluice.stableSecretValue" -}}
{{- $existing := lookup "v1" "Secret" .namespace .name -}}
{{- $data := dig "data" (dict) $existing -}}
{{- if hasKey $data .key -}}
{{- index $data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum (int .length) -}}
{{- end -}}
{{- end -}}

{{/*
The pods NetworkPolicies let reach NATS and Postgres: this release's gateways, queue workers
and autoscalers, as their own selectors pick them, and never a function's pod (faas_function),
should functions run in the release namespace and carry these labels (a function's labels are
the deployer's to choose). A peer with only a podSelector matches pods of the policy's own
namespace, so nothing from the function namespace or any other matches.
*/}}
{{- define "sluice.backendClients" -}}
{{- range $component := list "gateway" "queue-worker" "autoscaler" }}
- podSelector:
    matchLabels:
      {{- include "sluice.selectorLabels" (dict "root" $.root "component" $component) | nindent 6 }}
    matchExpressions:
      - key: faas_function
        operator: DoesNotExist
{{- end }}
{{- end -}}
