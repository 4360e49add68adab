package maps

// The map definitions live in C (datapath/bpf/include/isthmus/maps.h) so that
// the maps created here carry the same BTF as the programs that use them.
//go:generate go tool bpf2go -cc clang-14 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I../bpf/include" -target bpfel -no-global-types mapdefs ../bpf/maps.c
