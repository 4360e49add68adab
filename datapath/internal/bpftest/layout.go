package bpftest

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// CheckLayout fails tb unless the Go type goT has the same size as the BTF
// type bt and, for structs, the same members in the same order at the same
// offsets with the same sizes; names must match ignoring case and
// underscores (C local_backend_count is Go LocalBackendCount).
func CheckLayout(tb testing.TB, goT reflect.Type, bt btf.Type) {
	tb.Helper()
	size, err := btf.Sizeof(bt)
	if err != nil {
		tb.Fatalf("%v: sizeof BTF type: %v", goT, err)
	}
	if uintptr(size) != goT.Size() {
		tb.Errorf("%v: Go size %d, C size %d", goT, goT.Size(), size)
		return
	}
	st, ok := btf.UnderlyingType(bt).(*btf.Struct)
	if !ok {
		return
	}
	if goT.Kind() != reflect.Struct {
		tb.Errorf("%v: C type is struct %s, Go type is not a struct", goT, st.Name)
		return
	}
	if goT.NumField() != len(st.Members) {
		tb.Errorf("%v: %d Go fields, struct %s has %d members", goT, goT.NumField(), st.Name, len(st.Members))
		return
	}
	for i, m := range st.Members {
		f := goT.Field(i)
		msize, err := btf.Sizeof(m.Type)
		if err != nil {
			tb.Fatalf("%v: sizeof %s.%s: %v", goT, st.Name, m.Name, err)
		}
		got := fmt.Sprintf("%s@%d/%d", normalize(f.Name), f.Offset, f.Type.Size())
		want := fmt.Sprintf("%s@%d/%d", normalize(m.Name), m.Offset.Bytes(), msize)
		if got != want {
			tb.Errorf("%v field %d: Go %s (%s), C struct %s member %s", goT, i, got, f.Name, st.Name, want)
		}
	}
}

func normalize(s string) string {
	return strings.ToLower(strings.ReplaceAll(s, "_", ""))
}
