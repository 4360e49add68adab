// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Cross-cluster policy on the tunnel device (WireGuard), as tc programs:
 * isthmus_tun_in on ingress (decrypted packets from other clusters, towards
 * local endpoints) and isthmus_tun_out on egress (local endpoints towards
 * other clusters).
 *
 * Per packet: parse; if the flow is tracked (isthmus_ct) in this direction
 * or as a reply, pass; otherwise look both addresses up in the ipcache
 * (unknown = world), decide by isthmus_pol_enf / isthmus_policy /
 * mesh_config.default_deny, track allowed flows, count every outcome in
 * isthmus_metrics and report new flows and drops on isthmus_flows. Tracked
 * flows never touch the ipcache or the policy, so their cost does not
 * depend on the size of either; when the agent bumps
 * mesh_config.policy_revision, each tracked flow is checked once more on its
 * next packet and dropped if no longer allowed.
 *
 * Passing returns TC_ACT_UNSPEC ("next"): other tc programs on the device
 * still run, so this composes with whatever else is attached.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "isthmus/maps.h"
#include "isthmus/addr.h"

/*
 * Load-time constants, set by the Go loader (datapath/tunnelpolicy).
 * l2_len: bytes before the IP header. 0 for L3 devices such as WireGuard and
 * TUN, whose packets start at the IP header; 14 for Ethernet devices (and
 * for BPF_PROG_TEST_RUN, which always feeds Ethernet frames).
 */
volatile const __u32 l2_len = 0;
volatile const __u64 ct_lifetime_tcp_ns = 6ULL * 3600 * 1000000000;
volatile const __u64 ct_lifetime_other_ns = 60ULL * 1000000000;

/* Puts struct flow_event into this object's BTF (a local variable's type
 * would not be), where the Go test checks maps.FlowRecord against it. It
 * lives in .rodata, which this object has anyway for the constants above. */
const struct flow_event flow_event_btf __attribute__((used)) = {};

#define CT_REFRESH_NS 1000000000ULL /* write last_seen at most once a second */

#define ICMP_ECHO_REQUEST   8
#define ICMP_ECHO_REPLY     0
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY   129

/* A parsed packet. Addresses are IPv4-mapped for IPv4, as in the maps. */
struct packet {
	__u8  saddr[16];
	__u8  daddr[16];
	__u16 sport;       /* host order; ICMP echo: identifier */
	__u16 dport;       /* host order; ICMP echo: identifier */
	__u16 policy_port; /* destination port for policy; 0 for ICMP */
	__u8  proto;
	__u8  v4;
};

/* ------------------------------------------------------------------ parse */

static __always_inline int parse_l4(struct __sk_buff *skb, __u32 off, struct packet *p)
{
	__u8 icmp[6];
	__be16 ports[2];

	switch (p->proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return REASON_DROP_MALFORMED;
		p->sport = bpf_ntohs(ports[0]);
		p->dport = bpf_ntohs(ports[1]);
		p->policy_port = p->dport;
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		/* type, code, checksum, identifier */
		if (bpf_skb_load_bytes(skb, off, icmp, sizeof(icmp)) < 0)
			return REASON_DROP_MALFORMED;
		if (icmp[0] == ICMP_ECHO_REQUEST || icmp[0] == ICMP_ECHO_REPLY ||
		    icmp[0] == ICMPV6_ECHO_REQUEST || icmp[0] == ICMPV6_ECHO_REPLY) {
			/* Echo request and reply share the identifier, so the
			 * reply matches the request's tracked flow. */
			p->sport = ((__u16)icmp[4] << 8) | icmp[5];
			p->dport = p->sport;
		}
		break;
	}
	return 0;
}

static __always_inline int parse_v4(struct __sk_buff *skb, struct packet *p)
{
	struct iphdr ip;
	__u32 off = l2_len;

	if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0 || ip.ihl < 5)
		return REASON_DROP_MALFORMED;
	p->v4 = 1;
	p->proto = ip.protocol;
	addr_set_v4mapped(p->saddr, ip.saddr);
	addr_set_v4mapped(p->daddr, ip.daddr);
	/* A non-first fragment has no L4 header; its first fragment was
	 * judged, and without it the datagram cannot be reassembled. */
	if (bpf_ntohs(ip.frag_off) & 0x1fff)
		return REASON_FRAGMENT;
	return parse_l4(skb, off + ip.ihl * 4, p);
}

