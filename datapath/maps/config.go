package maps

import (
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
)

// MeshSettings are the mesh-wide knobs the programs read on every packet.
// The zero value is the default: cross-cluster traffic to endpoints no
// policy selects passes, and every flow event is sent.
type MeshSettings struct {
	// DefaultDeny drops cross-cluster traffic of endpoints that no policy
	// selects.
	DefaultDeny bool
	// NoDropEvents and NoNewFlowEvents silence those flow events.
	NoDropEvents    bool
	NoNewFlowEvents bool
	// ClusterID is this cluster's ID.
	ClusterID uint16
	// PolicyRevision changes whenever policy or identities change; flows the
	// connection tracker admitted under another revision are checked again.
	PolicyRevision uint32
}

const (
	flowEventsOffDrops = 1 << 0
	flowEventsOffNew   = 1 << 1
)

func (s MeshSettings) raw() MeshConfig {
	c := MeshConfig{DefaultDeny: b2u(s.DefaultDeny), ClusterID: s.ClusterID, PolicyRevision: s.PolicyRevision}
	if s.NoDropEvents {
		c.FlowEventsOff |= flowEventsOffDrops
	}
	if s.NoNewFlowEvents {
		c.FlowEventsOff |= flowEventsOffNew
	}
	return c
}

func settingsOf(c MeshConfig) MeshSettings {
	return MeshSettings{
		DefaultDeny:     c.DefaultDeny != 0,
		NoDropEvents:    c.FlowEventsOff&flowEventsOffDrops != 0,
		NoNewFlowEvents: c.FlowEventsOff&flowEventsOffNew != 0,
		ClusterID:       c.ClusterID,
		PolicyRevision:  c.PolicyRevision,
	}
}

// ConfigMap is the single-entry isthmus_config array. Safe for concurrent
// use: Update serialises read-modify-write cycles within this process.
type ConfigMap struct {
	mu sync.Mutex // serialises Update and BumpPolicyRevision
	m  *ebpf.Map
}

// Map returns the underlying map.
func (c *ConfigMap) Map() *ebpf.Map { return c.m }

// Get reads the settings.
func (c *ConfigMap) Get() (MeshSettings, error) {
	var v MeshConfig
	if err := c.m.Lookup(uint32(0), &v); err != nil {
		return MeshSettings{}, fmt.Errorf("read mesh config: %w", err)
	}
	return settingsOf(v), nil
}

// Update applies fn to the current settings and writes the result.
func (c *ConfigMap) Update(fn func(*MeshSettings)) (MeshSettings, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, err := c.Get()
	if err != nil {
		return MeshSettings{}, err
	}
	fn(&s)
	if err := c.m.Put(uint32(0), s.raw()); err != nil {
		return MeshSettings{}, fmt.Errorf("write mesh config: %w", err)
	}
	return s, nil
}

// BumpPolicyRevision increments the policy revision, so that flows admitted
// earlier are checked against the current policy and ipcache on their next
// packet. Call it after reconciling policy, enforcement or identities.
func (c *ConfigMap) BumpPolicyRevision() (uint32, error) {
	s, err := c.Update(func(s *MeshSettings) { s.PolicyRevision++ })
	return s.PolicyRevision, err
}
