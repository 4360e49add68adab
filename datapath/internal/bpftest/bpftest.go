// Package bpftest holds helpers for datapath tests that use real kernel
// objects: a cgroup of their own, and checks that the Go mirrors of the
// BPF programs' structs match their BTF layout. Pin directories come from
// datapath/bpffs/bpffstest.
//
// Only tests import it. It must not import apiserver/ or agent/.
package bpftest