static __always_inline int parse_v6(struct __sk_buff *skb, struct packet *p)
{
	struct ipv6hdr ip6;
	__u32 off = l2_len;
	__u8 nexthdr;
	__u8 ext[8];

	if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
		return REASON_DROP_MALFORMED;
	__builtin_memcpy(p->saddr, &ip6.saddr, 16);
	__builtin_memcpy(p->daddr, &ip6.daddr, 16);
	nexthdr = ip6.nexthdr;
	off += sizeof(ip6);

	/* Walk up to four extension headers to reach the L4 header. */
#pragma unroll
	for (int i = 0; i < 4; i++) {
		switch (nexthdr) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			if (bpf_skb_load_bytes(skb, off, ext, 2) < 0)
				return REASON_DROP_MALFORMED;
			nexthdr = ext[0];
			off += ((__u32)ext[1] + 1) * 8;
			break;
		case IPPROTO_AH:
			if (bpf_skb_load_bytes(skb, off, ext, 2) < 0)
				return REASON_DROP_MALFORMED;
			nexthdr = ext[0];
			off += ((__u32)ext[1] + 2) * 4;
			break;
		case IPPROTO_FRAGMENT:
			if (bpf_skb_load_bytes(skb, off, ext, 8) < 0)
				return REASON_DROP_MALFORMED;
			nexthdr = ext[0];
			off += 8;
			if (((((__u16)ext[2]) << 8) | ext[3]) & 0xfff8) {
				p->proto = nexthdr;
				return REASON_FRAGMENT;
			}
			break;
		default:
			goto done;
		}
	}
done:
	p->proto = nexthdr;
	return parse_l4(skb, off, p);
}

/* parse returns 0 for a packet to judge, or the reason to pass or drop it
 * without judging. */
static __always_inline int parse(struct __sk_buff *skb, struct packet *p)
{
	__u8 version;

	if (l2_len) {
		__be16 h_proto;

		if (bpf_skb_load_bytes(skb, 12, &h_proto, sizeof(h_proto)) < 0)
			return REASON_DROP_MALFORMED;
		if (h_proto == bpf_htons(ETH_P_IP))
			return parse_v4(skb, p);
		if (h_proto == bpf_htons(ETH_P_IPV6))
			return parse_v6(skb, p);
		return REASON_NOT_IP;
	}
	/* L3 device: the first nibble is the IP version. */
	if (bpf_skb_load_bytes(skb, 0, &version, 1) < 0)
		return REASON_DROP_MALFORMED;
	switch (version >> 4) {
	case 4:
		return parse_v4(skb, p);
	case 6:
		return parse_v6(skb, p);
	}
	return REASON_NOT_IP;
}

/* -------------------------------------------------------- metrics, events */

static __always_inline void count(__u32 reason, __u32 bytes)
{
	struct metric_value *mv = bpf_map_lookup_elem(&isthmus_metrics, &reason);

	if (mv) {
		/* Per-CPU: no other writer, and tc runs with preemption off. */
		mv->packets++;
		mv->bytes += bytes;
	}
}

struct identities {
	__u32 local, remote;
	__u16 local_cluster, remote_cluster;
};

static __always_inline void emit(struct __sk_buff *skb, const struct packet *p, __u8 dir,
				 __u8 reason, const struct identities *ids, __u32 rule_id)
{
	struct flow_event *e;

	e = bpf_ringbuf_reserve(&isthmus_flows, sizeof(*e), 0);
	if (!e) {
		count(METRIC_FLOW_EVENTS_LOST, 0);
		return;
	}
	e->timestamp_ns = bpf_ktime_get_ns();
	__builtin_memcpy(e->saddr, p->saddr, 16);
	__builtin_memcpy(e->daddr, p->daddr, 16);
	e->sport = p->sport;
	e->dport = p->dport;
	e->proto = p->proto;
	e->direction = dir;
	e->verdict = reason >= REASON_DROP_POLICY_DENY ? FLOW_VERDICT_DROPPED : FLOW_VERDICT_FORWARDED;
	e->reason = reason;
	if (dir == POLICY_DIR_INGRESS) {
		e->src_identity = ids->remote;
		e->dst_identity = ids->local;
		e->src_cluster = ids->remote_cluster;
		e->dst_cluster = ids->local_cluster;
	} else {
		e->src_identity = ids->local;
		e->dst_identity = ids->remote;
		e->src_cluster = ids->local_cluster;
		e->dst_cluster = ids->remote_cluster;
	}
	e->ifindex = skb->ifindex;
	e->rule_id = rule_id;
	e->pkt_len = skb->len;
	bpf_ringbuf_submit(e, 0);
}

