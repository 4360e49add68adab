package socklb

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// CgroupRoot returns the mount point of the machine's cgroup v2
// hierarchy (e.g. /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid
// systems), read from /proc/self/mountinfo: attached there, the socket LB
// serves every process of the machine. Inside a container with a cgroup
// namespace of its own, the root it sees is the container's cgroup: mount
// the host's hierarchy (a hostPath volume) and attach there instead.
func CgroupRoot() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find the cgroup v2 mount: %w", err)
	}
	defer f.Close()
	return cgroupRootIn(f)
}

func cgroupRootIn(r io.Reader) (string, error) {
	s := bufio.NewScanner(r)
	for s.Scan() {
		// id parent major:minor root mountpoint options... - fstype source superoptions
		pre, post, ok := strings.Cut(s.Text(), " - ")
		if !ok {
			continue
		}
		fields, postFields := strings.Fields(pre), strings.Fields(post)
		// The hierarchy's root, not a bind mount of a cgroup inside it
		// (as a container sees its own).
		if len(fields) >= 5 && len(postFields) >= 1 && postFields[0] == "cgroup2" && fields[3] == "/" {
			return unescapeMountPath(fields[4]), nil
		}
	}
	if err := s.Err(); err != nil {
		return "", fmt.Errorf("find the cgroup v2 mount: %w", err)
	}
	return "", errors.New("no cgroup v2 hierarchy is mounted; mount one (mount -t cgroup2 none /sys/fs/cgroup) or pass the cgroup to attach the socket LB to")
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(p string) string {
	if !strings.Contains(p, `\`) {
		return p
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '\\' && i+3 < len(p) {
			var v byte
			if _, err := fmt.Sscanf(p[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(p[i])
	}
	return b.String()
}
