{{/*
Naming, labels and shared values of the refreshbus chart (prometheus-community conventions).
*/}}

{{/* Chart name, or nameOverride. */}}
{{- define "refreshbus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name, followed by the chart name unless the release
name already contains it. Truncated to 42 characters so that every derived name stays valid:
the longest suffix is "-sidecar-injector" (17; DNS label limit 63), and the StatefulSet
"<fullname>-rabbitmq" must leave room for its controller-revision-hash label
("<name>-<10 chars>" <= 63, so a StatefulSet name <= 52).
*/}}
{{- define "refreshbus.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 42 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 42 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 42 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "refreshbus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. helm.sh/chart changes with every chart version: never in a selector. */}}
{{- define "refreshbus.labels" -}}
helm.sh/chart: {{ include "refreshbus.chart" . }}
{{ include "refreshbus.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: refreshbus
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: stable for the life of a release (selectors are immutable). */}}
{{- define "refreshbus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "refreshbus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: call with (dict "ctx" $ "component" "operator"). */}}
{{- define "refreshbus.componentLabels" -}}
{{ include "refreshbus.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "refreshbus.componentSelectorLabels" -}}
{{ include "refreshbus.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* ServiceAccount of the operator. */}}
{{- define "refreshbus.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "refreshbus.fullname" .)) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* ServiceAccount of the embedded RabbitMQ (it needs no API access: token not mounted). */}}
{{- define "refreshbus.rabbitmq.serviceAccountName" -}}
{{- printf "%s-rabbitmq" (include "refreshbus.fullname" .) }}
{{- end }}

{{/* Image reference: call with (dict "image" .Values.x.image "ctx" $). tag defaults to appVersion; a digest wins. */}}
{{- define "refreshbus.image" -}}
{{- $tag := default .ctx.Chart.AppVersion .image.tag | toString }}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{- define "refreshbus.operator.image" -}}
{{- include "refreshbus.image" (dict "image" .Values.operator.image "ctx" .) }}
{{- end }}

{{- define "refreshbus.sidecar.image" -}}
{{- include "refreshbus.image" (dict "image" .Values.sidecar.image "ctx" .) }}
{{- end }}

{{- define "refreshbus.rabbitmq.image" -}}
{{- include "refreshbus.image" (dict "image" .Values.rabbitmq.image "ctx" .) }}
{{- end }}

{{/* Object names. */}}
{{- define "refreshbus.webhook.serviceName" -}}
{{- printf "%s-webhook" (include "refreshbus.fullname" .) }}
{{- end }}

{{- define "refreshbus.webhook.configurationName" -}}
{{- printf "%s-sidecar-injector" (include "refreshbus.fullname" .) }}
{{- end }}

{{- define "refreshbus.webhook.tlsSecretName" -}}
{{- printf "%s-webhook-tls" (include "refreshbus.fullname" .) }}
{{- end }}

{{- define "refreshbus.peeringName" -}}
{{- default (include "refreshbus.fullname" .) .Values.operator.peering.name }}
{{- end }}

{{- define "refreshbus.rabbitmq.fullname" -}}
{{- printf "%s-rabbitmq" (include "refreshbus.fullname" .) }}
{{- end }}

{{/* True (non-empty) when the chart runs its own RabbitMQ. */}}
{{- define "refreshbus.rabbitmq.enabled" -}}
{{- if and .Values.rabbitmq.enabled (not .Values.broker.existingSecret) }}true{{ end }}
{{- end }}

{{/*
The Secret the operator reads its broker URLs from, and its key. Either the user's
broker.existingSecret or the one this chart writes for the embedded RabbitMQ.
*/}}
{{- define "refreshbus.broker.operatorSecretName" -}}
{{- if .Values.broker.existingSecret }}
{{- .Values.broker.existingSecret }}
{{- else }}
{{- printf "%s-broker-operator" (include "refreshbus.fullname" .) }}
{{- end }}
{{- end }}

{{- define "refreshbus.broker.operatorSecretKey" -}}
{{- if .Values.broker.existingSecret }}{{ .Values.broker.existingSecretKeys.operator }}{{ else }}urls{{ end }}
{{- end }}

{{/*
The Secret (in the release namespace) the operator copies -- whole -- into every injected
pod's namespace for the sidecar, and its key. Never the Secret with the operator's own
credentials.
*/}}
{{- define "refreshbus.broker.sidecarSecretName" -}}
{{- if .Values.broker.existingSecret }}
{{- if not .Values.broker.existingSidecarSecret }}
{{- fail "broker.existingSecret needs broker.existingSidecarSecret: a separate Secret with only the sidecars' URLs (the operator copies that whole Secret into every namespace with injected pods, so it must not hold the operator's credentials)" }}
{{- end }}
{{- .Values.broker.existingSidecarSecret }}
{{- else }}
{{- printf "%s-broker-sidecar" (include "refreshbus.fullname" .) }}
{{- end }}
{{- end }}

{{- define "refreshbus.broker.sidecarSecretKey" -}}
{{- if .Values.broker.existingSecret }}{{ .Values.broker.existingSecretKeys.sidecar }}{{ else }}urls{{ end }}
{{- end }}

{{/*
Passwords of the embedded broker's users: reused from the existing Secret on upgrade
(lookup), generated on first install. Memoised on .Release so every template of one render
sees the same generated values. Returns a dict as YAML: operator, sidecar.
*/}}
{{- define "refreshbus.rabbitmq.passwords" -}}
{{- if not (hasKey .Release "refreshbusRabbitmqPasswords") }}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (printf "%s-users" (include "refreshbus.rabbitmq.fullname" .)) }}
{{- $data := dict }}
{{- if $secret }}{{ $data = $secret.data | default dict }}{{ end }}
{{- $out := dict }}
{{- range $user := list "operator" "sidecar" }}
{{- $given := index $.Values.rabbitmq.users $user "password" }}
{{- $key := printf "%s-password" $user }}
{{- if $given }}
{{- $_ := set $out $user $given }}
{{- else if hasKey $data $key }}
{{- $_ := set $out $user (index $data $key | b64dec) }}
{{- else }}
{{- $_ := set $out $user (randAlphaNum 32) }}
{{- end }}
{{- end }}
{{- $_ := set .Release "refreshbusRabbitmqPasswords" $out }}
{{- end }}
{{- toYaml (get .Release "refreshbusRabbitmqPasswords") }}
{{- end }}

{{/* AMQP URL of the embedded broker for one user: (dict "ctx" $ "user" "sidecar"). Fully qualified: sidecars run in other namespaces.
A cluster gives one URL per node (through the headless Service), comma-separated: clients
try them in a random order and fail over at once, without waiting for the Service to drop a
lost node's endpoint. */}}
{{- define "refreshbus.rabbitmq.url" -}}
{{- $ctx := .ctx }}
{{- $passwords := include "refreshbus.rabbitmq.passwords" $ctx | fromYaml }}
{{- $username := index $ctx.Values.rabbitmq.users .user "username" }}
{{- $rabbit := include "refreshbus.rabbitmq.fullname" $ctx }}
{{- $hosts := list (printf "%s.%s.svc:%d" $rabbit $ctx.Release.Namespace (int $ctx.Values.rabbitmq.service.port)) }}
{{- if gt (int $ctx.Values.rabbitmq.replicas) 1 }}
{{- $hosts = list }}
{{- range $i := until (int $ctx.Values.rabbitmq.replicas) }}
{{- $hosts = append $hosts (printf "%s-%d.%s-headless.%s.svc:5672" $rabbit $i $rabbit $ctx.Release.Namespace) }}
{{- end }}
{{- end }}
{{- $urls := list }}
{{- range $host := $hosts }}
{{- $urls = append $urls (printf "amqp://%s:%s@%s/%s" $username (index $passwords $.user) $host (urlquery $ctx.Values.rabbitmq.vhost)) }}
{{- end }}
{{- join "," $urls }}
{{- end }}

{{/* RabbitMQ node name of the embedded broker's pod number .i: (dict "ctx" $ "i" 0). */}}
{{- define "refreshbus.rabbitmq.nodeName" -}}
{{- $rabbit := include "refreshbus.rabbitmq.fullname" .ctx }}
{{- printf "rabbit@%s-%d.%s-headless.%s.svc.cluster.local" $rabbit (int .i) $rabbit .ctx.Release.Namespace }}
{{- end }}

{{/*
Erlang cookie of the embedded cluster's nodes (they only cluster with nodes that know it):
reused from the existing Secret on upgrade, generated on first install.
*/}}
{{- define "refreshbus.rabbitmq.cookie" -}}
{{- if not (hasKey .Release "refreshbusRabbitmqCookie") }}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (printf "%s-erlang-cookie" (include "refreshbus.rabbitmq.fullname" .)) }}
{{- $cookie := randAlphaNum 48 }}
{{- if and $secret $secret.data (hasKey $secret.data "cookie") }}{{ $cookie = index $secret.data "cookie" | b64dec }}{{ end }}
{{- $_ := set .Release "refreshbusRabbitmqCookie" $cookie }}
{{- end }}
{{- get .Release "refreshbusRabbitmqCookie" }}
{{- end }}

{{/* Namespaces the webhook never sends to the injector: the configured ones plus the release's. */}}
{{- define "refreshbus.webhook.excludedNamespaces" -}}
{{- $ns := concat .Values.webhook.excludedNamespaces (list .Release.Namespace) | uniq | sortAlpha }}
{{- join "," $ns }}
{{- end }}

