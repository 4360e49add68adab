package agentcmd

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/isthmus-mesh/isthmus/agent"
	"github.com/isthmus-mesh/isthmus/agent/api/agentv1"
	"github.com/isthmus-mesh/isthmus/agent/remotecluster"
)

func agentReaderConfig(o *options) remotecluster.Config {
	return remotecluster.Config{HeartbeatTimeout: o.heartbeatTimeout}
}

// clientFlags are the flags of the commands that talk to a running agent.
type clientFlags struct {
	socket string
	output string
}

func (c *clientFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&c.socket, "api-socket", agent.DefaultAPISocket, "unix socket of the agent's local API")
	cmd.Flags().StringVarP(&c.output, "output", "o", "text", "output format: text or json")
}

func (c *clientFlags) dial() (agentv1.AgentClient, func(), error) {
	if c.output != "text" && c.output != "json" {
		return nil, nil, fmt.Errorf("--output %q: want text or json", c.output)
	}
	conn, err := grpc.NewClient("unix://"+c.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("connect to the agent at %s: %w", c.socket, err)
	}
	return agentv1.NewAgentClient(conn), func() { conn.Close() }, nil
}

func callTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, 30*time.Second)
}

func explain(socket string, err error) error {
	return fmt.Errorf("ask the agent at %s (is isthmus-agent running on this node, and is --api-socket the same?): %w", socket, err)
}

func newStatusCommand() *cobra.Command {
	c := &clientFlags{}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the running agent's clusters and maps",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, closeConn, err := c.dial()
			if err != nil {
				return err
			}
			defer closeConn()
			ctx, cancel := callTimeout(cmd.Context())
			defer cancel()
			st, err := client.Status(ctx, &agentv1.StatusRequest{})
			if err != nil {
				return explain(c.socket, err)
			}
			if c.output == "json" {
				return writeJSON(cmd.OutOrStdout(), st)
			}
			return WriteStatus(cmd.OutOrStdout(), st, time.Now())
		},
	}
	c.register(cmd)
	return cmd
}

func writeJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func ago(t interface{ AsTime() time.Time }, isNil bool, now time.Time) string {
	if isNil {
		return "never"
	}
	at := t.AsTime()
	return fmt.Sprintf("%s (%s ago)", at.Local().Format(time.DateTime), now.Sub(at).Round(time.Second))
}

