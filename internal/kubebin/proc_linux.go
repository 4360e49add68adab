package kubebin

import "syscall"

// dieWithParent makes the go command die with the process that started it,
// so an interrupted test binary does not leave a build running.
func dieWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
