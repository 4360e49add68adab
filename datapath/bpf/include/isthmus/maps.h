/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The maps shared by every Isthmus BPF program, and the layouts of their keys
 * and values. This header is the single definition: datapath/bpf/maps.c
 * compiles it alone so that the Go side (datapath/maps) can create and pin the
 * maps with BTF before any program exists, and every program object includes
 * it so that its map references match; loaders replace the maps with the
 * pinned ones.
 *
 * Conventions, kept in every layout:
 *  - Addresses are 16 bytes in network byte order. IPv4 is stored
 *    IPv4-mapped (::ffff:a.b.c.d), so one key shape serves both families and
 *    a dual-stack socket connecting to ::ffff:VIP finds the IPv4 service.
 *    The ipcache key is the exception (see there).
 *  - Ports, identities, IDs and counters are in host byte order (so that
 *    `bpftool map dump` shows port 80 as 80).
 *  - Padding is explicit and must be zero: hash and LPM keys compare bytes.
 *  - The Go types in datapath/maps mirror these structs field by field; a
 *    test checks them against this object's BTF.
 *
 * Changing a layout changes the BTF; the Go side notices that a pinned map no
 * longer matches and recreates it (see datapath/maps).
 */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* Default sizes. The Go side overrides max_entries from its Config before it
 * creates a map, so these only document the defaults it uses. */
#define ISTHMUS_IPCACHE_MAX     524288
#define ISTHMUS_LB_FE_MAX       65536
#define ISTHMUS_LB_SLOT_MAX     262144
#define ISTHMUS_LB_BE_MAX       131072
#define ISTHMUS_LB_REVNAT_MAX   131072
#define ISTHMUS_POLICY_MAX      131072
#define ISTHMUS_POL_ENF_MAX     65536
#define ISTHMUS_CT_MAX          262144
#define ISTHMUS_FLOWS_BYTES     (1 << 20)
#define ISTHMUS_METRICS_MAX     64

/* ---------------------------------------------------------------- ipcache */

/*
 * isthmus_ipcache: longest-prefix match from an IP prefix to what the mesh
 * knows about it. The family byte keeps IPv4 and IPv6 apart (so ::/0 never
 * matches an IPv4 address); prefixlen counts the 32 bits of family and pad,
 * which always match, plus the prefix: an IPv4 /24 is 56, an IPv6 /64 is 96.
 * Lookups use 64 (IPv4) and 160 (IPv6).
 */
#define IPCACHE_FAMILY_IPV4 4
#define IPCACHE_FAMILY_IPV6 6
#define IPCACHE_PREFIX_BASE 32

struct ipcache_key {
	__u32 prefixlen;  /* host order: 32 + prefix length */
	__u8  family;     /* IPCACHE_FAMILY_* */
	__u8  pad[3];
	__u8  addr[16];   /* network order; IPv4 in addr[0..3], the rest zero */
};

#define IPCACHE_F_LOCAL_NODE  (1 << 0) /* endpoint lives on this node */
#define IPCACHE_F_NODE        (1 << 1) /* the prefix is a node's own address */

struct ipcache_value {
	__u32 identity;            /* numeric security identity (24 bits) */
	__u8  tunnel_endpoint[16]; /* node IP hosting it, IPv4-mapped; zero = none */
	__u16 cluster_id;          /* cluster the entry came from; 0 = unknown */
	__u8  flags;               /* IPCACHE_F_* */
	__u8  pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, ISTHMUS_IPCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} isthmus_ipcache SEC(".maps");

/*
 * isthmus_iphosts: the ipcache's host entries (/32 and /128: pod IPs, most
 * of the ipcache), in a hash keyed exactly like the trie with a full
 * prefixlen. A host entry is the longest possible match, so lookups try it
 * first and fall back to the trie, which then holds only shorter prefixes
 * and stays shallow: the cost of a lookup does not grow with the number of
 * pods. The Go side splits entries between the two maps.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, ISTHMUS_IPCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} isthmus_iphosts SEC(".maps");

/* ------------------------------------------------------- global services */

#define LB_AFFINITY_NONE   0 /* any backend */
#define LB_AFFINITY_LOCAL  1 /* local-cluster backends while any exist */
#define LB_AFFINITY_REMOTE 2 /* remote-cluster backends while any exist */

