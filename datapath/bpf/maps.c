// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The map definitions alone, with no program: datapath/maps creates and pins
 * the maps from this object so that they carry BTF (bpftool pretty-prints
 * them) and exist before any program is loaded.
 */
#include "isthmus/maps.h"

char __license[] SEC("license") = "Dual BSD/GPL";
