/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Helpers for the 16-byte address form the maps use (see maps.h). */
#pragma once

#include <linux/types.h>
#include <bpf/bpf_endian.h>

/* Word view of a 16-byte address; keys are built on the stack, where the
 * compiler aligns them, so word copies are safe. */
struct addr_words {
	__u32 w[4];
};

static __always_inline void addr_set_v4mapped(__u8 *dst, __u32 ip4_be)
{
	struct addr_words a = {
		.w = { 0, 0, bpf_htonl(0x0000ffff), ip4_be },
	};
	__builtin_memcpy(dst, &a, 16);
}

static __always_inline void addr_set_words(__u8 *dst, __u32 w0, __u32 w1, __u32 w2, __u32 w3)
{
	struct addr_words a = { .w = { w0, w1, w2, w3 } };
	__builtin_memcpy(dst, &a, 16);
}

/* addr_get_v4 returns 1 and the IPv4 address (network order) when src is
 * IPv4-mapped, 0 otherwise. */
static __always_inline int addr_get_v4(const __u8 *src, __u32 *ip4_be)
{
	struct addr_words a;
	__builtin_memcpy(&a, src, 16);
	if (a.w[0] != 0 || a.w[1] != 0 || a.w[2] != bpf_htonl(0x0000ffff))
		return 0;
	*ip4_be = a.w[3];
	return 1;
}
