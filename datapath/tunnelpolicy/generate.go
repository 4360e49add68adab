package tunnelpolicy

//go:generate go tool bpf2go -cc clang-14 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I../bpf/include" -target bpfel -no-global-types tunnel ../bpf/tunnel_policy.c
