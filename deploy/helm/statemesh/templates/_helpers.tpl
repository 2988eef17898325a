{{- define "statemesh.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}

{{- define "statemesh.labels" -}}
app.kubernetes.io/name: statemesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The agent's container, shared by nodes and gateways. */}}
{{- define "statemesh.agentContainer" -}}
- name: agent
  image: {{ include "statemesh.image" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  args:
    - agent
    - --name=$(STATEMESH_NODE_NAME)
    - --controller={{ required "agent.controller (the controller URL) is required" .root.Values.agent.controller }}
    - --role={{ .role }}
    - --data-dir={{ .root.Values.agent.dataDir }}
    - --wireguard={{ .root.Values.agent.wireguard }}
    - --firewall={{ .root.Values.agent.firewall }}
    - --metrics-listen=127.0.0.1:{{ .root.Values.agent.metricsPort }}
    - --tpm={{ default "none" .root.Values.agent.tpm }}
    {{- if and (eq .role "gateway") .root.Values.gateway.publicEndpointFromNodeIP }}
    {{- /* The host IP alone: the agent adds --listen-port, and brackets an
           IPv6 address itself (HOST:PORT would be ambiguous for IPv6). */}}
    - --public-endpoint=$(STATEMESH_HOST_IP)
    {{- end }}
    {{- range .root.Values.agent.underlayAllow }}
    - --underlay-allow={{ . }}
    {{- end }}
    {{- /* One flag per label (the agent merges repeated --labels): no
           separator to get wrong. */}}
    {{- range $k, $v := .root.Values.agent.labels }}
    - --labels={{ $k }}={{ $v }}
    {{- end }}
    {{- if .root.Values.agent.controllerAttestation.configMap }}
    - --controller-attestation=/etc/statemesh/controller-attestation/mesh.yaml
    - --controller-attestation-interval={{ .root.Values.agent.controllerAttestation.interval }}
    {{- end }}
  env:
    - name: STATEMESH_NODE_NAME
      valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
    - name: STATEMESH_HOST_IP
      valueFrom: {fieldRef: {fieldPath: status.hostIP}}
    - name: STATEMESH_TOKEN
      valueFrom: {secretKeyRef: {name: {{ .tokenSecret }}, key: token}}
  securityContext:
    # What WireGuard, routes and nftables need, and no more: no privileged
    # mode, no other capabilities.
    privileged: false
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: [ALL]
      add: [NET_ADMIN, NET_RAW]
  volumeMounts:
    - {name: data, mountPath: {{ .root.Values.agent.dataDir }}}
    - {name: tun, mountPath: /dev/net/tun}
    - {name: run-wireguard, mountPath: /var/run/wireguard}
    {{- if .root.Values.agent.tpm }}
    - {name: tpm, mountPath: {{ .root.Values.agent.tpm }}}
    {{- end }}
    {{- if .root.Values.agent.controllerAttestation.configMap }}
    - {name: controller-attestation, mountPath: /etc/statemesh/controller-attestation, readOnly: true}
    {{- end }}
  resources: {{- toYaml .root.Values.agent.resources | nindent 4 }}
{{- end -}}

{{- define "statemesh.agentVolumes" -}}
- name: data
  hostPath: {path: {{ .Values.agent.dataDir }}, type: DirectoryOrCreate}
- name: tun
  hostPath: {path: /dev/net/tun, type: CharDevice}
- name: run-wireguard
  hostPath: {path: /var/run/wireguard, type: DirectoryOrCreate}
{{- if .Values.agent.tpm }}
- name: tpm
  hostPath: {path: {{ .Values.agent.tpm }}, type: CharDevice}
{{- end }}
{{- if .Values.agent.controllerAttestation.configMap }}
- name: controller-attestation
  configMap: {name: {{ .Values.agent.controllerAttestation.configMap }}, items: [{key: mesh.yaml, path: mesh.yaml}]}
{{- end }}
{{- end -}}
