package tunnelpolicy

import (
	"encoding/binary"
	"net/netip"

	"github.com/isthmus-mesh/isthmus/datapath/maps"
)

// Minimal packet builders for BPF_PROG_TEST_RUN. The programs read headers
// only, so checksums stay zero.

const (
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd
	etherTypeARP  = 0x0806
)

type pktSpec struct {
	src, dst netip.AddrPort
	proto    maps.Protocol
	icmpType uint8 // ICMP: the type; the identifier is src.Port()
	fragOff  uint16
	payload  int
}

func ethernet(etherType uint16, l3 []byte) []byte {
	b := make([]byte, 14, 14+len(l3))
	copy(b[0:6], []byte{0x02, 0, 0, 0, 0, 1})
	copy(b[6:12], []byte{0x02, 0, 0, 0, 0, 2})
	binary.BigEndian.PutUint16(b[12:14], etherType)
	return append(b, l3...)
}

func l4(p pktSpec) []byte {
	var h []byte
	switch p.proto {
	case maps.ProtoTCP:
		h = make([]byte, 20)
		binary.BigEndian.PutUint16(h[0:], p.src.Port())
		binary.BigEndian.PutUint16(h[2:], p.dst.Port())
		h[12] = 5 << 4
		h[13] = 0x02 // SYN
	case maps.ProtoUDP:
		h = make([]byte, 8)
		binary.BigEndian.PutUint16(h[0:], p.src.Port())
		binary.BigEndian.PutUint16(h[2:], p.dst.Port())
		binary.BigEndian.PutUint16(h[4:], uint16(8+p.payload))
	case maps.ProtoICMP, maps.ProtoICMPv6:
		h = make([]byte, 8)
		h[0] = p.icmpType
		binary.BigEndian.PutUint16(h[4:], p.src.Port())
	}
	return append(h, make([]byte, p.payload)...)
}

// ipPacket returns the IP packet (no L2 header).
func ipPacket(p pktSpec) []byte {
	payload := l4(p)
	if p.src.Addr().Is4() {
		h := make([]byte, 20, 20+len(payload))
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
		binary.BigEndian.PutUint16(h[6:], p.fragOff)
		h[8] = 64
		h[9] = uint8(p.proto)
		s, d := p.src.Addr().As4(), p.dst.Addr().As4()
		copy(h[12:16], s[:])
		copy(h[16:20], d[:])
		binary.BigEndian.PutUint16(h[10:], ipv4Checksum(h))
		return append(h, payload...)
	}
	h := make([]byte, 40, 40+len(payload))
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	h[6] = uint8(p.proto)
	h[7] = 64
	s, d := p.src.Addr().As16(), p.dst.Addr().As16()
	copy(h[8:24], s[:])
	copy(h[24:40], d[:])
	return append(h, payload...)
}

// frame returns the packet in an Ethernet frame, as BPF_PROG_TEST_RUN for
// tc programs expects.
func frame(p pktSpec) []byte {
	et := uint16(etherTypeIPv4)
	if p.src.Addr().Is6() {
		et = etherTypeIPv6
	}
	return ethernet(et, ipPacket(p))
}

func tcp(src, dst string) pktSpec {
	return pktSpec{src: netip.MustParseAddrPort(src), dst: netip.MustParseAddrPort(dst), proto: maps.ProtoTCP}
}

func udp(src, dst string) pktSpec {
	return pktSpec{src: netip.MustParseAddrPort(src), dst: netip.MustParseAddrPort(dst), proto: maps.ProtoUDP}
}

// reply swaps the ends.
func (p pktSpec) reply() pktSpec {
	p.src, p.dst = p.dst, p.src
	return p
}

// ipv4Checksum is the header checksum the kernel checks on receive (the
// programs do not care; real devices do).
func ipv4Checksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
