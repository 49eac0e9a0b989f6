{{/* Names and labels, the conventions of `helm create`. */}}
{{- define "iama.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "iama.fullname" -}}
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

{{- define "iama.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "iama.selectorLabels" -}}
app.kubernetes.io/name: {{ include "iama.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "iama.labels" -}}
helm.sh/chart: {{ include "iama.chart" . }}
{{ include "iama.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The Secret holding the API keys: the user's, or the chart's when it lists keys. */}}
{{- define "iama.apiKeysSecret" -}}
{{- if .Values.apiKeys.existingSecret }}{{ .Values.apiKeys.existingSecret }}{{ else }}{{ include "iama.fullname" . }}-api-keys{{ end }}
{{- end }}

{{- define "iama.hasApiKeys" -}}
{{- if or .Values.apiKeys.existingSecret .Values.apiKeys.keys }}true{{ end }}
{{- end }}

{{- define "iama.keysSecret" -}}
{{- if .Values.tenants.keysFile.existingSecret }}{{ .Values.tenants.keysFile.existingSecret }}{{ else }}{{ include "iama.fullname" . }}-keys{{ end }}
{{- end }}

{{- define "iama.hasKeysFile" -}}
{{- if or .Values.tenants.keysFile.existingSecret .Values.tenants.keysFile.keys }}true{{ end }}
{{- end }}

{{/* A URL setting from a Secret's key `url` or a plain value: IAMA_<NAME>. */}}
{{- define "iama.urlEnv" -}}
{{- if .from.existingSecret }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .from.existingSecret }}
      key: url
{{- else if .from.url }}
- name: {{ .name }}
  value: {{ .from.url | quote }}
{{- end }}
{{- end }}

{{/* The keys file's volume and its mount, for every pod that runs iama_server. */}}
{{- define "iama.keysVolume" -}}
{{- if include "iama.hasKeysFile" . }}
- name: keys
  secret:
    secretName: {{ include "iama.keysSecret" . }}
{{- end }}
{{- end }}

{{- define "iama.keysMount" -}}
{{- if include "iama.hasKeysFile" . }}
- name: keys
  mountPath: /etc/iama/keys
  readOnly: true
{{- end }}
{{- end }}

{{- define "iama.modelClaim" -}}
{{- if .Values.model.volume.existingClaim }}{{ .Values.model.volume.existingClaim }}{{ else }}{{ include "iama.fullname" . }}-models{{ end }}
{{- end }}

{{- define "iama.cacheClaim" -}}
{{- if .Values.cache.existingClaim }}{{ .Values.cache.existingClaim }}{{ else }}{{ include "iama.fullname" . }}-cache{{ end }}
{{- end }}

{{/* iama serve's settings as IAMA_* variables (server/iama_server/settings.py). */}}
{{- define "iama.env" -}}
- name: IAMA_HOST
  value: "0.0.0.0"
- name: IAMA_PORT
  value: {{ .Values.server.port | quote }}
- name: IAMA_MODEL
  value: {{ .Values.model.name | quote }}
{{- with .Values.model.servedModelName }}
- name: IAMA_SERVED_MODEL_NAME
  value: {{ . | quote }}
{{- end }}
- name: IAMA_MAX_BUDGET
  value: {{ .Values.server.maxBudget | quote }}
- name: IAMA_DEFAULT_BUDGET
  value: {{ .Values.server.defaultBudget | quote }}
- name: IAMA_MAX_TOKENS
  value: {{ .Values.server.maxTokens | quote }}
- name: IAMA_MAX_CONCURRENT_REQUESTS
  value: {{ .Values.server.maxConcurrentRequests | quote }}
- name: IAMA_MAX_QUEUED_REQUESTS
  value: {{ .Values.server.maxQueuedRequests | quote }}
- name: IAMA_REQUEST_TIMEOUT_S
  value: {{ .Values.server.requestTimeoutS | quote }}
- name: IAMA_GRACEFUL_SHUTDOWN_S
  value: {{ .Values.server.gracefulShutdownS | quote }}
- name: IAMA_SCORE_PROCESSES
  value: {{ .Values.server.scoreProcesses | quote }}
- name: IAMA_PLAYGROUND
  value: {{ .Values.server.playground | quote }}
- name: IAMA_TENSOR_PARALLEL_SIZE
  value: {{ .Values.server.tensorParallelSize | quote }}
- name: IAMA_GPU_MEMORY_UTILIZATION
  value: {{ .Values.server.gpuMemoryUtilization | quote }}
- name: VLLM_CPU_KVCACHE_SPACE
  value: {{ .Values.server.cpuKvCacheGb | quote }}
- name: IAMA_CACHE_DIR
  value: /cache
- name: HF_HOME
  value: /cache/hf
{{- if include "iama.hasApiKeys" . }}
- name: IAMA_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "iama.apiKeysSecret" . }}
      key: api-keys
{{- end }}
{{- if include "iama.hasKeysFile" . }}
- name: IAMA_KEYS_FILE
  value: /etc/iama/keys/keys.yaml
{{- end }}
{{- include "iama.urlEnv" (dict "name" "IAMA_REDIS_URL" "from" .Values.tenants.redis) }}
{{- if or .Values.tenants.usage.existingSecret .Values.tenants.usage.url }}
{{- include "iama.urlEnv" (dict "name" "IAMA_USAGE_DB" "from" .Values.tenants.usage) }}
{{- else }}
- name: IAMA_USAGE_DB
  value: sqlite:////cache/iama_usage.sqlite3
{{- end }}
{{- with .Values.adapters }}
- name: IAMA_ADAPTERS
  value: {{ toJson . | quote }}
{{- end }}
{{- with .Values.model.hfTokenSecret }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: token
{{- end }}
{{- with .Values.server.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
