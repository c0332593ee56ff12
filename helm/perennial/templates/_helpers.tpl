{{/* Names ------------------------------------------------------------------ */}}

{{- define "perennial.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "perennial.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<fullname>-<component>", e.g. (include "perennial.component" (list . "inference")) */}}
{{- define "perennial.component" -}}
{{- $ctx := index . 0 }}
{{- printf "%s-%s" (include "perennial.fullname" $ctx) (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* (list . "trainer") */}}
{{- define "perennial.serviceAccountName" -}}
{{- $ctx := index . 0 }}
{{- $component := index . 1 }}
{{- $name := index $ctx.Values.serviceAccount.names $component }}
{{- if $ctx.Values.serviceAccount.create }}
{{- default (include "perennial.component" (list $ctx $component)) $name }}
{{- else }}
{{- default "default" $name }}
{{- end }}
{{- end }}

{{/* Labels ----------------------------------------------------------------- */}}

{{- define "perennial.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "perennial.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: perennial
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: (list . "inference") */}}
{{- define "perennial.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "perennial.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* All labels of one component's objects: (list . "inference") */}}
{{- define "perennial.componentLabels" -}}
{{ include "perennial.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Images ------------------------------------------------------------------ */}}

{{/* (list . .Values.inference.image "default-tag") */}}
{{- define "perennial.image" -}}
{{- $ctx := index . 0 }}
{{- $image := index . 1 }}
{{- $repository := $image.repository }}
{{- if $ctx.Values.image.registry }}
{{- $repository = printf "%s/%s" $ctx.Values.image.registry $image.repository }}
{{- end }}
{{- if $image.digest }}
{{- printf "%s@%s" $repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default (index . 2) $image.tag) }}
{{- end }}
{{- end }}

{{/* A value as text; whole numbers stay whole (values passed as JSON arrive as float64: 1e+06). */}}
{{- define "perennial.str" -}}
{{- if and (kindIs "float64" .) (eq . (float64 (int64 .))) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- end }}

{{/* Secrets: the name holding a value, ours or the operator's ------------- */}}

{{- define "perennial.authSecret" -}}
{{- default (include "perennial.component" (list . "auth")) .Values.auth.existingSecret }}
{{- end }}
{{- define "perennial.tlsSecret" -}}
{{- default (include "perennial.component" (list . "tls")) .Values.tls.existingSecret }}
{{- end }}
{{- define "perennial.redisSecret" -}}
{{- default (include "perennial.component" (list . "redis")) .Values.redis.existingSecret }}
{{- end }}
{{- define "perennial.kafkaSaslSecret" -}}
{{- default (include "perennial.component" (list . "kafka-sasl")) .Values.kafka.sasl.existingSecret }}
{{- end }}
{{- define "perennial.kafkaCaSecret" -}}
{{- default (include "perennial.component" (list . "kafka-ca")) .Values.kafka.tls.existingSecret }}
{{- end }}

{{- define "perennial.redisPasswordSet" -}}
{{- if or .Values.redis.password .Values.redis.existingSecret }}true{{ end }}
{{- end }}
{{- define "perennial.kafkaSasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end }}
{{- end }}
{{- define "perennial.kafkaTls" -}}
{{- if and (has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL")) (or .Values.kafka.tls.caCert .Values.kafka.tls.existingSecret) }}true{{ end }}
{{- end }}

{{/* Pod pieces shared by both services ------------------------------------ */}}

{{/* Mount paths (the env contract points at these files). */}}
{{- define "perennial.paths.auth" -}}/var/run/secrets/perennial/auth{{- end }}
{{- define "perennial.paths.tls" -}}/var/run/secrets/perennial/tls{{- end }}
{{- define "perennial.paths.kafkaCa" -}}/var/run/secrets/perennial/kafka-ca{{- end }}
{{- define "perennial.paths.probe" -}}/opt/perennial/probe{{- end }}

{{/* Environment from Secrets and the downward API, common to both services. */}}
{{/* The gRPC security files (token, TLS) as the env contract names them. */}}
{{- define "perennial.grpcSecurityEnv" -}}
{{- if .Values.auth.enabled }}
- name: PERENNIAL_AUTH_TOKEN_FILE
  value: {{ include "perennial.paths.auth" . }}/{{ .Values.auth.existingSecretKey }}
{{- end }}
{{- if .Values.tls.enabled }}
- name: PERENNIAL_TLS_CERT_FILE
  value: {{ include "perennial.paths.tls" . }}/tls.crt
- name: PERENNIAL_TLS_KEY_FILE
  value: {{ include "perennial.paths.tls" . }}/tls.key
{{- if .Values.tls.mutual }}
- name: PERENNIAL_TLS_CLIENT_CA_FILE
  value: {{ include "perennial.paths.tls" . }}/ca.crt
{{- end }}
{{- end }}
{{- end }}

{{- define "perennial.secretEnv" -}}
{{ include "perennial.grpcSecurityEnv" . }}
{{- if include "perennial.redisPasswordSet" . }}
- name: PERENNIAL_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "perennial.redisSecret" . }}
      key: {{ .Values.redis.existingSecretKey }}
{{- end }}
- name: PERENNIAL_POD_NAME
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
- name: PERENNIAL_POD_NAMESPACE
  valueFrom:
    fieldRef: {fieldPath: metadata.namespace}
- name: PERENNIAL_POD_UID
  valueFrom:
    fieldRef: {fieldPath: metadata.uid}
{{- end }}

{{/* Volumes common to both services. */}}
{{- define "perennial.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if .Values.auth.enabled }}
- name: auth
  secret:
    secretName: {{ include "perennial.authSecret" . }}
    defaultMode: 0440
{{- end }}
- name: probe
  configMap:
    name: {{ include "perennial.component" (list . "probe") }}
    defaultMode: 0444
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "perennial.tlsSecret" . }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "perennial.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.auth.enabled }}
- name: auth
  mountPath: {{ include "perennial.paths.auth" . }}
  readOnly: true
{{- end }}
- name: probe
  mountPath: {{ include "perennial.paths.probe" . }}
  readOnly: true
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: {{ include "perennial.paths.tls" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
A gRPC health probe of one port: (list . port "component" probeSettings).
Native `grpc:` probes (kubelet speaks plaintext h2c only); with TLS on, an exec probe
running files/grpc-health-probe.py inside the pod with the pod's own certificates.
*/}}
{{- define "perennial.grpcProbe" -}}
{{- $ctx := index . 0 }}
{{- $port := index . 1 }}
{{- $component := index . 2 }}
{{- $settings := index . 3 }}
{{- if $ctx.Values.tls.enabled }}
exec:
  command:
    - python
    - {{ include "perennial.paths.probe" $ctx }}/grpc-health-probe.py
    - --port={{ $port }}
    - --server-name={{ default (include "perennial.component" (list $ctx $component)) $ctx.Values.tls.probeServerName }}
{{- else }}
grpc:
  port: {{ $port }}
{{- end }}
{{ toYaml $settings }}
{{- end }}

{{/* Fail early on values that cannot work together. */}}
{{- define "perennial.validate" -}}
{{- if gt (int .Values.trainer.replicas) (int .Values.kafka.partitions) }}
{{- fail (printf "trainer.replicas (%d) must be <= kafka.partitions (%d): a partition feeds at most one trainer, extra trainers would idle" (int .Values.trainer.replicas) (int .Values.kafka.partitions)) }}
{{- end }}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) (not .Values.auth.token) }}
{{- fail "auth.enabled needs auth.token or auth.existingSecret" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) (not (and .Values.tls.cert .Values.tls.key)) }}
{{- fail "tls.enabled needs tls.existingSecret or both tls.cert and tls.key" }}
{{- end }}
{{- if and .Values.tls.enabled .Values.tls.mutual (not .Values.tls.existingSecret) (not .Values.tls.ca) }}
{{- fail "tls.mutual needs tls.ca (the CA client certificates must be signed by) or tls.existingSecret with ca.crt" }}
{{- end }}
{{- if and (include "perennial.kafkaSasl" .) (not .Values.kafka.sasl.username) }}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.sasl.username" .Values.kafka.securityProtocol) }}
{{- end }}
{{- if and (include "perennial.kafkaSasl" .) (not .Values.kafka.sasl.password) (not .Values.kafka.sasl.existingSecret) }}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.sasl.password or kafka.sasl.existingSecret" .Values.kafka.securityProtocol) }}
{{- end }}
{{- end }}
