{{/* Names and labels shared by the chart's templates. */}}
{{- define "ptf.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ptf.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ptf.labels" -}}
{{ include "ptf.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The plugin configuration (JSON), from the values. */}}
{{- define "ptf.pluginConfig" -}}
{{- $i := .Values.identity -}}
{{- $identity := dict "source" "userinfo" "cluster" "idp" "authority" $i.idp.host "path" $i.idp.userinfoPath "timeout_ms" $i.timeoutMs "claim" $i.claim "cache_ttl_s" $i.cacheTtlS "negative_cache_ttl_s" $i.negativeCacheTtlS "cache_max_entries" $i.cacheMaxEntries -}}
{{- $config := dict "tenant_label" .Values.tenantLabel "identity" $identity "on_conflict" .Values.onConflict "dialect" .Values.dialect "victoriametrics_extra_label" .Values.victoriametricsExtraLabel "max_body_bytes" .Values.maxBodyBytes -}}
{{- toPrettyJson $config -}}
{{- end -}}

{{/* One STRICT_DNS/LOGICAL_DNS cluster: name, host, port, tls (bool), dnsType. */}}
{{- define "ptf.cluster" -}}
- name: {{ .name }}
  type: {{ .dnsType }}
  connect_timeout: 2s
  load_assignment:
    cluster_name: {{ .name }}
    endpoints:
    - lb_endpoints:
      - endpoint:
          address:
            socket_address: { address: {{ .host | quote }}, port_value: {{ .port }} }
  {{- if .tls }}
  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
      sni: {{ .host | quote }}
      common_tls_context:
        validation_context:
          trusted_ca: { filename: /etc/ssl/certs/ca-certificates.crt }
          match_typed_subject_alt_names:
          - san_type: DNS
            matcher: { exact: {{ .host | quote }} }
  {{- end }}
{{- end -}}
