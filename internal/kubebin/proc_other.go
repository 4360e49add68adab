//go:build !linux

package kubebin

import "syscall"

func dieWithParent() *syscall.SysProcAttr { return nil }
