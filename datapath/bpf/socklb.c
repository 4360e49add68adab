// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Socket load balancer for global services, on cgroup v2 socket hooks.
 *
 * connect() and sendmsg() to a frontend in isthmus_lb_fe (a global service's
 * ClusterIP, port and protocol) are rewritten to one of its backends, chosen
 * by the service's affinity, before the kernel routes anything: no per-packet
 * NAT, no conntrack, and it works beside kube-proxy or any other service
 * implementation, which then never sees these connections. recvmsg() and
 * getpeername() translate the backend back to the service address through
 * isthmus_lb_rnat, keyed by socket cookie, so applications see the address
 * they used. Anything that is not a global service is left alone.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "isthmus/maps.h"
#include "isthmus/addr.h"

#define SOCK_STREAM 1
#define SOCK_DGRAM  2

/* Every cgroup/sock_addr program must return 1 to let the call proceed. */
#define SOCK_PROCEED 1

/*
 * lb_pick chooses a backend of the frontend fk, or returns NULL when fk is
 * not a global service or has no usable backend. Local-cluster backends sit
 * in slots [0, local), remote ones in [local, total), so each affinity is a
 * range and the choice is one modulo, with no loop.
 */
static __always_inline const struct lb_backend_value *
lb_pick(const struct lb_frontend_key *fk, __u32 hash, __u32 *service_id)
{
	const struct lb_frontend_value *fe;
	const struct lb_slot_value *sv;
	struct lb_slot_key sk = {};
	__u32 total, local, remote, base = 0, n;

	fe = bpf_map_lookup_elem(&isthmus_lb_fe, fk);
	if (!fe)
		return NULL;
	total = fe->backend_count;
	local = fe->local_backend_count;
	if (local > total)
		local = total;
	remote = total - local;
	n = total;
	if (fe->affinity == LB_AFFINITY_LOCAL && local) {
		n = local;
	} else if (fe->affinity == LB_AFFINITY_REMOTE && remote) {
		base = local;
		n = remote;
	}
	if (n == 0)
		return NULL;

	sk.service_id = fe->service_id;
	sk.slot = base + hash % n;
	sv = bpf_map_lookup_elem(&isthmus_lb_slot, &sk);
	if (!sv)
		return NULL;
	*service_id = fe->service_id;
	return bpf_map_lookup_elem(&isthmus_lb_be, &sv->backend_id);
}

/* Connected sockets pick at random; unconnected UDP sends stick to one
 * backend per socket (while the backend set is stable) so that a
 * request/response exchange over sendto/recvfrom keeps its peer. */
static __always_inline __u32 lb_hash(struct bpf_sock_addr *ctx, int sticky)
{
	if (sticky) {
		__u64 c = bpf_get_socket_cookie(ctx);
		return (__u32)(c ^ (c >> 32)) * 2654435761u;
	}
	return bpf_get_prandom_u32();
}

static __always_inline void revnat_store(struct bpf_sock_addr *ctx, const struct lb_backend_value *be,
					 const struct lb_frontend_key *fk, __u32 service_id)
{
	struct lb_revnat_key rk = {};
	struct lb_revnat_value rv = {};

	rk.cookie = bpf_get_socket_cookie(ctx);
	__builtin_memcpy(rk.addr, be->addr, 16);
	rk.port = be->port;
	__builtin_memcpy(rv.addr, fk->addr, 16);
	rv.port = fk->port;
	rv.service_id = service_id;
	bpf_map_update_elem(&isthmus_lb_rnat, &rk, &rv, BPF_ANY);
}

static __always_inline int proto_ok(struct bpf_sock_addr *ctx)
{
	return ctx->type == SOCK_STREAM || ctx->type == SOCK_DGRAM;
}

static __always_inline void xlate4(struct bpf_sock_addr *ctx, int sticky)
{
	const struct lb_backend_value *be;
	struct lb_frontend_key fk = {};
	__u32 service_id = 0, ip4;

	if (!proto_ok(ctx))
		return;
	addr_set_v4mapped(fk.addr, ctx->user_ip4);
	fk.port = bpf_ntohs((__u16)ctx->user_port);
	fk.proto = ctx->protocol;

	be = lb_pick(&fk, lb_hash(ctx, sticky), &service_id);
	if (!be || !addr_get_v4(be->addr, &ip4))
		return;
	ctx->user_ip4 = ip4;
	ctx->user_port = (__u32)bpf_htons(be->port);
	revnat_store(ctx, be, &fk, service_id);
}

