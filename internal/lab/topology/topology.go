// Package topology computes the shape of a lab from its configuration: the
// names of its clusters, nodes, network namespaces, links, cgroups and bpffs
// directories, and its addressing plan. It is pure: it creates nothing, so
// every other lab package (and the teardown of a lab left over from a crash)
// derives names from one place.
//
// Addressing plan of a lab in slot S (0..255, one per running lab):
//
//	underlay        10.250.S.0/24   one L2 bridge shared by every node
//	host link       10.250.S.1      the root namespace's one link into the lab
//	cluster k API   10.250.S.(10+k) kube-apiserver :6443 and mesh etcd :2379,
//	                                 secondary addresses on the host link
//	node i          10.250.S.(100+i) i counts nodes across clusters from 0
//	cluster k pods  10.k.0.0/16     node n of cluster k: 10.k.n.0/24
//	services        10.96.0.0/16    every cluster (within 10.96.0.0/12)
//
// Pod CIDRs only exist inside node namespaces, so they never collide with the
// machine's own routes; only the underlay /24 is visible in the root
// namespace, and the slot is chosen so that it does not overlap a route there.
//
// It must not import anything outside the standard library.
package topology

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
)

// Limits of one lab.
const (
	MaxClusters        = 64
	MaxNodesPerCluster = 64
	// MaxNodes is the number of node addresses in the underlay /24.
	MaxNodes = 150
	// MaxNameLength keeps cluster names ("<name>-c64") within the mesh's
	// 32-character limit and node names readable.
	MaxNameLength = 24
	// MaxSlot is the highest underlay slot.
	MaxSlot = 255
)

// Ports served on each cluster's API address.
const (
	KubeAPIPort  = 6443
	MeshEtcdPort = 2379
	// WireGuardPort is the port agents use for WireGuard; every node has
	// its own network namespace, so they all share it.
	WireGuardPort = 51871
)

// DefaultName is the lab name when none is given.
const DefaultName = "isthmus"

// Config is what a user chooses about a lab.
type Config struct {
	// Name tells labs apart; every kernel object's name derives from it.
	// Empty means DefaultName.
	Name string
	// Clusters is the number of clusters; 0 means 2.
	Clusters int
	// NodesPerCluster is the number of nodes in each cluster; 0 means 2.
	NodesPerCluster int
}

