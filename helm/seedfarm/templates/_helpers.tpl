{{- define "seedfarm.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "seedfarm.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "seedfarm.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The Secret and key holding Redis' password. */}}
{{- define "seedfarm.redisSecret" -}}
{{- if .Values.redis.auth.existingSecret -}}{{ .Values.redis.auth.existingSecret }}{{- else -}}{{ include "seedfarm.fullname" . }}{{- end -}}
{{- end -}}
{{- define "seedfarm.redisSecretKey" -}}
{{- if .Values.redis.auth.existingSecret -}}{{ .Values.redis.auth.existingSecretKey }}{{- else -}}redis-password{{- end -}}
{{- end -}}

{{/* Environment every farm container gets: the broker (from the Secret) and the store. */}}
{{- define "seedfarm.farmEnv" -}}
{{- if .Values.redis.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "seedfarm.redisSecret" . }}
      key: {{ include "seedfarm.redisSecretKey" . }}
- name: FARM_BROKER_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s-redis:6379/0" (include "seedfarm.fullname" .) | quote }}
{{- else }}
- name: FARM_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "seedfarm.fullname" . }}
      key: broker-url
{{- end }}
- name: FARM_STORE
  value: {{ required "store.url is required: an s3:// URL every pod reaches, or /outputs with store.volume" .Values.store.url | quote }}
{{- if or .Values.store.s3.existingSecret .Values.store.s3.accessKeyId }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.store.s3.existingSecret | default (include "seedfarm.fullname" .) }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.store.s3.existingSecret | default (include "seedfarm.fullname" .) }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
{{- end -}}
