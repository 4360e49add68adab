package meshconfig

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

func TestServiceBackends(t *testing.T) {
	name := func(s string) *string { return &s }
	port := func(p int32) *int32 { return &p }
	ready := func(b bool) discoveryv1.EndpointConditions { return discoveryv1.EndpointConditions{Ready: &b} }
	udp := corev1.ProtocolUDP
	svcPorts := []corev1.ServicePort{{Name: "http", Port: 80}, {Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}

	slices := []*discoveryv1.EndpointSlice{
		{ // IPv4: one ready (condition missing), one not ready, one ready with a hostname
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports: []discoveryv1.EndpointPort{
				{Name: name("http"), Port: port(8080)},
				{Name: name("dns"), Port: port(5353), Protocol: &udp},
				{Name: name("metrics"), Port: port(9090)}, // not a Service port
				{Name: name("nil-port")},
			},
			Endpoints: []discoveryv1.Endpoint{
				{Addresses: []string{"10.1.1.1"}},
				{Addresses: []string{"10.1.1.2"}, Conditions: ready(false)},
				{Addresses: []string{"10.1.1.3"}, Conditions: ready(true), Hostname: name("web-0")},
			},
		},
		{ // IPv6, and an IPv4-mapped address, on another port set
			AddressType: discoveryv1.AddressTypeIPv6,
			Ports:       []discoveryv1.EndpointPort{{Name: name("http"), Port: port(8081)}},
			Endpoints: []discoveryv1.Endpoint{
				{Addresses: []string{"fd00::1", "::ffff:10.1.1.9", "not-an-ip"}},
			},
		},
		{ // FQDN slices are not backends
			AddressType: discoveryv1.AddressTypeFQDN,
			Ports:       []discoveryv1.EndpointPort{{Name: name("http"), Port: port(80)}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"example.com"}}},
		},
		{ // no port the Service names: contributes nothing
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: name("metrics"), Port: port(9090)}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.1.1.4"}}},
		},
	}
	backends, hostnames := ServiceBackends(svcPorts, slices)

	both := protocol.PortConfiguration{
		"http": {Protocol: protocol.ProtoTCP, Port: 8080},
		"dns":  {Protocol: protocol.ProtoUDP, Port: 5353},
	}
	v6 := protocol.PortConfiguration{"http": {Protocol: protocol.ProtoTCP, Port: 8081}}
	want := map[string]protocol.PortConfiguration{
		"10.1.1.1": both,
		"10.1.1.3": both,
		"fd00::1":  v6,
		"10.1.1.9": v6,
	}
	if !reflect.DeepEqual(backends, want) {
		t.Errorf("backends:\n got %v\nwant %v", backends, want)
	}
	if want := map[string]string{"10.1.1.3": "web-0"}; !reflect.DeepEqual(hostnames, want) {
		t.Errorf("hostnames: got %v, want %v", hostnames, want)
	}

	// An address in two slices gets the ports of both.
	slices[1].Endpoints[0].Addresses = []string{"::ffff:10.1.1.1"}
	backends, _ = ServiceBackends(svcPorts, slices)
	if got := backends["10.1.1.1"]; len(got) != 2 || got["http"].Port != 8081 || got["dns"].Port != 5353 {
		t.Errorf("10.1.1.1 in two slices: got %v, want http 8081 (the later slice) and dns 5353", got)
	}

	// A Service without ports has no backends.
	if backends, _ := ServiceBackends(nil, slices); len(backends) != 0 {
		t.Errorf("no Service ports: got backends %v, want none", backends)
	}
}
