{{/* The image reference: repository@digest, else repository:tag. */}}
{{- define "buildguard.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The webhook's labels and selector. */}}
{{- define "buildguard.webhookLabels" -}}
app.kubernetes.io/component: webhook
app.kubernetes.io/name: buildguard
{{- end -}}

{{/* The node agent's labels and selector. */}}
{{- define "buildguard.agentLabels" -}}
app.kubernetes.io/component: node-agent
app.kubernetes.io/name: buildguard
{{- end -}}

{{/* The service's DNS names, in the serving certificate. */}}
{{- define "buildguard.dnsNames" -}}
buildguard.{{ .Release.Namespace }}.svc,buildguard.{{ .Release.Namespace }}.svc.cluster.local
{{- end -}}

{{/* The namespaces the webhooks never see, as a JSON list. */}}
{{- define "buildguard.excluded" -}}
{{- $ns := list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace -}}
{{- if .Values.nodeAgent.enabled -}}
{{- $ns = append $ns .Values.nodeAgent.namespace -}}
{{- end -}}
{{- range .Values.webhook.excludedNamespaces -}}
{{- $ns = append $ns . -}}
{{- end -}}
{{- $ns | uniq | toJson -}}
{{- end -}}

{{/* The user buildguard's own requests come as. */}}
{{- define "buildguard.user" -}}
system:serviceaccount:{{ .Release.Namespace }}:buildguard
{{- end -}}
