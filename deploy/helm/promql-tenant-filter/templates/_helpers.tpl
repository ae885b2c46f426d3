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

{{/* The deployment form, checked: gateway or sidecar. */}}
{{- define "ptf.mode" -}}
{{- if not (has .Values.mode (list "gateway" "sidecar")) -}}
{{- fail (printf "mode: expected \"gateway\" or \"sidecar\", got %q" .Values.mode) -}}
{{- end -}}
{{- .Values.mode -}}
{{- end -}}

{{/* The pod-wide security context: every container runs as Envoy's unprivileged user. */}}
{{- define "ptf.podSecurityContext" -}}
automountServiceAccountToken: false
securityContext:
  runAsNonRoot: true
  runAsUser: 101
  runAsGroup: 101
  {{- if eq (include "ptf.mode" .) "sidecar" }}
  # The storage volume is written by VictoriaMetrics as this group.
  fsGroup: 101
  {{- end }}
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/* A container's own security context: no privileges, read-only root. */}}
{{- define "ptf.containerSecurityContext" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: { drop: ["ALL"] }
{{- end -}}

{{/* The init container that copies the module into the pod (the init image of `make oci`). */}}
{{- define "ptf.wasmInitContainer" -}}
- name: wasm
  image: {{ .Values.image.wasmInit | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["cp", "/plugin.wasm", "/wasm/plugin.wasm"]
  volumeMounts:
    - name: wasm
      mountPath: /wasm
  resources:
    requests: { cpu: 10m, memory: 16Mi }
    limits: { memory: 32Mi }
  {{- include "ptf.containerSecurityContext" . | nindent 2 }}
{{- end -}}

{{/* Envoy with the filter: the ConfigMap's config, the module from the init container. */}}
{{- define "ptf.envoyContainer" -}}
- name: envoy
  image: {{ .Values.image.envoy | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["envoy", "-c", "/etc/envoy/config/envoy.yaml", "--concurrency", {{ .Values.concurrency | quote }}, "--log-level", "info"]
  ports:
    - name: http
      containerPort: 8080
    {{- if eq (include "ptf.mode" .) "sidecar" }}
    - name: ingest
      containerPort: {{ .Values.sidecar.ingest.port }}
    {{- end }}
    - name: admin
      containerPort: 9901
  volumeMounts:
    - name: config
      mountPath: /etc/envoy/config
      readOnly: true
    - name: wasm
      mountPath: /etc/envoy/wasm
      readOnly: true
    - name: tmp
      mountPath: /tmp
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  readinessProbe:
    httpGet: { path: /ready, port: admin }
    periodSeconds: 5
    failureThreshold: 2
  livenessProbe:
    httpGet: { path: /ready, port: admin }
    initialDelaySeconds: 15
    periodSeconds: 10
    failureThreshold: 3
  {{- include "ptf.containerSecurityContext" . | nindent 2 }}
{{- end -}}

{{/* The volumes Envoy's container and the init container use. */}}
{{- define "ptf.envoyVolumes" -}}
- name: config
  configMap:
    name: {{ include "ptf.fullname" . }}-envoy
- name: wasm
  emptyDir: { sizeLimit: 16Mi }
- name: tmp
  emptyDir: { sizeLimit: 16Mi }
{{- end -}}
