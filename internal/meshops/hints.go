package meshops

import (
	"fmt"
	"strings"
)

// hintRule maps error text an agent reports to what to do about it.
type hintRule struct {
	// any of these, lower case, in the message
	match []string
	hint  func(h hintContext) string
}

// hintContext is what a hint may name.
type hintContext struct {
	// Context is the kubeconfig context status was run on.
	Context string
	// Cluster is this cluster's name; Remote the cluster the error is
	// about.
	Cluster, Remote string
}

func (h hintContext) connect() string {
	return fmt.Sprintf("`isthmus connect --context %s --destination-context <context of %s>`", h.Context, h.Remote)
}

// hintRules are tried in order; the first match wins.
var hintRules = []hintRule{
	{[]string{"duplicate cluster id"}, func(h hintContext) string {
		return "two clusters of the mesh share a cluster ID, and every cluster needs its own: disconnect one of them, enable it again with another --cluster-id, and connect it again"
	}},
	{[]string{"maxconnectedclusters", "max-connected-clusters"}, func(h hintContext) string {
		return "every cluster of a mesh must be enabled with the same --max-connected-clusters"
	}},
	{[]string{"unknown authority"}, func(h hintContext) string {
		return fmt.Sprintf("%s answers with a certificate its clustermesh entry does not trust: its CA changed or the endpoint now leads elsewhere; re-run %s", h.Remote, h.connect())
	}},
	{[]string{"certificate has expired", "certificate is not yet valid"}, func(h hintContext) string {
		return fmt.Sprintf("a certificate is outside its validity: re-run %s for the client certificate, or `isthmus enable` on %s for its server certificate; check the nodes' clocks too", h.connect(), h.Remote)
	}},
	{[]string{"certificate is valid for", "doesn't contain any ip sans", "not valid for"}, func(h hintContext) string {
		return fmt.Sprintf("the server certificate of %s does not name the address the agents dial: run `isthmus enable` on %s again with --server-san <that address>", h.Remote, h.Remote)
	}},
	{[]string{"permission denied", "user name not found", "authentication failed", "invalid auth", "bad certificate"}, func(h hintContext) string {
		return fmt.Sprintf("the mesh etcd of %s does not accept user remote-%s: check that %q is in ConfigMap isthmus-system/isthmus-remote-readers on %s and that its mesh apiserver runs; re-run %s",
			h.Remote, h.Cluster, h.Cluster, h.Remote, h.connect())
	}},
	{[]string{"cluster-config is missing", "cluster-config deleted", "has not published"}, func(h hintContext) string {
		return fmt.Sprintf("the mesh apiserver of %s has not published its cluster config: check that it runs and that the entry's endpoint is its etcd", h.Remote)
	}},
	{[]string{"no such host"}, func(h hintContext) string {
		return fmt.Sprintf("the endpoint's host name does not resolve on the nodes: publish an address they resolve (`isthmus enable` on %s with --mesh-endpoint), then re-run %s", h.Remote, h.connect())
	}},
	{[]string{"heartbeat"}, func(h hintContext) string {
		return fmt.Sprintf("the mesh apiserver of %s stopped writing its heartbeat: check that it runs and is not overloaded", h.Remote)
	}},
	{[]string{"connection refused", "no route to host", "i/o timeout", "deadline exceeded", "unavailable", "connection reset", "network is unreachable"}, func(h hintContext) string {
		return fmt.Sprintf("the nodes cannot reach the mesh endpoint of %s: check the endpoint in its isthmus-config, that its mesh apiserver runs and is exposed, and firewalls between this cluster's nodes and it", h.Remote)
	}},
	{[]string{"isthmus connect"}, func(h hintContext) string {
		return "re-run " + h.connect()
	}},
}

// HintFor returns what to do about an error message an agent reports for
// remote cluster remote, or "" when it is not one this package knows.
func HintFor(message, context, cluster, remote string) string {
	m := strings.ToLower(message)
	h := hintContext{Context: context, Cluster: cluster, Remote: remote}
	for _, r := range hintRules {
		for _, s := range r.match {
			if strings.Contains(m, s) {
				return r.hint(h)
			}
		}
	}
	return ""
}