/* isthmus_lb_fe: a global service frontend (ClusterIP, port, protocol). */
struct lb_frontend_key {
	__u8  addr[16]; /* network order, IPv4-mapped for IPv4 */
	__u16 port;     /* host order */
	__u8  proto;    /* IPPROTO_TCP or IPPROTO_UDP */
	__u8  pad;
};

/*
 * Backends of a service occupy slots 0..backend_count-1 in isthmus_lb_slot:
 * the local-cluster ones first (0..local_backend_count-1), then the remote
 * ones. Affinity picks a range and a random slot in it with no loop.
 */
struct lb_frontend_value {
	__u32 service_id;
	__u16 backend_count;
	__u16 local_backend_count;
	__u8  affinity; /* LB_AFFINITY_* */
	__u8  flags;    /* reserved, zero */
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_frontend_key);
	__type(value, struct lb_frontend_value);
	__uint(max_entries, ISTHMUS_LB_FE_MAX);
} isthmus_lb_fe SEC(".maps");

/* isthmus_lb_slot: (service, slot) -> backend. */
struct lb_slot_key {
	__u32 service_id;
	__u32 slot;
};

struct lb_slot_value {
	__u32 backend_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_slot_key);
	__type(value, struct lb_slot_value);
	__uint(max_entries, ISTHMUS_LB_SLOT_MAX);
} isthmus_lb_slot SEC(".maps");

/* isthmus_lb_be: backend ID -> address. Shared by every service using it. */
#define LB_BACKEND_F_LOCAL (1 << 0) /* backend is in the local cluster */

struct lb_backend_value {
	__u8  addr[16];   /* network order, IPv4-mapped for IPv4 */
	__u16 port;       /* host order */
	__u16 cluster_id;
	__u8  flags;      /* LB_BACKEND_F_* */
	__u8  pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb_backend_value);
	__uint(max_entries, ISTHMUS_LB_BE_MAX);
} isthmus_lb_be SEC(".maps");

/*
 * isthmus_lb_rnat: reverse translation for the socket LB, written at
 * connect/sendmsg: (socket cookie, backend address) -> service address, so
 * recvmsg and getpeername show the address the application used.
 */
struct lb_revnat_key {
	__u64 cookie;     /* bpf_get_socket_cookie */
	__u8  addr[16];   /* backend, network order, IPv4-mapped for IPv4 */
	__u16 port;       /* backend port, host order */
	__u16 pad;
	__u32 pad2;
};

struct lb_revnat_value {
	__u8  addr[16];   /* service address, network order, IPv4-mapped */
	__u16 port;       /* service port, host order */
	__u16 pad;
	__u32 service_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb_revnat_key);
	__type(value, struct lb_revnat_value);
	__uint(max_entries, ISTHMUS_LB_REVNAT_MAX);
} isthmus_lb_rnat SEC(".maps");

/* ------------------------------------------------------------------ policy */

#define POLICY_DIR_INGRESS 1 /* into a local endpoint, from the tunnel */
#define POLICY_DIR_EGRESS  2 /* out of a local endpoint, into the tunnel */

/*
 * isthmus_policy: (direction, local identity, remote identity, port,
 * protocol) -> verdict. Wildcards: remote_identity 0 = any identity, dport 0
 * = any port, proto 0 = any protocol (a non-zero port needs a protocol).
 * A packet is looked up in this order; the first entry found decides:
 *   1. remote,  dport, proto
 *   2. remote,  0,     proto
 *   3. remote,  0,     0
 *   4. 0,       dport, proto
 *   5. 0,       0,     proto
 *   6. 0,       0,     0
 * Deny-over-allow precedence is the writer's job: do not write an allow
 * entry that a deny entry of the same policy covers.
 */
struct policy_key {
	__u32 local_identity;
	__u32 remote_identity; /* 0 = any */
	__u16 dport;           /* host order, 0 = any */
	__u8  proto;           /* 0 = any */
	__u8  direction;       /* POLICY_DIR_* */
};

#define POLICY_VERDICT_ALLOW 1
#define POLICY_VERDICT_DENY  2

struct policy_value {
	__u8  verdict;  /* POLICY_VERDICT_* */
	__u8  pad[3];
	__u32 rule_id;  /* opaque to BPF; reported in flow events */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, ISTHMUS_POLICY_MAX);
} isthmus_policy SEC(".maps");

