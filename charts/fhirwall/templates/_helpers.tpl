{{/* Names, labels and the rendered fhirwall configuration. */}}

{{- define "fhirwall.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fhirwall.fullname" -}}
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

{{- define "fhirwall.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "fhirwall.labels" -}}
helm.sh/chart: {{ include "fhirwall.chart" . }}
app.kubernetes.io/name: {{ include "fhirwall.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fhirwall
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector of the proxy pods. The component keeps the helm test pod out of the Service, PDB and policy. */}}
{{- define "fhirwall.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fhirwall.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: proxy
{{- end }}

{{- define "fhirwall.testLabels" -}}
app.kubernetes.io/name: {{ include "fhirwall.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: helm-test
{{- end }}

{{- define "fhirwall.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fhirwall.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fhirwall.image" -}}
{{- $repository := required "image.repository is required: the registry path of the image built from the Containerfile" .Values.image.repository }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Mutual TLS: clients (kubelet probes included) must present a certificate. */}}
{{- define "fhirwall.mtls" -}}
{{- if and .Values.tls.enabled .Values.tls.clientCa.secretName }}true{{ end }}
{{- end }}

{{- define "fhirwall.scheme" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{- define "fhirwall.basePath" -}}
{{- $server := .Values.config.server | default dict }}
{{- $server.base_path | default "/fhir" | trimSuffix "/" }}
{{- end }}

{{/*
The configuration file: values.config, with what the chart owns set on top of it.
Paths here must match the volume mounts in deployment.yaml.
*/}}
{{- define "fhirwall.config" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- $_ := required "config.upstreams is required: the upstream FHIR server(s) the proxy protects" $config.upstreams }}
{{- $server := deepCopy ($config.server | default dict) }}
{{- $_ := set $server "host" "0.0.0.0" }}
{{- $_ := set $server "port" (int .Values.containerPort) }}
{{- if .Values.tls.enabled }}
{{- $_ := required "tls.secretName is required with tls.enabled" .Values.tls.secretName }}
{{- $tls := dict "cert_file" "/etc/fhirwall/tls/tls.crt" "key_file" "/etc/fhirwall/tls/tls.key" "min_version" .Values.tls.minVersion }}
{{- if .Values.tls.clientCa.secretName }}
{{- $_ := set $tls "client_ca_file" (printf "/etc/fhirwall/client-ca/%s" .Values.tls.clientCa.key) }}
{{- end }}
{{- $_ := set $server "tls" $tls }}
{{- end }}
{{- $_ := set $config "server" $server }}
{{- if .Values.redis.url }}
{{- $redis := deepCopy ($config.redis | default dict) }}
{{- $_ := set $redis "url" .Values.redis.url }}
{{- $_ := set $config "redis" $redis }}
{{- end }}
{{- $audit := deepCopy ($config.audit | default dict) }}
{{- if .Values.auditLog.enabled }}
{{- $_ := required "auditLog.keySecret.name is required with auditLog.enabled (the checkpoint signing key)" .Values.auditLog.keySecret.name }}
{{- $_ := set $audit "log_file" "/var/lib/fhirwall/audit/audit.jsonl" }}
{{- $_ := set $audit "log_key_env" "AUDIT_LOG_SIGNING_KEY" }}
{{- end }}
{{- if .Values.telemetry.otlpEndpoint }}
{{- $telemetry := deepCopy ($audit.telemetry | default dict) }}
{{- $_ := set $telemetry "exporter" (ternary "otlp-grpc" "otlp-http" (eq .Values.telemetry.protocol "grpc")) }}
{{- $_ := unset $telemetry "endpoint" }}
{{- $_ := set $audit "telemetry" $telemetry }}
{{- end }}
{{- if $audit }}
{{- $_ := set $config "audit" $audit }}
{{- end }}
{{- if .Values.maskingProfiles }}
{{- $masking := deepCopy ($config.masking | default dict) }}
{{- $profiles := deepCopy ($masking.profiles | default dict) }}
{{- range $name, $_ := .Values.maskingProfiles }}
{{- $_ := set $profiles $name (dict "file" (printf "/etc/fhirwall/masking-profiles/%s.yaml" $name)) }}
{{- end }}
{{- $_ := set $masking "profiles" $profiles }}
{{- $_ := set $config "masking" $masking }}
{{- end }}
{{- if .Values.accessPolicy }}
{{- if not (or .Values.redis.url .Values.redis.existingSecret) }}
{{- fail "accessPolicy needs Redis (redis.url or redis.existingSecret): revocations and approvals are shared by the replicas" }}
{{- end }}
{{- $access := deepCopy ($config.access | default dict) }}
{{- $_ := set $access "policy_file" "/etc/fhirwall/access-policy/access-policy.yaml" }}
{{- $_ := set $config "access" $access }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* Environment shared by the proxy and the check-config init container: values only by reference. */}}
{{- define "fhirwall.env" -}}
{{- range .Values.secretEnv }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end }}
{{- if .Values.redis.existingSecret }}
- name: FHIRWALL_REDIS__URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- end }}
{{- if .Values.auditLog.enabled }}
- name: AUDIT_LOG_SIGNING_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.auditLog.keySecret.name }}
      key: {{ .Values.auditLog.keySecret.key }}
{{- end }}
{{- if .Values.telemetry.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.telemetry.otlpEndpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .Values.telemetry.protocol | quote }}
{{- if .Values.telemetry.headersSecret.name }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.telemetry.headersSecret.name }}
      key: {{ .Values.telemetry.headersSecret.key }}
{{- end }}
{{- end }}
{{- range $name, $value := .Values.extraEnv }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* Volume mounts shared by the proxy and the check-config init container. */}}
{{- define "fhirwall.volumeMounts" -}}
- name: config
  mountPath: /etc/fhirwall/fhirwall.yaml
  subPath: fhirwall.yaml
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.maskingProfiles }}
- name: masking-profiles
  mountPath: /etc/fhirwall/masking-profiles
  readOnly: true
{{- end }}
{{- if .Values.accessPolicy }}
- name: access-policy
  mountPath: /etc/fhirwall/access-policy
  readOnly: true
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/fhirwall/tls
  readOnly: true
{{- if .Values.tls.clientCa.secretName }}
- name: client-ca
  mountPath: /etc/fhirwall/client-ca
  readOnly: true
{{- end }}
{{- end }}
{{- if .Values.auditLog.enabled }}
- name: audit
  mountPath: /var/lib/fhirwall/audit
{{- end }}
{{- range .Values.secretVolumes }}
- name: {{ .name }}
  mountPath: {{ .mountPath }}
  readOnly: true
{{- end }}
{{- range .Values.configMapVolumes }}
- name: {{ .name }}
  mountPath: {{ .mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/* The hardened container security context (not configurable beyond the user and group ids). */}}
{{- define "fhirwall.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}
