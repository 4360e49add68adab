package meshetcd

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/authpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// rootRole is etcd's built-in role with full access.
const rootRole = "root"

// Access is the set of etcd users and roles of one cluster's mesh etcd
// (PROTOCOL.md, "Access"):
//
//	user root, admin-<c>    role root (full access)
//	user local-<c>          role local-<c>: read heartbeat, cache/, cluster-config/, synced/, state/
//	user remote, remote-<r> role remote: read heartbeat, state/, cluster-config/<c>, synced/<c>/
//
// Keys outside those ranges, such as the identity allocator's private
// prefix, are readable by the root role only.
type Access struct {
	// Cluster is this cluster's name.
	Cluster string
	// RemoteClusters each get a remote-<r> user besides the shared remote
	// user. remote-* users of clusters no longer listed are deleted.
	RemoteClusters []string
}

type role struct {
	name string
	read []protocol.KeyRange
}

func (a Access) roles() []role {
	return []role{
		{name: protocol.LocalUser(a.Cluster), read: protocol.LocalReadable()},
		{name: protocol.RemoteUser, read: protocol.RemoteReadable(a.Cluster)},
	}
}

// users maps each user to its one role.
func (a Access) users() map[string]string {
	u := map[string]string{
		protocol.RootUser:             rootRole,
		protocol.AdminUser(a.Cluster): rootRole,
		protocol.LocalUser(a.Cluster): protocol.LocalUser(a.Cluster),
		protocol.RemoteUser:           protocol.RemoteUser,
	}
	for _, r := range a.RemoteClusters {
		u[protocol.RemoteUserFor(r)] = protocol.RemoteUser
	}
	return u
}

// ErrNotRoot is returned by Apply when the client's user may not manage
// users and roles.
var ErrNotRoot = errors.New("etcd user lacks the root role")

// Apply makes the etcd's users, roles and permissions match a and turns
// authentication on. It is idempotent: on an etcd set up before, it only
// corrects what differs. Before auth is on any client may do this; after,
// only a user with the root role (admin-<c>).
func (a Access) Apply(ctx context.Context, cli *clientv3.Client) error {
	if err := protocol.ValidateClusterName(a.Cluster); err != nil {
		return err
	}
	for _, r := range a.RemoteClusters {
		if err := protocol.ValidateClusterName(r); err != nil {
			return fmt.Errorf("remote cluster: %w", err)
		}
	}
	if err := a.apply(ctx, cli); err != nil {
		// An unknown user (a certificate whose CN has no etcd user) is
		// refused as "user name not found".
		if isPermissionDenied(err) || errors.Is(err, rpctypes.ErrUserNotFound) {
			return fmt.Errorf("%w: %w; use a client certificate of a root-role user such as %s, or create the users and roles of PROTOCOL.md \"Access\" by hand", ErrNotRoot, err, protocol.AdminUser(a.Cluster))
		}
		return err
	}
	return nil
}

func (a Access) apply(ctx context.Context, cli *clientv3.Client) error {
	for _, r := range a.roles() {
		if err := applyRole(ctx, cli, r); err != nil {
			return err
		}
	}
	users := a.users()
	// All users exist before auth is turned on: etcd refuses without root.
	for _, n := range slices.Sorted(maps.Keys(users)) {
		if err := applyUser(ctx, cli, n, users[n]); err != nil {
			return err
		}
	}
	if err := a.deleteStaleRemoteUsers(ctx, cli, users); err != nil {
		return err
	}
	st, err := cli.AuthStatus(ctx)
	if err != nil {
		return fmt.Errorf("auth status: %w", err)
	}
	if !st.Enabled {
		if _, err := cli.AuthEnable(ctx); err != nil {
			return fmt.Errorf("enable auth: %w", err)
		}
	}
	return nil
}

func applyRole(ctx context.Context, cli *clientv3.Client, r role) error {
	if _, err := cli.RoleAdd(ctx, r.name); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("add role %s: %w", r.name, err)
	}
	got, err := cli.RoleGet(ctx, r.name)
	if err != nil {
		return fmt.Errorf("get role %s: %w", r.name, err)
	}
	type perm struct {
		key, end string
		typ      authpb.Permission_Type
	}
	want := make(map[perm]bool)
	for _, kr := range r.read {
		p := perm{key: kr.Key, typ: authpb.READ}
		if kr.Prefix {
			p.end = clientv3.GetPrefixRangeEnd(kr.Key)
		}
		want[p] = true
	}
	for _, p := range got.Perm {
		have := perm{key: string(p.Key), end: string(p.RangeEnd), typ: p.PermType}
		if want[have] {
			delete(want, have)
			continue
		}
		if _, err := cli.RoleRevokePermission(ctx, r.name, have.key, have.end); err != nil {
			return fmt.Errorf("role %s: revoke %q: %w", r.name, have.key, err)
		}
	}
	for p := range want {
		if _, err := cli.RoleGrantPermission(ctx, r.name, p.key, p.end, clientv3.PermissionType(p.typ)); err != nil {
			return fmt.Errorf("role %s: grant read on %q: %w", r.name, p.key, err)
		}
	}
	return nil
}

func applyUser(ctx context.Context, cli *clientv3.Client, name, role string) error {
	// No password: the user authenticates with its client certificate only.
	_, err := cli.UserAddWithOptions(ctx, name, "", &clientv3.UserAddOptions{NoPassword: true})
	if err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return fmt.Errorf("add user %s: %w", name, err)
	}
	got, err := cli.UserGet(ctx, name)
	if err != nil {
		return fmt.Errorf("get user %s: %w", name, err)
	}
	for _, r := range got.Roles {
		if r == role {
			continue
		}
		if _, err := cli.UserRevokeRole(ctx, name, r); err != nil {
			return fmt.Errorf("user %s: revoke role %s: %w", name, r, err)
		}
	}
	if !slices.Contains(got.Roles, role) {
		if _, err := cli.UserGrantRole(ctx, name, role); err != nil {
			return fmt.Errorf("user %s: grant role %s: %w", name, role, err)
		}
	}
	return nil
}

func (a Access) deleteStaleRemoteUsers(ctx context.Context, cli *clientv3.Client, users map[string]string) error {
	list, err := cli.UserList(ctx)
	if err != nil {
		return fmt.Errorf("list users: %w", err)
	}
	prefix := protocol.RemoteUserFor("")
	for _, u := range list.Users {
		if _, keep := users[u]; keep || !strings.HasPrefix(u, prefix) {
			continue
		}
		if _, err := cli.UserDelete(ctx, u); err != nil && !errors.Is(err, rpctypes.ErrUserNotFound) {
			return fmt.Errorf("delete user %s: %w", u, err)
		}
	}
	return nil
}

func isPermissionDenied(err error) bool {
	return errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrUserEmpty)
}
