{{/* Names and labels shared by every template. */}}

{{- define "portico.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portico.fullname" -}}
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

{{/* "<fullname>-<component>"; call with (list $ "component"). */}}
{{- define "portico.componentName" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "portico.fullname" $root | trunc 50 | trimSuffix "-") (index . 1) }}
{{- end }}

{{- define "portico.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "portico.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portico
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of a component; call with (list $ "component"). */}}
{{- define "portico.selectorLabels" -}}
{{- $root := index . 0 }}
app.kubernetes.io/name: {{ include "portico.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Every label of a component; call with (list $ "component"). */}}
{{- define "portico.componentLabels" -}}
{{ include "portico.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "portico.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "portico.nodeImage" -}}
{{- printf "%s:%s" .Values.nodeImage.repository (default .Chart.AppVersion .Values.nodeImage.tag) }}
{{- end }}

{{- define "portico.dnsServiceName" -}}
{{- default (include "portico.componentName" (list . "dns")) .Values.dns.service.name }}
{{- end }}

{{- define "portico.webhookServiceName" -}}
{{- include "portico.componentName" (list . "webhook") }}
{{- end }}

{{- define "portico.webhookSecretName" -}}
{{- include "portico.componentName" (list . "webhook-tls") }}
{{- end }}

{{/* Environment every component shares: logging and the API server address. */}}
{{- define "portico.commonEnv" -}}
- name: PORTICO_LOG
  value: {{ .Values.logLevel | quote }}
- name: PORTICO_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- if .Values.kubernetesServiceHost }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.kubernetesServiceHost | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ default "443" .Values.kubernetesServicePort | quote }}
{{- end }}
- name: PORTICO_SERVICE_CLUSTER_IP_RANGE
  value: {{ .Values.serviceClusterIPRange | quote }}
- name: PORTICO_CLUSTER_CIDR
  value: {{ .Values.clusterCIDR | quote }}
{{- end }}

{{/* A restricted container security context (controller and DNS). */}}
{{- define "portico.restrictedSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Probes on the HTTP health port named "http-metrics". */}}
{{- define "portico.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: http-metrics
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: http-metrics
  periodSeconds: 5
  failureThreshold: 2
startupProbe:
  httpGet:
    path: /healthz
    port: http-metrics
  periodSeconds: 2
  failureThreshold: 60
{{- end }}

{{/* Fails the render when values that each pass values.schema.json cannot
work together. */}}
{{- define "portico.validate" -}}
{{- if and .Values.controller.webhook.enabled (not .Values.controller.enabled) }}
{{- fail "controller.webhook.enabled needs controller.enabled (or set controller.webhook.enabled=false)" }}
{{- end }}
{{- if and .Values.certManager.enabled (not .Values.controller.webhook.enabled) }}
{{- fail "certManager.enabled only serves the webhook: set controller.webhook.enabled=true or certManager.enabled=false" }}
{{- end }}
{{- end }}
