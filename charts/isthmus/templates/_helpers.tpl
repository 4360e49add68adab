{{/*
The namespace every mesh object lives in. The binaries find the mesh's
ConfigMaps and Secrets there by name (internal/meshconfig), so the release
must be installed into it.
*/}}
{{- define "isthmus.namespace" -}}
{{- if ne .Release.Namespace "isthmus-system" -}}
{{- fail (printf "install Isthmus into the namespace isthmus-system (helm install ... --namespace isthmus-system), not %q: the mesh apiserver, the agents and the isthmus CLI find the mesh's ConfigMaps and Secrets there" .Release.Namespace) -}}
{{- end -}}
{{- .Release.Namespace -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "isthmus.labels" -}}
app.kubernetes.io/part-of: isthmus
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component; the e2e suite finds pods by name. */}}
{{- define "isthmus.selectorLabels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "isthmus.componentLabels" -}}
{{ include "isthmus.labels" .root }}
app.kubernetes.io/name: {{ .component }}
{{- end -}}

{{- define "isthmus.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString .Values.image.tag) -}}
{{- end -}}

{{/*
Environment of the cluster's identity, for "--cluster-name=$(ISTHMUS_CLUSTER_NAME)"
and the like: the values when set, else ConfigMap isthmus-config, which
`isthmus enable` writes (internal/meshconfig names its keys).
*/}}
{{- define "isthmus.clusterEnv" -}}
{{- $c := .Values.cluster -}}
{{- if and $c.name $c.id }}
- name: ISTHMUS_CLUSTER_NAME
  value: {{ $c.name | quote }}
- name: ISTHMUS_CLUSTER_ID
  value: {{ $c.id | toString | quote }}
- name: ISTHMUS_MAX_CONNECTED_CLUSTERS
  value: {{ $c.maxConnectedClusters | default 255 | toString | quote }}
{{- else if or $c.name $c.id $c.maxConnectedClusters }}
{{- fail "set cluster.name and cluster.id together (and cluster.maxConnectedClusters, default 255), or none of them to take all three from ConfigMap isthmus-system/isthmus-config, which `isthmus enable` writes" }}
{{- else }}
{{- range $env, $key := dict "ISTHMUS_CLUSTER_NAME" "cluster-name" "ISTHMUS_CLUSTER_ID" "cluster-id" "ISTHMUS_MAX_CONNECTED_CLUSTERS" "max-connected-clusters" }}
- name: {{ $env }}
  valueFrom:
    configMapKeyRef:
      name: isthmus-config
      key: {{ $key }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "isthmus.clusterArgs" -}}
- --cluster-name=$(ISTHMUS_CLUSTER_NAME)
- --cluster-id=$(ISTHMUS_CLUSTER_ID)
- --max-connected-clusters=$(ISTHMUS_MAX_CONNECTED_CLUSTERS)
{{- end -}}

{{/*
The names the mesh apiserver's server certificate must be valid for: the
in-cluster Service, loopback (the apiserver dials its own etcd there) and
the hosts of the advertised endpoints; as internal/meshops issues it.
Returns a dict with lists "dns" and "ips", as JSON.
*/}}
{{- define "isthmus.serverNames" -}}
{{- $dns := list "isthmus-apiserver" "isthmus-apiserver.isthmus-system" "isthmus-apiserver.isthmus-system.svc" "isthmus-apiserver.isthmus-system.svc.cluster.local" "localhost" -}}
{{- $ips := list "127.0.0.1" "::1" -}}
{{- $hosts := list -}}
{{- range .Values.apiserver.advertiseEndpoints -}}
{{- $hosts = append $hosts (urlParse .).hostname -}}
{{- end -}}
{{- range concat $hosts .Values.certManager.extraServerNames -}}
{{- if regexMatch "^[0-9.]+$|:" . -}}
{{- if not (has . $ips) }}{{ $ips = append $ips . }}{{ end -}}
{{- else -}}
{{- if not (has . $dns) }}{{ $dns = append $dns . }}{{ end -}}
{{- end -}}
{{- end -}}
{{- dict "dns" $dns "ips" $ips | toJson -}}
{{- end -}}

{{/*
Seconds in a duration written as hours, minutes and seconds ("8760h",
"90m", "1h30m"; values.schema.json admits only these), for arithmetic.
*/}}
{{- define "isthmus.durationSeconds" -}}
{{- $total := 0 -}}
{{- range regexFindAll "[0-9]+[hms]" . -1 -}}
{{- $n := trimSuffix "h" (trimSuffix "m" (trimSuffix "s" .)) | int64 -}}
{{- if hasSuffix "h" . }}{{ $n = mul $n 3600 }}{{ else if hasSuffix "m" . }}{{ $n = mul $n 60 }}{{ end -}}
{{- $total = add $total $n -}}
{{- end -}}
{{- $total -}}
{{- end -}}