/*
 * isthmus_pol_enf: local identity -> whether some policy selects it, per
 * direction. An identity absent here, or with the direction's byte zero,
 * is not enforced: traffic passes unless mesh_config.default_deny is set.
 * An enforced direction drops whatever no isthmus_policy entry allows.
 */
struct policy_enforcement {
	__u8 ingress; /* 1 = enforced */
	__u8 egress;  /* 1 = enforced */
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct policy_enforcement);
	__uint(max_entries, ISTHMUS_POL_ENF_MAX);
} isthmus_pol_enf SEC(".maps");

/* ------------------------------------------------------------------ config */

#define FLOW_EVENTS_OFF_DROPS (1 << 0) /* no events for dropped packets */
#define FLOW_EVENTS_OFF_NEW   (1 << 1) /* no events for new allowed flows */

/* isthmus_config: one entry, key 0. The zero value is a working default. */
struct mesh_config {
	__u8  default_deny;       /* 1: drop for endpoints no policy selects */
	__u8  flow_events_off;    /* FLOW_EVENTS_OFF_* */
	__u16 cluster_id;         /* this cluster's ID */
	__u32 policy_revision;    /* bumped after policy or identity changes;
	                           * flows tracked under an older revision are
	                           * checked again */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct mesh_config);
	__uint(max_entries, 1);
} isthmus_config SEC(".maps");

/* ------------------------------------------------------ connection tracking */

/* isthmus_ct: flows seen on the tunnel device, keyed as first seen. */
struct ct_key {
	__u8  saddr[16];
	__u8  daddr[16];
	__u16 sport;     /* host order; ICMP echo: the identifier */
	__u16 dport;     /* host order; ICMP echo: the identifier */
	__u8  proto;
	__u8  direction; /* POLICY_DIR_* of the packet that created the entry */
	__u16 pad;
};

struct ct_value {
	__u64 last_seen_ns;    /* bpf_ktime_get_ns, refreshed at most once a second */
	__u32 policy_revision; /* mesh_config.policy_revision when last checked */
	__u32 rule_id;         /* policy entry that allowed the flow, 0 = none */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(max_entries, ISTHMUS_CT_MAX);
} isthmus_ct SEC(".maps");

/* ------------------------------------------------- flow events and metrics */

/* Why a packet passed or was dropped: the isthmus_metrics index and the
 * flow_event reason. Values 1-15 pass, 16-30 drop. */
#define REASON_ALLOWED_POLICY     1  /* new flow allowed by a policy entry */
#define REASON_ALLOWED_UNENFORCED 2  /* new flow, endpoint selected by no policy */
#define REASON_ESTABLISHED        3  /* tracked flow, same direction */
#define REASON_REPLY              4  /* reply of a tracked flow */
#define REASON_NOT_IP             5  /* not IPv4 or IPv6: not ours to judge */
#define REASON_FRAGMENT           6  /* non-first fragment: the first decided */
#define REASON_DROP_POLICY_DENY   16 /* a deny entry matched */
#define REASON_DROP_NO_MATCH      17 /* enforced and no entry allows */
#define REASON_DROP_DEFAULT_DENY  18 /* not selected, mesh default deny */
#define REASON_DROP_MALFORMED     19 /* truncated or invalid header */
#define METRIC_FLOW_EVENTS_LOST   31 /* ring buffer full: events not sent */

/* isthmus_metrics: per-CPU counters indexed by REASON_* (sum over CPUs). */
struct metric_value {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct metric_value);
	__uint(max_entries, ISTHMUS_METRICS_MAX);
} isthmus_metrics SEC(".maps");

#define FLOW_VERDICT_FORWARDED 1
#define FLOW_VERDICT_DROPPED   2

/* A record on isthmus_flows, for new flows and drops. */
struct flow_event {
	__u64 timestamp_ns;  /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	__u8  saddr[16];
	__u8  daddr[16];
	__u16 sport;         /* host order */
	__u16 dport;         /* host order */
	__u8  proto;
	__u8  direction;     /* POLICY_DIR_* */
	__u8  verdict;       /* FLOW_VERDICT_* */
	__u8  reason;        /* REASON_* */
	__u32 src_identity;
	__u32 dst_identity;
	__u16 src_cluster;
	__u16 dst_cluster;
	__u32 ifindex;
	__u32 rule_id;       /* policy entry that decided, 0 = none */
	__u32 pkt_len;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, ISTHMUS_FLOWS_BYTES);
} isthmus_flows SEC(".maps");