/* ------------------------------------------------------- identity, policy */

static __always_inline void ipcache_lookup(const __u8 *addr, int v4, __u32 *identity, __u16 *cluster)
{
	struct ipcache_key k = {};
	const struct ipcache_value *v;
	__u32 ip4;

	if (v4 && addr_get_v4(addr, &ip4)) {
		k.prefixlen = IPCACHE_PREFIX_BASE + 32;
		k.family = IPCACHE_FAMILY_IPV4;
		__builtin_memcpy(k.addr, &ip4, 4);
	} else {
		k.prefixlen = IPCACHE_PREFIX_BASE + 128;
		k.family = IPCACHE_FAMILY_IPV6;
		__builtin_memcpy(k.addr, addr, 16);
	}
	/* Host entries first: O(1), and the longest match when present. */
	v = bpf_map_lookup_elem(&isthmus_iphosts, &k);
	if (!v)
		v = bpf_map_lookup_elem(&isthmus_ipcache, &k);
	if (v) {
		*identity = v->identity;
		*cluster = v->cluster_id;
	} else {
		*identity = 2; /* world */
		*cluster = 0;
	}
}

static __always_inline const struct policy_value *policy_find(struct policy_key *k, __u32 remote,
							      __u16 port, __u8 proto)
{
	k->remote_identity = remote;
	k->dport = port;
	k->proto = proto;
	return bpf_map_lookup_elem(&isthmus_policy, k);
}

/*
 * policy_decide returns the REASON_* for a new flow in direction dir between
 * a local and a remote identity. The lookup order is documented in maps.h.
 */
static __always_inline __u8 policy_decide(__u8 dir, const struct identities *ids, __u16 port,
					  __u8 proto, const struct mesh_config *cfg, __u32 *rule_id)
{
	const struct policy_enforcement *en;
	const struct policy_value *v;
	struct policy_key k = {};
	__u8 enforced = 0;

	en = bpf_map_lookup_elem(&isthmus_pol_enf, &ids->local);
	if (en)
		enforced = dir == POLICY_DIR_INGRESS ? en->ingress : en->egress;
	if (!enforced)
		return cfg && cfg->default_deny ? REASON_DROP_DEFAULT_DENY : REASON_ALLOWED_UNENFORCED;

	k.local_identity = ids->local;
	k.direction = dir;
	if (port && (v = policy_find(&k, ids->remote, port, proto)))
		goto found;
	if ((v = policy_find(&k, ids->remote, 0, proto)))
		goto found;
	if ((v = policy_find(&k, ids->remote, 0, 0)))
		goto found;
	if (port && (v = policy_find(&k, 0, port, proto)))
		goto found;
	if ((v = policy_find(&k, 0, 0, proto)))
		goto found;
	if ((v = policy_find(&k, 0, 0, 0)))
		goto found;
	return REASON_DROP_NO_MATCH;
found:
	*rule_id = v->rule_id;
	return v->verdict == POLICY_VERDICT_ALLOW ? REASON_ALLOWED_POLICY : REASON_DROP_POLICY_DENY;
}

/* ---------------------------------------------------- connection tracking */

static __always_inline void ct_key_of(struct ct_key *k, const struct packet *p, __u8 dir, int reverse)
{
	if (reverse) {
		__builtin_memcpy(k->saddr, p->daddr, 16);
		__builtin_memcpy(k->daddr, p->saddr, 16);
		k->sport = p->dport;
		k->dport = p->sport;
		k->direction = dir == POLICY_DIR_INGRESS ? POLICY_DIR_EGRESS : POLICY_DIR_INGRESS;
	} else {
		__builtin_memcpy(k->saddr, p->saddr, 16);
		__builtin_memcpy(k->daddr, p->daddr, 16);
		k->sport = p->sport;
		k->dport = p->dport;
		k->direction = dir;
	}
	k->proto = p->proto;
}

static __always_inline int ct_live(const struct ct_value *ct, __u8 proto, __u64 now)
{
	__u64 life = proto == IPPROTO_TCP ? ct_lifetime_tcp_ns : ct_lifetime_other_ns;
	__u64 seen = ct->last_seen_ns;

	/* Another CPU may have refreshed it after we read the clock. */
	return seen >= now || now - seen <= life;
}

