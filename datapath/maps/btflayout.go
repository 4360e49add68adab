package maps

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// layoutOf renders the memory layout of a BTF type: sizes, member names and
// offsets, following typedefs. Two types with the same layout string read
// the same bytes the same way.
func layoutOf(t btf.Type) string {
	var b strings.Builder
	writeLayout(&b, t, 0)
	return b.String()
}

func writeLayout(b *strings.Builder, t btf.Type, depth int) {
	if depth > 8 {
		b.WriteString("…")
		return
	}
	switch t := btf.UnderlyingType(t).(type) {
	case *btf.Int:
		fmt.Fprintf(b, "int%d", t.Size*8)
		if t.Encoding&btf.Signed != 0 {
			b.WriteString("s")
		}
	case *btf.Enum:
		fmt.Fprintf(b, "enum%d", t.Size*8)
	case *btf.Pointer:
		b.WriteString("ptr")
	case *btf.Array:
		fmt.Fprintf(b, "[%d]", t.Nelems)
		writeLayout(b, t.Type, depth+1)
	case *btf.Struct:
		writeMembers(b, "struct", t.Name, t.Size, t.Members, depth)
	case *btf.Union:
		writeMembers(b, "union", t.Name, t.Size, t.Members, depth)
	default:
		fmt.Fprintf(b, "%T", t)
	}
}

func writeMembers(b *strings.Builder, kind, name string, size uint32, members []btf.Member, depth int) {
	fmt.Fprintf(b, "%s %s(%d){", kind, name, size)
	for i, m := range members {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(b, "%s@%d", m.Name, m.Offset.Bytes())
		if m.BitfieldSize != 0 {
			fmt.Fprintf(b, ":%d", m.BitfieldSize)
		}
		b.WriteString("=")
		writeLayout(b, m.Type, depth+1)
	}
	b.WriteString("}")
}

// errNoBTF means a pinned map carries no BTF to compare layouts with.
var errNoBTF = errors.New("pinned map has no BTF")

// checkLayout compares the key and value layouts that spec declares with
// those recorded in the BTF of the existing map m. Sizes alone do not catch a
// reordered or retyped field; the BTF does. Types that are not structs (a
// plain __u32 key) are covered by the size check in MapSpec.Compatible.
func checkLayout(spec *ebpf.MapSpec, m *ebpf.Map) error {
	want := map[string]btf.Type{}
	for _, t := range []btf.Type{spec.Key, spec.Value} {
		if t == nil {
			continue
		}
		if s, ok := btf.UnderlyingType(t).(*btf.Struct); ok && s.Name != "" {
			want[s.Name] = s
		}
	}
	if len(want) == 0 {
		return nil
	}

	h, err := m.Handle()
	if err != nil {
		return fmt.Errorf("%w: %v", errNoBTF, err)
	}
	defer h.Close()
	types, err := h.Spec(nil)
	if err != nil {
		return fmt.Errorf("read BTF of pinned map: %w", err)
	}
	for name, wt := range want {
		var got *btf.Struct
		if err := types.TypeByName(name, &got); err != nil {
			return fmt.Errorf("pinned map has no struct %s in its BTF: layout changed", name)
		}
		if a, b := layoutOf(got), layoutOf(wt); a != b {
			return fmt.Errorf("layout of struct %s changed from %s to %s", name, a, b)
		}
	}
	return nil
}
