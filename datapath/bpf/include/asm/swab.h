/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shim: the BPF target has no arch directory under /usr/include, so the uapi
 * headers' asm/swab.h resolves to the generic one. Only little-endian BPF
 * (bpfel) is built, which byteorder.h assumes. */
#pragma once
#include <asm-generic/swab.h>