// WithDefaults returns c with zero fields replaced by their defaults.
func (c Config) WithDefaults() Config {
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.Clusters == 0 {
		c.Clusters = 2
	}
	if c.NodesPerCluster == 0 {
		c.NodesPerCluster = 2
	}
	return c
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// ValidateName reports whether name can name a lab.
func ValidateName(name string) error {
	switch {
	case name == "":
		return errors.New("lab name is empty; choose a name of lower-case letters, digits and '-'")
	case len(name) > MaxNameLength:
		return fmt.Errorf("lab name %q is %d characters long; at most %d are allowed", name, len(name), MaxNameLength)
	case !nameRE.MatchString(name):
		return fmt.Errorf("lab name %q must consist of lower-case letters, digits and '-', and start and end with a letter or digit", name)
	}
	return nil
}

// Validate reports the first problem with c (after defaults), saying what
// to change.
func (c Config) Validate() error {
	c = c.WithDefaults()
	if err := ValidateName(c.Name); err != nil {
		return err
	}
	if c.Clusters < 1 || c.Clusters > MaxClusters {
		return fmt.Errorf("--clusters is %d; it must be between 1 and %d", c.Clusters, MaxClusters)
	}
	if c.NodesPerCluster < 1 || c.NodesPerCluster > MaxNodesPerCluster {
		return fmt.Errorf("--nodes is %d; it must be between 1 and %d", c.NodesPerCluster, MaxNodesPerCluster)
	}
	if n := c.Clusters * c.NodesPerCluster; n > MaxNodes {
		return fmt.Errorf("%d clusters of %d nodes make %d nodes; a lab holds at most %d", c.Clusters, c.NodesPerCluster, n, MaxNodes)
	}
	return nil
}

// Lab is the computed shape of one lab.
type Lab struct {
	Name string
	Slot int
	// Underlay is the subnet of the lab bridge.
	Underlay netip.Prefix
	// HostAddr is the root namespace's address on HostLink.
	HostAddr netip.Addr
	// HostLink is the root namespace's veth into the lab (≤ 15 characters,
	// unique per lab name).
	HostLink string
	// HostLinkPeer is HostLink's other end, a port of the bridge.
	HostLinkPeer string
	// UnderlayNetns holds the bridge.
	UnderlayNetns string
	// Bridge is the bridge's name inside UnderlayNetns.
	Bridge string
	// ServiceCIDR is every cluster's service range.
	ServiceCIDR netip.Prefix
	// CgroupDir is the lab's cgroup, relative to the cgroup2 mount; every
	// lab process lives below it.
	CgroupDir string
	// SupervisorCgroup is the supervisor's cgroup (relative), which its
	// children (control planes, mesh apiservers) inherit.
	SupervisorCgroup string
	// BPFDir is the lab's directory relative to the bpffs mount.
	BPFDir   string
	Clusters []Cluster
}

// Cluster is one cluster of a lab.
type Cluster struct {
	// Name is the cluster's mesh name and its kubeconfig context.
	Name string
	// ID is the mesh cluster ID (1-based index).
	ID uint32
	// APIAddr carries the cluster's kube-apiserver and mesh etcd.
	APIAddr netip.Addr
	PodCIDR netip.Prefix
	Nodes   []Node
}

// KubeAPIURL is the kube-apiserver's URL.
func (c Cluster) KubeAPIURL() string {
	return "https://" + netip.AddrPortFrom(c.APIAddr, KubeAPIPort).String()
}

// MeshEndpoint is the mesh etcd's URL, published for remote clusters.
func (c Cluster) MeshEndpoint() string {
	return "https://" + netip.AddrPortFrom(c.APIAddr, MeshEtcdPort).String()
}

// Node is one node of a cluster.
type Node struct {
	Name    string
	Cluster string
	IP      netip.Addr
	PodCIDR netip.Prefix
	// Netns is the name of the node's network namespace (in /run/netns).
	Netns string
	// BridgePort is the node's veth end on the bridge, inside
	// UnderlayNetns; the node's own end is called NodeLink.
	BridgePort string
	// Cgroup is the node's cgroup relative to the cgroup2 mount.
	Cgroup string
	// BPFDir is the node's bpffs directory relative to the bpffs mount,
	// for its agent's pins.
	BPFDir string
	// WireGuardDevice is unique machine-wide, because userspace WireGuard
	// keeps its UAPI socket in /var/run/wireguard.
	WireGuardDevice string
	// PodNetnsPrefix starts the name of each pod namespace of this node;
	// the pod's UID completes it.
	PodNetnsPrefix string
}

// NodeLink is the name of every node's underlay interface inside its own
// namespace.
const NodeLink = "eth0"

// PodNetns is the name of the network namespace of the pod with uid.
func (n Node) PodNetns(uid string) string { return n.PodNetnsPrefix + uid }

var (
	underlayBase = netip.AddrFrom4([4]byte{10, 250, 0, 0})
	serviceCIDR  = netip.MustParsePrefix("10.96.0.0/16")
)

// UnderlayForSlot is the underlay subnet of slot.
func UnderlayForSlot(slot int) netip.Prefix {
	b := underlayBase.As4()
	b[2] = byte(slot)
	return netip.PrefixFrom(netip.AddrFrom4(b), 24)
}

// NetnsPrefix starts the name of every network namespace of lab name. Lab
// names hold no '.', so the prefix of one lab never matches another's.
func NetnsPrefix(name string) string { return "isl." + name + "." }

// CgroupDir is the cgroup (relative to the cgroup2 mount) holding every
// process of lab name.
func CgroupDir(name string) string { return "isthmus-lab/" + name }

// BPFDir is the bpffs directory (relative to the bpffs mount) of lab name.
func BPFDir(name string) string { return "isthmus-lab/" + name }

// HostLink is the root namespace's link into lab name.
func HostLink(name string) string { return "isl" + shortHash(name, 8) }

// New computes the lab c describes, in underlay slot.
func New(c Config, slot int) (*Lab, error) {
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if slot < 0 || slot > MaxSlot {
		return nil, fmt.Errorf("underlay slot %d is out of range 0..%d", slot, MaxSlot)
	}
	underlay := UnderlayForSlot(slot)
	at := func(host int) netip.Addr {
		b := underlay.Addr().As4()
		b[3] = byte(host)
		return netip.AddrFrom4(b)
	}
	l := &Lab{
		Name:             c.Name,
		Slot:             slot,
		Underlay:         underlay,
		HostAddr:         at(1),
		HostLink:         HostLink(c.Name),
		HostLinkPeer:     "host",
		UnderlayNetns:    NetnsPrefix(c.Name) + "underlay",
		Bridge:           "br0",
		ServiceCIDR:      serviceCIDR,
		CgroupDir:        CgroupDir(c.Name),
		SupervisorCgroup: CgroupDir(c.Name) + "/supervisor",
		BPFDir:           BPFDir(c.Name),
	}
	nodeIndex := 0
	for k := 1; k <= c.Clusters; k++ {
		cl := Cluster{
			Name:    c.Name + "-c" + strconv.Itoa(k),
			ID:      uint32(k),
			APIAddr: at(10 + k),
			PodCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(k), 0, 0}), 16),
		}
		for n := 1; n <= c.NodesPerCluster; n++ {
			name := cl.Name + "-n" + strconv.Itoa(n)
			cl.Nodes = append(cl.Nodes, Node{
				Name:            name,
				Cluster:         cl.Name,
				IP:              at(100 + nodeIndex),
				PodCIDR:         netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(k), byte(n), 0}), 24),
				Netns:           NetnsPrefix(c.Name) + name,
				BridgePort:      "c" + strconv.Itoa(k) + "n" + strconv.Itoa(n),
				Cgroup:          l.CgroupDir + "/" + name,
				BPFDir:          l.BPFDir + "/" + name,
				WireGuardDevice: "iwg" + shortHash(c.Name+"/"+name, 10),
				PodNetnsPrefix:  NetnsPrefix(c.Name) + name + ".",
			})
			nodeIndex++
		}
		l.Clusters = append(l.Clusters, cl)
	}
	return l, nil
}

// Cluster returns the cluster named name (its context name).
func (l *Lab) Cluster(name string) (Cluster, bool) {
	for _, c := range l.Clusters {
		if c.Name == name {
			return c, true
		}
	}
	return Cluster{}, false
}

// Node returns the node named name.
func (l *Lab) Node(name string) (Node, bool) {
	for _, c := range l.Clusters {
		for _, n := range c.Nodes {
			if n.Name == name {
				return n, true
			}
		}
	}
	return Node{}, false
}

// Nodes lists every node of every cluster.
func (l *Lab) Nodes() []Node {
	var all []Node
	for _, c := range l.Clusters {
		all = append(all, c.Nodes...)
	}
	return all
}

// ClusterNames lists the clusters' names in order.
func (l *Lab) ClusterNames() []string {
	names := make([]string, len(l.Clusters))
	for i, c := range l.Clusters {
		names[i] = c.Name
	}
	return names
}

func shortHash(s string, n int) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])[:n]
}