static __always_inline void xlate6(struct bpf_sock_addr *ctx, int sticky)
{
	const struct lb_backend_value *be;
	struct lb_frontend_key fk = {};
	struct addr_words a;
	__u32 service_id = 0;

	if (!proto_ok(ctx))
		return;
	/* An IPv4-mapped destination on a dual-stack socket finds the IPv4
	 * service, since frontends are stored IPv4-mapped. */
	addr_set_words(fk.addr, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]);
	fk.port = bpf_ntohs((__u16)ctx->user_port);
	fk.proto = ctx->protocol;

	be = lb_pick(&fk, lb_hash(ctx, sticky), &service_id);
	if (!be)
		return;
	__builtin_memcpy(&a, be->addr, 16);
	ctx->user_ip6[0] = a.w[0];
	ctx->user_ip6[1] = a.w[1];
	ctx->user_ip6[2] = a.w[2];
	ctx->user_ip6[3] = a.w[3];
	ctx->user_port = (__u32)bpf_htons(be->port);
	revnat_store(ctx, be, &fk, service_id);
}

/* Back-translation for recvmsg (the datagram's source) and getpeername
 * (the connected peer): both hand the hook the backend's address. */
static __always_inline void revnat4(struct bpf_sock_addr *ctx)
{
	const struct lb_revnat_value *rv;
	struct lb_revnat_key rk = {};
	__u32 ip4;

	rk.cookie = bpf_get_socket_cookie(ctx);
	addr_set_v4mapped(rk.addr, ctx->user_ip4);
	rk.port = bpf_ntohs((__u16)ctx->user_port);
	rv = bpf_map_lookup_elem(&isthmus_lb_rnat, &rk);
	if (!rv || !addr_get_v4(rv->addr, &ip4))
		return;
	ctx->user_ip4 = ip4;
	ctx->user_port = (__u32)bpf_htons(rv->port);
}

static __always_inline void revnat6(struct bpf_sock_addr *ctx)
{
	const struct lb_revnat_value *rv;
	struct lb_revnat_key rk = {};
	struct addr_words a;

	rk.cookie = bpf_get_socket_cookie(ctx);
	addr_set_words(rk.addr, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]);
	rk.port = bpf_ntohs((__u16)ctx->user_port);
	rv = bpf_map_lookup_elem(&isthmus_lb_rnat, &rk);
	if (!rv)
		return;
	__builtin_memcpy(&a, rv->addr, 16);
	ctx->user_ip6[0] = a.w[0];
	ctx->user_ip6[1] = a.w[1];
	ctx->user_ip6[2] = a.w[2];
	ctx->user_ip6[3] = a.w[3];
	ctx->user_port = (__u32)bpf_htons(rv->port);
}

SEC("cgroup/connect4")
int isthmus_conn4(struct bpf_sock_addr *ctx)
{
	xlate4(ctx, 0);
	return SOCK_PROCEED;
}

SEC("cgroup/connect6")
int isthmus_conn6(struct bpf_sock_addr *ctx)
{
	xlate6(ctx, 0);
	return SOCK_PROCEED;
}

SEC("cgroup/sendmsg4")
int isthmus_send4(struct bpf_sock_addr *ctx)
{
	xlate4(ctx, 1);
	return SOCK_PROCEED;
}

SEC("cgroup/sendmsg6")
int isthmus_send6(struct bpf_sock_addr *ctx)
{
	xlate6(ctx, 1);
	return SOCK_PROCEED;
}

SEC("cgroup/recvmsg4")
int isthmus_recv4(struct bpf_sock_addr *ctx)
{
	revnat4(ctx);
	return SOCK_PROCEED;
}

SEC("cgroup/recvmsg6")
int isthmus_recv6(struct bpf_sock_addr *ctx)
{
	revnat6(ctx);
	return SOCK_PROCEED;
}

SEC("cgroup/getpeername4")
int isthmus_peer4(struct bpf_sock_addr *ctx)
{
	revnat4(ctx);
	return SOCK_PROCEED;
}

SEC("cgroup/getpeername6")
int isthmus_peer6(struct bpf_sock_addr *ctx)
{
	revnat6(ctx);
	return SOCK_PROCEED;
}

char __license[] SEC("license") = "Dual BSD/GPL";
