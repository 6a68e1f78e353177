{{/*
Names, labels and the small decisions every template shares.
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "tickpipe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name when it already contains the chart name,
else "<release>-<chart>". Truncated to leave room for the longest component suffix.
*/}}
{{- define "tickpipe.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "chart-version" for the helm.sh/chart label. */}}
{{- define "tickpipe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "tickpipe.labels" -}}
helm.sh/chart: {{ include "tickpipe.chart" . }}
{{ include "tickpipe.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tickpipe
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of the release (add app.kubernetes.io/component per workload). */}}
{{- define "tickpipe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tickpipe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: (dict "ctx" $ "component" "consumer"). */}}
{{- define "tickpipe.componentLabels" -}}
{{ include "tickpipe.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "consumer"). */}}
{{- define "tickpipe.componentSelectorLabels" -}}
{{ include "tickpipe.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The ServiceAccount every tickpipe pod runs as. */}}
{{- define "tickpipe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tickpipe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image of a tickpipe service: <registry>/<repositoryPrefix><service>:<tag>, where a
component's own image.repository / image.tag win, and the tag defaults to appVersion.
(dict "ctx" $ "service" "consumer" "image" .Values.consumer.image)
*/}}
{{- define "tickpipe.image" -}}
{{- $global := .ctx.Values.image }}
{{- $repository := default (printf "%s%s" $global.repositoryPrefix .service) .image.repository }}
{{- $tag := default (default .ctx.Chart.AppVersion $global.tag) .image.tag }}
{{- if $global.registry }}
{{- printf "%s/%s:%s" (trimSuffix "/" $global.registry) $repository $tag }}
{{- else }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}
{{- end }}

{{/* Image of TimescaleDB (also used by the test pod for psql). */}}
{{- define "tickpipe.timescaledb.image" -}}
{{- $image := .Values.timescaledb.image }}
{{- if $image.registry }}
{{- printf "%s/%s:%s" (trimSuffix "/" $image.registry) $image.repository $image.tag }}
{{- else }}
{{- printf "%s:%s" $image.repository $image.tag }}
{{- end }}
{{- end }}

{{/*
StorageClass of a claim: its own class, else the chart-wide storageClass; empty (the
cluster's default class) when neither is set.
(dict "ctx" $ "class" $values.persistence.storageClass)
*/}}
{{- define "tickpipe.storageClass" -}}
{{- default .ctx.Values.storageClass .class }}
{{- end }}

{{/* Is the market simulator deployed? Only when enabled and no Alpaca keys are given. */}}
{{- define "tickpipe.sim.enabled" -}}
{{- if and .Values.marketSim.enabled (not .Values.alpaca.existingSecret) }}true{{- end }}
{{- end }}

{{/* The simulator's Service name and the URL producers use to reach it. */}}
{{- define "tickpipe.sim.fullname" -}}
{{- printf "%s-market-sim" (include "tickpipe.fullname" .) }}
{{- end }}

{{/* Strimzi Kafka cluster name (the Kafka resource). */}}
{{- define "tickpipe.kafka.clusterName" -}}
{{- default (include "tickpipe.fullname" .) .Values.kafka.clusterName }}
{{- end }}

{{/* Bootstrap servers for the services: the Strimzi listener or the external cluster. */}}
{{- define "tickpipe.kafka.bootstrapServers" -}}
{{- if .Values.kafka.enabled }}
{{- printf "%s-kafka-bootstrap:%d" (include "tickpipe.kafka.clusterName" .) (int .Values.kafka.listener.port) }}
{{- else }}
{{- required "kafka.external.bootstrapServers is required when kafka.enabled=false" .Values.kafka.external.bootstrapServers }}
{{- end }}
{{- end }}

{{/* Security protocol the services use. */}}
{{- define "tickpipe.kafka.securityProtocol" -}}
{{- if .Values.kafka.enabled }}SASL_SSL{{ else }}{{ .Values.kafka.external.securityProtocol }}{{ end }}
{{- end }}

{{/* Name of the Strimzi KafkaUser (= SASL user name) of a service. */}}
{{- define "tickpipe.kafka.userName" -}}
{{- printf "%s-%s" (include "tickpipe.fullname" .ctx) .service }}
{{- end }}

{{/* Where the Kafka cluster CA certificate is mounted in the services. */}}
{{- define "tickpipe.kafka.caDir" -}}/etc/tickpipe/kafka-ca{{- end }}

{{/* Secret (name) holding the Kafka cluster CA, or nothing when there is none to mount. */}}
{{- define "tickpipe.kafka.caSecret" -}}
{{- if .Values.kafka.enabled }}
{{- printf "%s-cluster-ca-cert" (include "tickpipe.kafka.clusterName" .) }}
{{- else if and (hasSuffix "SSL" .Values.kafka.external.securityProtocol) .Values.kafka.external.ca.existingSecret }}
{{- .Values.kafka.external.ca.existingSecret }}
{{- end }}
{{- end }}

{{/* Key of the CA certificate in that Secret. */}}
{{- define "tickpipe.kafka.caKey" -}}
{{- if .Values.kafka.enabled }}ca.crt{{ else }}{{ .Values.kafka.external.ca.key }}{{ end }}
{{- end }}

{{/*
Kafka connection environment of one service: (dict "ctx" $ "service" "consumer" "valuesKey" "consumer").
Credentials always come from Secrets: the KafkaUser Secret Strimzi's User Operator makes
(key "password"), or the external cluster's Secret.
*/}}
{{- define "tickpipe.kafka.env" -}}
{{- $ := .ctx }}
{{- $kafka := $.Values.kafka }}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ include "tickpipe.kafka.bootstrapServers" $ | quote }}
- name: KAFKA_TOPIC
  value: {{ $kafka.topics.ticks.name | quote }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ include "tickpipe.kafka.securityProtocol" $ | quote }}
{{- if $kafka.enabled }}
- name: KAFKA_SASL_MECHANISM
  value: SCRAM-SHA-512
- name: KAFKA_SASL_USERNAME
  value: {{ include "tickpipe.kafka.userName" (dict "ctx" $ "service" .service) | quote }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "tickpipe.kafka.userName" (dict "ctx" $ "service" .service) }}
      key: password
{{- else if hasPrefix "SASL" $kafka.external.securityProtocol }}
{{- $secret := default $kafka.external.sasl.existingSecret (get $kafka.external.sasl.secrets .valuesKey) }}
{{- if not $secret }}
{{- fail (printf "kafka.external.sasl.existingSecret (or kafka.external.sasl.secrets.%s) is required with kafka.external.securityProtocol=%s" .valuesKey $kafka.external.securityProtocol) }}
{{- end }}
- name: KAFKA_SASL_MECHANISM
  value: {{ $kafka.external.saslMechanism | quote }}
- name: KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $kafka.external.sasl.usernameKey }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $kafka.external.sasl.passwordKey }}
{{- end }}
{{- if include "tickpipe.kafka.caSecret" $ }}
- name: KAFKA_SSL_CA_LOCATION
  value: {{ printf "%s/%s" (include "tickpipe.kafka.caDir" $) (include "tickpipe.kafka.caKey" $) | quote }}
{{- end }}
{{- end }}

{{/* Volume and mount of the Kafka CA certificate (nothing when there is no CA to mount). */}}
{{- define "tickpipe.kafka.caVolume" -}}
{{- if include "tickpipe.kafka.caSecret" . }}
- name: kafka-ca
  secret:
    secretName: {{ include "tickpipe.kafka.caSecret" . }}
    items:
      - key: {{ include "tickpipe.kafka.caKey" . }}
        path: {{ include "tickpipe.kafka.caKey" . }}
{{- end }}
{{- end }}

{{- define "tickpipe.kafka.caVolumeMount" -}}
{{- if include "tickpipe.kafka.caSecret" . }}
- name: kafka-ca
  mountPath: {{ include "tickpipe.kafka.caDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
Settings a component's "config" map passes through as environment variables (sorted by
name); LOG_LEVEL defaults to .Values.logLevel. (dict "ctx" $ "config" .Values.consumer.config)
*/}}
{{- define "tickpipe.configEnv" -}}
{{- $config := merge (dict) .config (dict "LOG_LEVEL" .ctx.Values.logLevel "LOG_FORMAT" "json") }}
{{- range $name := keys $config | sortAlpha }}
- name: {{ $name }}
  value: {{ include "tickpipe.scalar" (get $config $name) | quote }}
{{- end }}
{{- end }}

{{/*
A values scalar as text. YAML numbers reach templates as float64, which print as 6.048e+08
when large: whole numbers are printed as integers instead.
*/}}
{{- define "tickpipe.scalar" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) }}{{ int64 . }}{{ else }}{{ toString . }}{{ end }}
{{- end }}

{{/*
Secret and key of the consumer's DATABASE_URL (a libpq DSN): the external database's
Secret, the TimescaleDB Secret given by the user, or the one this chart generates.
*/}}
{{- define "tickpipe.database.secretName" -}}
{{- if .Values.externalDatabase.existingSecret }}
{{- .Values.externalDatabase.existingSecret }}
{{- else if .Values.timescaledb.auth.existingSecret }}
{{- .Values.timescaledb.auth.existingSecret }}
{{- else }}
{{- printf "%s-timescaledb" (include "tickpipe.fullname" .) }}
{{- end }}
{{- end }}

{{- define "tickpipe.database.urlKey" -}}
{{- if .Values.externalDatabase.existingSecret }}
{{- .Values.externalDatabase.databaseUrlKey }}
{{- else }}
{{- .Values.timescaledb.auth.databaseUrlKey }}
{{- end }}
{{- end }}

{{/* Pod-level fields shared by the tickpipe Deployments: (dict "ctx" $ "values" .Values.consumer). */}}
{{- define "tickpipe.podScheduling" -}}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
HTTP probes of a service on its named port: (dict "values" .Values.consumer "port" "http-metrics").
Startup and liveness use /healthz (the process is up), readiness /readyz (it can do its job).
*/}}
{{- define "tickpipe.httpProbes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  {{- toYaml .values.startupProbe | nindent 2 }}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  {{- toYaml .values.livenessProbe | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ .port }}
  {{- toYaml .values.readinessProbe | nindent 2 }}
{{- end }}

{{/* Fail early on combinations that cannot work. */}}
{{- define "tickpipe.validate" -}}
{{- if and (not .Values.marketSim.enabled) (not .Values.alpaca.existingSecret) }}
{{- fail "no market data feed: set alpaca.existingSecret (live Alpaca data) or marketSim.enabled=true" }}
{{- end }}
{{- if and .Values.timescaledb.enabled .Values.externalDatabase.existingSecret }}
{{- fail "externalDatabase.existingSecret is set: also set timescaledb.enabled=false (one database only)" }}
{{- end }}
{{- if and (not .Values.timescaledb.enabled) (not .Values.externalDatabase.existingSecret) }}
{{- fail "timescaledb.enabled=false needs externalDatabase.existingSecret (a Secret with the consumer's DSN)" }}
{{- end }}
{{- if and (not .Values.kafka.enabled) (not .Values.kafka.external.bootstrapServers) }}
{{- fail "kafka.enabled=false needs kafka.external.bootstrapServers" }}
{{- end }}
{{- end }}