/* ---------------------------------------------------------------- verdict */

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	struct packet p = {};
	struct ct_key k = {};
	struct ct_value *ct;
	struct identities ids = {};
	const struct mesh_config *cfg;
	__u32 zero = 0, rule_id = 0, rev;
	__u64 now;
	__u8 reason, flow_dir;
	int reply = 0, r;

	r = parse(skb, &p);
	if (r == REASON_NOT_IP || r == REASON_FRAGMENT) {
		count(r, skb->len);
		return TC_ACT_UNSPEC;
	}
	if (r) {
		count(r, skb->len);
		return TC_ACT_SHOT;
	}

	cfg = bpf_map_lookup_elem(&isthmus_config, &zero);
	rev = cfg ? cfg->policy_revision : 0;
	now = bpf_ktime_get_ns();

	ct_key_of(&k, &p, dir, 0);
	ct = bpf_map_lookup_elem(&isthmus_ct, &k);
	if (!ct) {
		ct_key_of(&k, &p, dir, 1);
		ct = bpf_map_lookup_elem(&isthmus_ct, &k);
		reply = ct != NULL;
	}
	if (ct && !ct_live(ct, p.proto, now))
		ct = NULL;
	if (ct && ct->policy_revision == rev) {
		if (now - ct->last_seen_ns > CT_REFRESH_NS)
			ct->last_seen_ns = now;
		count(reply ? REASON_REPLY : REASON_ESTABLISHED, skb->len);
		return TC_ACT_UNSPEC;
	}

	/*
	 * A new flow, or a tracked one to check against a newer policy. The
	 * flow's own direction is the packet's, except for a reply, whose flow
	 * was opened the other way: a reply's flow is judged as its opener was.
	 */
	flow_dir = (ct && reply) ? k.direction : dir;
	{
		/* Local endpoint: destination of ingress flows, source of egress. */
		const __u8 *local, *remote;
		__u16 port;

		if (ct && reply) {
			local = flow_dir == POLICY_DIR_INGRESS ? p.saddr : p.daddr;
			remote = flow_dir == POLICY_DIR_INGRESS ? p.daddr : p.saddr;
			port = k.dport;
			if (p.proto == IPPROTO_ICMP || p.proto == IPPROTO_ICMPV6)
				port = 0;
		} else {
			local = flow_dir == POLICY_DIR_INGRESS ? p.daddr : p.saddr;
			remote = flow_dir == POLICY_DIR_INGRESS ? p.saddr : p.daddr;
			port = p.policy_port;
		}
		ipcache_lookup(local, p.v4, &ids.local, &ids.local_cluster);
		ipcache_lookup(remote, p.v4, &ids.remote, &ids.remote_cluster);
		reason = policy_decide(flow_dir, &ids, port, p.proto, cfg, &rule_id);
	}

	if (reason < REASON_DROP_POLICY_DENY) {
		if (ct) {
			/* Still allowed under the new revision. */
			ct->policy_revision = rev;
			ct->rule_id = rule_id;
			ct->last_seen_ns = now;
			count(reply ? REASON_REPLY : REASON_ESTABLISHED, skb->len);
			return TC_ACT_UNSPEC;
		}
		struct ct_value nv = {
			.last_seen_ns = now,
			.policy_revision = rev,
			.rule_id = rule_id,
		};
		ct_key_of(&k, &p, dir, 0);
		bpf_map_update_elem(&isthmus_ct, &k, &nv, BPF_ANY);
		count(reason, skb->len);
		if (!cfg || !(cfg->flow_events_off & FLOW_EVENTS_OFF_NEW))
			emit(skb, &p, dir, reason, &ids, rule_id);
		return TC_ACT_UNSPEC;
	}

	if (ct)
		bpf_map_delete_elem(&isthmus_ct, &k); /* revoked by the new policy */
	count(reason, skb->len);
	if (!cfg || !(cfg->flow_events_off & FLOW_EVENTS_OFF_DROPS))
		emit(skb, &p, dir, reason, &ids, rule_id);
	return TC_ACT_SHOT;
}

SEC("tc")
int isthmus_tun_in(struct __sk_buff *skb)
{
	return handle(skb, POLICY_DIR_INGRESS);
}

SEC("tc")
int isthmus_tun_out(struct __sk_buff *skb)
{
	return handle(skb, POLICY_DIR_EGRESS);
}

char __license[] SEC("license") = "Dual BSD/GPL";