// WriteStatus prints a status readably.
func WriteStatus(w io.Writer, st *agentv1.StatusResponse, now time.Time) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Node %s in cluster %s (ID %d, maxConnectedClusters %d), up %s\n",
		st.NodeName, st.ClusterName, st.ClusterId, st.MaxConnectedClusters, now.Sub(st.Started.AsTime()).Round(time.Second))
	fmt.Fprintf(&b, "Clustermesh Secret read: %s    initial sync done: %s\n\n", yesNo(st.SecretRead), yesNo(st.InitialSyncDone))

	fmt.Fprintf(&b, "BPF maps under %s:\n", st.BpfRoot)
	tw := tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  MAP\tENTRIES\tMAX\tPRESSURE")
	for _, m := range st.Maps {
		pressure := 0.0
		if m.MaxEntries > 0 {
			pressure = 100 * float64(m.Entries) / float64(m.MaxEntries)
		}
		fmt.Fprintf(tw, "  %s\t%d\t%d\t%.1f%%\n", m.Name, m.Entries, m.MaxEntries, pressure)
	}
	tw.Flush()

	fmt.Fprintf(&b, "\nClusters (%d):\n", len(st.Clusters))
	for _, c := range st.Clusters {
		id := "?"
		if c.ClusterId != 0 {
			id = fmt.Sprint(c.ClusterId)
		}
		fmt.Fprintf(&b, "  %s (ID %s): %s, connected: %s, connections: %d\n", c.Name, id, c.State, yesNo(c.Connected), c.Connections)
		fmt.Fprintf(&b, "    endpoints: %s\n", strings.Join(c.Endpoints, ", "))
		tw := tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "    KIND\tSYNCED\tENTRIES\tDECODE ERRORS")
		for _, k := range c.Kinds {
			fmt.Fprintf(tw, "    %s\t%s\t%d\t%d\n", k.Kind, yesNo(k.Synced), k.Entries, k.DecodeErrors)
		}
		tw.Flush()
		fmt.Fprintf(&b, "    last change: %s\n", ago(c.LastChange, c.LastChange == nil, now))
		fmt.Fprintf(&b, "    last heartbeat: %s\n", ago(c.LastHeartbeat, c.LastHeartbeat == nil, now))
		if c.LastError != "" {
			fmt.Fprintf(&b, "    last error: %s\n      at %s\n", c.LastError, ago(c.LastErrorTime, c.LastErrorTime == nil, now))
		}
	}
	writeDatapath(&b, st.Datapath, now)
	writePolicy(&b, st.Policy)
	if len(st.InvalidEntries) > 0 {
		fmt.Fprintf(&b, "\nUnusable Secret entries (fix them with `isthmus connect`):\n")
		keys := make([]string, 0, len(st.InvalidEntries))
		for k := range st.InvalidEntries {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "  %s: %s\n", k, st.InvalidEntries[k])
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func writePolicy(b *strings.Builder, p *agentv1.PolicyStatus) {
	if p == nil {
		fmt.Fprintf(b, "\nMeshNetworkPolicy: not enforced by this agent\n")
		return
	}
	policies := fmt.Sprintf("%d policies", p.Policies)
	if p.Policies == 1 {
		policies = "1 policy"
	}
	if p.InvalidPolicies > 0 {
		// An invalid policy fails closed: the pods it selects are in
		// default deny and it allows nothing.
		policies += fmt.Sprintf(", %d of them invalid (an invalid policy allows nothing)", p.InvalidPolicies)
	}
	fmt.Fprintf(b, "\nMeshNetworkPolicy: %s; maps written: %s, mesh-wide default deny: %s\n",
		policies, yesNo(p.Synced), yesNo(p.DefaultDeny))
	fmt.Fprintf(b, "  %d identities known, %d with pods on this node; %d allow entries, %d identities in default deny\n",
		p.Identities, p.NodeIdentities, p.Entries, p.EnforcedIdentities)
}

func writeDatapath(b *strings.Builder, dp *agentv1.DatapathStatus, now time.Time) {
	if dp == nil {
		return
	}
	fmt.Fprintf(b, "\nDatapath:\n")
	if dp.SocketLbCgroup != "" {
		fmt.Fprintf(b, "  socket load balancer: attached to cgroup %s\n", dp.SocketLbCgroup)
	} else {
		fmt.Fprintf(b, "  socket load balancer: not attached\n")
	}
	wg := dp.Wireguard
	if wg == nil {
		fmt.Fprintf(b, "  WireGuard: disabled (no tunnel to other clusters, no cross-cluster policy)\n")
		return
	}
	fmt.Fprintf(b, "  WireGuard: device %s (%s), port %d, MTU %d, tunnel policy attached: %s\n", wg.Device, wg.Mode, wg.ListenPort, wg.Mtu, yesNo(dp.TunnelPolicyAttached))
	fmt.Fprintf(b, "    public key %s, published on the Node: %s\n", wg.PublicKey, yesNo(wg.KeyPublished))
	fmt.Fprintf(b, "    peers: %d", wg.Peers)
	if wg.KeptPeers > 0 {
		fmt.Fprintf(b, " (%d kept until the mesh is read again)", wg.KeptPeers)
	}
	fmt.Fprintf(b, ", last reconcile: %s\n", ago(wg.LastReconcile, wg.LastReconcile == nil, now))
	if wg.Recreations > 0 {
		fmt.Fprintf(b, "    device re-created %d times after it went away\n", wg.Recreations)
	}
	for _, s := range wg.Skipped {
		fmt.Fprintf(b, "    no peer for %s/%s: %s", s.Cluster, s.Node, s.Reason)
		if s.Detail != "" {
			fmt.Fprintf(b, " (%s)", s.Detail)
		}
		b.WriteByte('\n')
	}
	if wg.LastError != "" {
		fmt.Fprintf(b, "    last error: %s\n      at %s\n", wg.LastError, ago(wg.LastErrorTime, wg.LastErrorTime == nil, now))
	}
}

func newDumpCommand() *cobra.Command {
	c := &clientFlags{}
	cmd := &cobra.Command{
		Use:       "dump ipcache|services|identities|peers",
		Short:     "Print what the running agent's BPF maps and WireGuard device hold (identities: its merged state)",
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"ipcache", "services", "identities", "peers"},
		RunE: func(cmd *cobra.Command, args []string) error {
			client, closeConn, err := c.dial()
			if err != nil {
				return err
			}
			defer closeConn()
			ctx, cancel := callTimeout(cmd.Context())
			defer cancel()
			out := cmd.OutOrStdout()
			switch args[0] {
			case "ipcache":
				return dumpIPCache(ctx, client, c, out)
			case "services":
				resp, err := client.DumpServices(ctx, &agentv1.DumpServicesRequest{})
				if err != nil {
					return explain(c.socket, err)
				}
				if c.output == "json" {
					return writeJSON(out, resp)
				}
				tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "FRONTEND\tAFFINITY\tBACKENDS")
				for _, s := range resp.Services {
					var bs []string
					for _, b := range s.Backends {
						where := "remote"
						if b.Local {
							where = "local"
						}
						bs = append(bs, fmt.Sprintf("%s:%d (cluster %d, %s)", b.Address, b.Port, b.ClusterId, where))
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Frontend, s.Affinity, strings.Join(bs, ", "))
				}
				return tw.Flush()
			case "identities":
				return dumpIdentities(ctx, client, c, out)
			case "peers":
				return dumpPeers(ctx, client, c, out)
			}
			return fmt.Errorf("unknown map %q: want ipcache, services, identities or peers", args[0])
		},
	}
	c.register(cmd)
	return cmd
}

