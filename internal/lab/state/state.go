// Package state is the on-disk contract between `isthmus lab` commands and
// the lab supervisor: the layout of a lab's state directory, the plan the
// supervisor is started with, the state it publishes once the lab is up, and
// the lock whose holder is the lab's supervisor.
//
// Layout of a lab's state directory (DefaultRoot/<name>):
//
//	lock                       flock held by the supervisor while it lives
//	plan.json                  what to run (Plan), written before the supervisor starts
//	state.json                 what runs (State), written by the supervisor once ready
//	supervisor.log             the supervisor's log
//	control.sock               the supervisor's HTTP control API (status, restart)
//	kubeconfig                 admin kubeconfig, contexts <name>-c1, <name>-c2, ...
//	clusters/<cluster>/controlplane/   etcd data, pki, kubeconfigs, logs/ of the control plane
//	clusters/<cluster>/mesh/           mesh CA and certificates (ca.crt, server.crt, admin.crt, ...),
//	                                   apiserver.kubeconfig, etcd/ data and apiserver.log of isthmus-apiserver
//	nodes/<node>/              kubelet.json, kubelet.kubeconfig, kubelet.log, agent.log
//	nodes/<node>/agent/        the agent's state directory, kubeconfig and API socket (agent.sock)
//
// It must not import the supervisor, kubelet or CLI packages.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
)

// DefaultRoot holds one state directory per lab. It is under /run because
// everything a lab holds (namespaces, processes) ends with the boot.
const DefaultRoot = "/run/isthmus/lab"

// Dir is one lab's state directory.
type Dir string

// For returns the state directory of lab name under root (DefaultRoot when
// empty).
func For(root, name string) Dir {
	if root == "" {
		root = DefaultRoot
	}
	return Dir(filepath.Join(root, name))
}

func (d Dir) path(parts ...string) string {
	return filepath.Join(append([]string{string(d)}, parts...)...)
}

// LockFile is the lock the supervisor holds while it lives.
func (d Dir) LockFile() string { return d.path("lock") }

// PlanFile holds the Plan the supervisor runs.
func (d Dir) PlanFile() string { return d.path("plan.json") }

// StateFile holds the State the supervisor publishes once ready.
func (d Dir) StateFile() string { return d.path("state.json") }

// LogFile is the supervisor's log.
func (d Dir) LogFile() string { return d.path("supervisor.log") }

// ControlSocket is the supervisor's control API.
func (d Dir) ControlSocket() string { return d.path("control.sock") }

// Kubeconfig is the lab's admin kubeconfig.
func (d Dir) Kubeconfig() string { return d.path("kubeconfig") }

// ControlPlaneDir is the data directory of a cluster's control plane.
func (d Dir) ControlPlaneDir(cluster string) string {
	return d.path("clusters", cluster, "controlplane")
}

// MeshDir holds a cluster's mesh certificates and isthmus-apiserver data.
func (d Dir) MeshDir(cluster string) string { return d.path("clusters", cluster, "mesh") }

// Files of a cluster's mesh directory: its mesh CA, the etcd server
// certificate of its isthmus-apiserver, and the admin-<cluster> client
// certificate that `isthmus lab env` gives etcdctl.
const (
	MeshCACert     = "ca.crt"
	MeshServerCert = "server.crt"
	MeshServerKey  = "server.key"
	MeshAdminCert  = "admin.crt"
	MeshAdminKey   = "admin.key"
)

// MeshFile is the path of one of a cluster's mesh files.
func (d Dir) MeshFile(cluster, name string) string { return d.path("clusters", cluster, "mesh", name) }

// NodeDir holds a node's kubelet and agent files.
func (d Dir) NodeDir(node string) string { return d.path("nodes", node) }

// KubeBinaries are the control-plane binaries a lab runs.
type KubeBinaries struct {
	Version           string `json:"version"`
	APIServer         string `json:"apiServer"`
	ControllerManager string `json:"controllerManager"`
	Scheduler         string `json:"scheduler"`
}

