package socklb

import (
	"strings"
	"testing"
)

func TestCgroupRootIn(t *testing.T) {
	for _, c := range []struct {
		name, mountinfo, want string
	}{
		{"hybrid", `25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw
27 25 0:25 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu`, "/sys/fs/cgroup/unified"},
		{"container's own cgroup first", `30 1 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw
31 1 0:26 / /host/cgroup\040root rw - cgroup2 cgroup2 rw`, "/host/cgroup root"},
		{"none", `25 1 0:23 / / rw - ext4 /dev/sda1 rw`, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := cgroupRootIn(strings.NewReader(c.mountinfo))
			if c.want == "" {
				if err == nil {
					t.Errorf("got %q, want an error", got)
				}
				return
			}
			if err != nil || got != c.want {
				t.Errorf("got %q, %v; want %q", got, err, c.want)
			}
		})
	}
}
