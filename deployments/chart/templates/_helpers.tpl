{{/* Names: "kaiflow" for a release named kaiflow (so the default render matches deployments/*.yaml),
else RELEASE-kaiflow. */}}
{{- define "kaiflow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kaiflow.controllerName" -}}
{{- printf "%s-controller" (include "kaiflow.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kaiflow.workerName" -}}
{{- printf "%s-worker" (include "kaiflow.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kaiflow.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kaiflow.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Namespaces the flow runs get a Role in. */}}
{{- define "kaiflow.workspaceNamespaces" -}}
{{- $ns := .Values.workspaceNamespaces | default (list .Release.Namespace) -}}
{{- toJson (uniq $ns) -}}
{{- end -}}

{{/* PREFECT_API_URL, and PREFECT_API_KEY only as a reference to an existing Secret. */}}
{{- define "kaiflow.prefectEnv" -}}
- name: PREFECT_API_URL
  value: {{ include "kaiflow.prefectApiUrl" . | quote }}
{{- with .Values.prefect.apiKeySecret }}
{{- if .name }}
- name: PREFECT_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The KAIFLOW_* settings a flow run needs on this cluster (workspace/settings.py). */}}
{{- define "kaiflow.settingsEnv" -}}
{{- $p := .Values.provisioner -}}
KAIFLOW_PLATFORM: {{ ternary "aks" "kubernetes" (eq $p.type "aks") | quote }}
KAIFLOW_PROVISIONER: {{ $p.type | quote }}
KAIFLOW_IMAGE: {{ include "kaiflow.image" . | quote }}
{{- if .Values.gpuQuota.limits }}
KAIFLOW_GPU_QUOTA: {{ include "kaiflow.gpuQuota" . | quote }}
{{- end }}
KAIFLOW_GPU_DEFAULT_LIMIT: {{ .Values.gpuQuota.defaultLimit | quote }}
{{- if eq $p.type "aks" }}
KAIFLOW_AZURE_SUBSCRIPTION_ID: {{ required "provisioner.aks.subscriptionId is required with provisioner.type=aks" $p.aks.subscriptionId | quote }}
KAIFLOW_AZURE_RESOURCE_GROUP: {{ required "provisioner.aks.resourceGroup is required with provisioner.type=aks" $p.aks.resourceGroup | quote }}
KAIFLOW_AZURE_CLUSTER: {{ required "provisioner.aks.cluster is required with provisioner.type=aks" $p.aks.cluster | quote }}
KAIFLOW_AZURE_CREDENTIAL: {{ $p.aks.credential | quote }}
KAIFLOW_AKS_OS_SKU: {{ $p.aks.osSku | quote }}
KAIFLOW_AKS_SPOT: {{ $p.aks.spot | quote }}
{{- end }}
{{- end -}}

{{/* gpuQuota.limits as KAIFLOW_GPU_QUOTA: "SKU=N,SKU=N", sorted. */}}
{{- define "kaiflow.gpuQuota" -}}
{{- $parts := list -}}
{{- range $sku, $n := .Values.gpuQuota.limits -}}
{{- $parts = append $parts (printf "%s=%v" $sku $n) -}}
{{- end -}}
{{- join "," $parts -}}
{{- end -}}

{{/* settingsEnv as a container env list */}}
{{- define "kaiflow.settingsEnvList" -}}
{{- range $k, $v := (include "kaiflow.settingsEnv" . | fromYaml) }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end -}}

{{- define "kaiflow.prefectApiUrl" -}}
{{- .Values.prefect.apiUrl | default (printf "http://prefect-server.%s.svc.cluster.local:4200/api" .Release.Namespace) -}}
{{- end -}}

{{/* The controller's objects are named and labelled app.kubernetes.io/name: <release>-controller, as in deployments/controller.yaml. */}}
{{- define "kaiflow.controllerLabels" -}}
{{- $l := include "kaiflow.labels" . | fromYaml -}}
{{- $_ := set $l "app.kubernetes.io/name" (include "kaiflow.controllerName" .) -}}
{{- $_ := set $l "app.kubernetes.io/component" "controller" -}}
{{- toYaml $l -}}
{{- end -}}

{{/* The controller's rules on Workspaces (a ClusterRole, or a Role per watched namespace). */}}
{{- define "kaiflow.controllerWorkspaceRules" -}}
- apiGroups: ["kaito.sh"]
  resources: ["workspaces"]
  verbs: ["get", "list", "watch", "patch", "create", "delete"]  # patch: the finalizer; create/delete: InferenceSet replicas
- apiGroups: ["kaito.sh"]
  resources: ["workspaces/status"]
  verbs: ["get", "patch"]  # observedGeneration, and the condition that refuses an immutable-field change
- apiGroups: ["kaito.sh"]
  resources: ["inferencesets"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["kaito.sh"]
  resources: ["inferencesets/status"]
  verbs: ["get", "patch"]  # replicas, readyReplicas, selector (the scale subresource's), Ready
{{- end -}}