// Plan is what the supervisor is asked to run.
type Plan struct {
	Config topology.Config `json:"config"`
	// Isthmus is the isthmus binary; the supervisor runs its hidden
	// `lab kubelet` and `lab workload` commands.
	Isthmus string       `json:"isthmus"`
	Kube    KubeBinaries `json:"kube"`
	// MeshAPIServer and Agent are the mesh binaries; empty runs the lab
	// without the mesh.
	MeshAPIServer string `json:"meshAPIServer,omitempty"`
	Agent         string `json:"agent,omitempty"`
	// Debug turns on debug logging in the supervisor and its processes.
	Debug bool `json:"debug,omitempty"`
}

// State is what the supervisor publishes once the lab is ready.
type State struct {
	Lab           *topology.Lab `json:"lab"`
	SupervisorPID int           `json:"supervisorPID"`
	Ready         time.Time     `json:"ready"`
	// Mesh reports whether the mesh (isthmus-apiserver and agents) runs.
	Mesh bool `json:"mesh"`
}

// WriteJSON writes v to path atomically (temp file, then rename).
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", filepath.Base(path), err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// ReadJSON reads path into v.
func ReadJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	return nil
}

// ErrLocked means another process holds a lab's lock: its supervisor runs
// (or an `up` is starting it).
var ErrLocked = errors.New("lab lock is held")

// Lock takes the lab's lock without waiting and records pid in it. The lock
// belongs to the open file: a child that inherits the file shares it, and it
// ends when the last holder closes it or exits.
func (d Dir) Lock(pid int) (*os.File, error) {
	f, err := os.OpenFile(d.LockFile(), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lab lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, ErrLocked
		}
		return nil, fmt.Errorf("lock %s: %w", d.LockFile(), err)
	}
	if err := SetLockPID(f, pid); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// SetLockPID records pid as the lock holder's.
func SetLockPID(f *os.File, pid int) error {
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("record lock holder: %w", err)
	}
	if _, err := f.WriteAt([]byte(strconv.Itoa(pid)+"\n"), 0); err != nil {
		return fmt.Errorf("record lock holder: %w", err)
	}
	return nil
}

// Holder returns the pid of the process holding the lab's lock, or 0 when
// nobody holds it (no supervisor runs).
func (d Dir) Holder() (int, error) {
	f, err := d.Lock(0)
	if errors.Is(err, ErrLocked) {
		b, err := os.ReadFile(d.LockFile())
		if err != nil {
			return 0, fmt.Errorf("read lab lock: %w", err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			return 0, fmt.Errorf("lab lock is held but names no process (%q)", b)
		}
		return pid, nil
	}
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	f.Close()
	return 0, nil
}

// Event is one line of the supervisor's progress stream to `up`: a message,
// or the final word (Ready, or Error).
type Event struct {
	Message string `json:"message,omitempty"`
	Ready   bool   `json:"ready,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Status is the supervisor's answer to GET /status on its control socket.
type Status struct {
	Name  string `json:"name"`
	Ready bool   `json:"ready"`
	// Lab is the topology; nil until the underlay exists.
	Lab       *topology.Lab   `json:"lab,omitempty"`
	Processes []ProcessStatus `json:"processes"`
	// Clusters says how each control plane answers.
	Clusters []ClusterStatus `json:"clusters,omitempty"`
}

// ClusterStatus is the health of one cluster's control plane.
type ClusterStatus struct {
	Name string `json:"name"`
	// KubeAPIServer is "ready" when its /readyz answers ok, otherwise what
	// went wrong.
	KubeAPIServer string `json:"kubeAPIServer"`
}

// ProcessStatus describes one supervised process.
type ProcessStatus struct {
	Name     string    `json:"name"`
	PID      int       `json:"pid,omitempty"`
	State    string    `json:"state"`
	Restarts int       `json:"restarts"`
	Since    time.Time `json:"since"`
	LastExit string    `json:"lastExit,omitempty"`
	LogFile  string    `json:"logFile"`
}

// Control API paths on the supervisor's socket.
const (
	// PathStatus answers GET with a Status.
	PathStatus = "/status"
	// PathRestart restarts the process named by the "process" query
	// parameter on POST, and answers once it is ready again.
	PathRestart = "/restart"
)