func dumpIPCache(ctx context.Context, client agentv1.AgentClient, c *clientFlags, out io.Writer) error {
	entries, err := agentv1.DumpAllIPCache(ctx, client)
	if err != nil {
		return explain(c.socket, err)
	}
	all := &agentv1.IPCacheChunk{Entries: entries}
	if c.output == "json" {
		return writeJSON(out, all)
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PREFIX\tIDENTITY\tTUNNEL ENDPOINT\tCLUSTER ID\tFLAGS")
	for _, e := range all.Entries {
		var flags []string
		if e.Flags&1 != 0 {
			flags = append(flags, "local-node")
		}
		if e.Flags&2 != 0 {
			flags = append(flags, "node")
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\n", e.Prefix, e.Identity, e.TunnelEndpoint, e.ClusterId, strings.Join(flags, ","))
	}
	return tw.Flush()
}

func dumpIdentities(ctx context.Context, client agentv1.AgentClient, c *clientFlags, out io.Writer) error {
	ids, err := agentv1.DumpAllIdentities(ctx, client)
	if err != nil {
		return explain(c.socket, err)
	}
	all := &agentv1.IdentityChunk{Identities: ids}
	if c.output == "json" {
		return writeJSON(out, all)
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCLUSTER\tLABELS")
	for _, i := range all.Identities {
		fmt.Fprintf(tw, "%d\t%s\t%s\n", i.Id, i.Cluster, strings.Join(i.Labels, " "))
	}
	return tw.Flush()
}

func dumpPeers(ctx context.Context, client agentv1.AgentClient, c *clientFlags, out io.Writer) error {
	resp, err := client.DumpPeers(ctx, &agentv1.DumpPeersRequest{})
	if err != nil {
		return explain(c.socket, err)
	}
	if c.output == "json" {
		return writeJSON(out, resp)
	}
	now := time.Now()
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tENDPOINT\tALLOWED IPS\tLATEST HANDSHAKE\tRECEIVED\tSENT\tPUBLIC KEY")
	for _, p := range resp.Peers {
		hs := "never"
		if p.LastHandshake != nil {
			hs = now.Sub(p.LastHandshake.AsTime()).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\n", p.Name, p.Endpoint, strings.Join(p.AllowedIps, ","), hs, p.ReceiveBytes, p.TransmitBytes, p.PublicKey)
	}
	return tw.Flush()
}
