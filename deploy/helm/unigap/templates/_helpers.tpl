{{/* Names, labels, images and the pieces every pod shares. */}}

{{- define "unigap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-unigap, short enough that "-generation" still fits in 63 characters. */}}
{{- define "unigap.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 48 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The name of one component's objects: (dict "root" $ "component" "generation") */}}
{{- define "unigap.component" -}}
{{- printf "%s-%s" (include "unigap.fullname" .root) .component }}
{{- end }}

{{- define "unigap.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "unigap.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: unigap
{{- end }}

{{- define "unigap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "unigap.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* registry/repository:tag, or registry/repository@digest when a digest is set:
(dict "root" $ "image" .Values.images.generation). image.registry applies to unigap's own images,
not to third-party ones ("thirdParty" true), whose repository is a full reference. */}}
{{- define "unigap.image" -}}
{{- $repo := .image.repository }}
{{- if and .root.Values.image.registry (not .thirdParty) }}
{{- $repo = printf "%s/%s" (trimSuffix "/" .root.Values.image.registry) $repo }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repo .image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (.image.tag | default .root.Chart.AppVersion) }}
{{- end }}
{{- end }}

{{- define "unigap.imagePullSecrets" -}}
imagePullSecrets:
{{- range .Values.image.pullSecrets }}
  - name: {{ . }}
{{- end }}
{{- end }}

{{/* Service addresses the loop, the judge and the probes dial (a TLS certificate must name them). */}}
{{- define "unigap.generation.host" -}}
{{- printf "%s.%s.svc" (include "unigap.component" (dict "root" . "component" "generation")) .Release.Namespace }}
{{- end }}
{{- define "unigap.judge.host" -}}
{{- printf "%s.%s.svc" (include "unigap.component" (dict "root" . "component" "judge")) .Release.Namespace }}
{{- end }}

{{- define "unigap.store.endpoint" -}}
{{- if .Values.store.endpoint }}
{{- .Values.store.endpoint }}
{{- else }}
{{- printf "http://%s:%d" (include "unigap.component" (dict "root" . "component" "minio")) (int .Values.minio.port) }}
{{- end }}
{{- end }}

{{- define "unigap.store.secretName" -}}
{{- .Values.store.existingSecret | default (include "unigap.component" (dict "root" . "component" "store")) }}
{{- end }}

{{- define "unigap.auth.secretName" -}}
{{- .Values.auth.existingSecret | default (include "unigap.component" (dict "root" . "component" "auth")) }}
{{- end }}

{{- define "unigap.podSecurityContext" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: {{ .Values.podSecurity.runAsUser }}
  runAsGroup: {{ .Values.podSecurity.runAsGroup }}
  fsGroup: {{ .Values.podSecurity.fsGroup }}
  seccompProfile:
    type: RuntimeDefault
{{- end }}

{{- define "unigap.containerSecurityContext" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  privileged: false
  capabilities:
    drop: ["ALL"]
{{- end }}

{{/* resources, plus the GPU extended resource when gpus > 0: (dict "root" $ "resources" .. "gpus" ..) */}}
{{- define "unigap.resources" -}}
{{- $res := deepCopy (.resources | default dict) }}
{{- if gt (int .gpus) 0 }}
{{- $limits := $res.limits | default dict }}
{{- $_ := set $limits .root.Values.gpuResource (int .gpus) }}
{{- $_ := set $res "limits" $limits }}
{{- end -}}
resources:
  {{- toYaml $res | nindent 2 }}
{{- end }}

{{/* Env of the S3 store: endpoint and region come from the settings ConfigMap, keys from the Secret. */}}
{{- define "unigap.store.env" -}}
- name: UNIGAP_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "unigap.store.secretName" . }}
      key: UNIGAP_S3_ACCESS_KEY
- name: UNIGAP_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "unigap.store.secretName" . }}
      key: UNIGAP_S3_SECRET_KEY
{{- end }}

{{/* Env and mounts every gRPC server shares: port, metrics, token file, TLS, settings. */}}
{{- define "unigap.server.env" -}}
- name: UNIGAP_PORT
  value: {{ .port | quote }}
- name: UNIGAP_METRICS_PORT
  value: {{ .root.Values.server.metricsPort | quote }}
{{- if .root.Values.auth.enabled }}
- name: UNIGAP_TOKEN_FILE
  value: /var/run/secrets/unigap/auth/token
{{- end }}
{{- if .root.Values.tls.enabled }}
- name: UNIGAP_TLS_CERT
  value: /var/run/secrets/unigap/tls/tls.crt
- name: UNIGAP_TLS_KEY
  value: /var/run/secrets/unigap/tls/tls.key
{{- end }}
{{ include "unigap.store.env" .root }}
{{- end }}

{{- define "unigap.server.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /var/cache/unigap
{{- if .Values.auth.enabled }}
- name: auth
  mountPath: /var/run/secrets/unigap/auth
  readOnly: true
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /var/run/secrets/unigap/tls
  readOnly: true
- name: probe
  mountPath: /etc/unigap/probe
  readOnly: true
{{- end }}
{{- if .Values.models.existingClaim }}
- name: models
  mountPath: /models
  readOnly: true
{{- end }}
{{- end }}

{{- define "unigap.server.volumes" -}}
- name: tmp
  emptyDir: {}
- name: cache
  emptyDir:
    sizeLimit: {{ .Values.server.cacheSize }}
{{- if .Values.auth.enabled }}
- name: auth
  secret:
    secretName: {{ include "unigap.auth.secretName" . }}
    items:
      - key: token
        path: token
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
- name: probe
  configMap:
    name: {{ include "unigap.component" (dict "root" . "component" "probe") }}
{{- end }}
{{- if .Values.models.existingClaim }}
- name: models
  persistentVolumeClaim:
    claimName: {{ .Values.models.existingClaim }}
    readOnly: true
{{- end }}
{{- end }}

{{/*
Readiness and liveness on grpc.health.v1 (served without auth), and a startup probe that gives a
model up to five minutes to load. Plaintext: the kubelet's native gRPC probe. TLS: the same check
over TLS by files/grpc_health_probe.py. (dict "root" $ "port" 50051 "service" "unigap.v1.X" "host" ..)
*/}}
{{- define "unigap.grpcProbes" -}}
{{- $check := dict }}
{{- if .root.Values.tls.enabled }}
{{- $cmd := list "python" "/etc/unigap/probe/grpc_health_probe.py" (printf "127.0.0.1:%d" (int .port)) "--server-name" .host "--ca" (printf "/var/run/secrets/unigap/tls/%s" .root.Values.tls.caKey) }}
{{- $check = dict "exec" (dict "command" (concat $cmd (list "--service" .service))) }}
{{- else }}
{{- $check = dict "grpc" (dict "port" (int .port) "service" .service) }}
{{- end -}}
startupProbe:
  {{- toYaml $check | nindent 2 }}
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 60
readinessProbe:
  {{- toYaml $check | nindent 2 }}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
livenessProbe:
  {{- toYaml $check | nindent 2 }}
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
{{- end }}
