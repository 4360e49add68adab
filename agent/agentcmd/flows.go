package agentcmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/isthmus-mesh/isthmus/agent/api/agentv1"
)

func newFlowsCommand() *cobra.Command {
	c := &clientFlags{}
	req := &agentv1.FlowsRequest{}
	var dropped, passed bool
	cmd := &cobra.Command{
		Use:   "flows",
		Short: "Show the flows the tunnel policy saw: new cross-cluster flows and drops",
		Long: `flows prints the flow events of the tunnel policy programs on the WireGuard
device: each new cross-cluster flow, allowed or dropped, with both ends'
addresses, identities and clusters, the verdict and its reason. It prints the
latest ones the agent keeps (--last) and, with --follow, new ones as they
happen. With -o json it prints one JSON object per line.`,
		Example: `  # the latest drops
  isthmus-agent flows --dropped
  # follow flows to or from one pod
  isthmus-agent flows -f --address 10.2.0.7`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case dropped && passed:
				return errors.New("--dropped and --passed exclude each other; give neither to see both")
			case dropped:
				req.Verdict = agentv1.Verdict_VERDICT_DROPPED
			case passed:
				req.Verdict = agentv1.Verdict_VERDICT_PASSED
			}
			client, closeConn, err := c.dial()
			if err != nil {
				return err
			}
			defer closeConn()
			ctx := cmd.Context()
			if !req.Follow {
				var cancel context.CancelFunc
				ctx, cancel = callTimeout(ctx)
				defer cancel()
			}
			return streamFlows(ctx, client, req, c, cmd.OutOrStdout())
		},
	}
	c.register(cmd)
	f := cmd.Flags()
	f.Uint32Var(&req.Last, "last", 20, "print up to this many of the latest flows first")
	f.BoolVarP(&req.Follow, "follow", "f", false, "keep printing new flows until interrupted")
	f.BoolVar(&dropped, "dropped", false, "only dropped packets")
	f.BoolVar(&passed, "passed", false, "only flows that were allowed")
	f.StringVar(&req.Direction, "direction", "", "ingress (from the tunnel) or egress (into it)")
	f.StringVar(&req.Protocol, "protocol", "", "TCP, UDP, ICMP, ICMPv6 or SCTP")
	f.StringVar(&req.Address, "address", "", "flows from or to this IP address")
	f.Uint32Var(&req.Port, "port", 0, "flows from or to this port")
	f.Uint32Var(&req.Identity, "identity", 0, "flows from or to this numeric identity")
	f.Uint32Var(&req.ClusterId, "cluster-id", 0, "flows from or to this cluster")
	return cmd
}

func streamFlows(ctx context.Context, client agentv1.AgentClient, req *agentv1.FlowsRequest, c *clientFlags, out io.Writer) error {
	// Cluster names make the lines readable; without them, IDs do.
	names := map[uint32]string{}
	if st, err := client.Status(ctx, &agentv1.StatusRequest{}); err == nil {
		for _, cl := range st.Clusters {
			if cl.ClusterId != 0 {
				names[cl.ClusterId] = cl.Name
			}
		}
	}
	stream, err := client.Flows(ctx, req)
	if err != nil {
		return explain(c.socket, err)
	}
	for {
		fl, err := stream.Recv()
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case status.Code(err) == codes.Canceled && ctx.Err() != nil:
			return nil // interrupted while following
		case err != nil:
			return explain(c.socket, err)
		}
		if c.output == "json" {
			b, err := protojson.Marshal(fl)
			if err != nil {
				return err
			}
			if _, err := fmt.Fprintf(out, "%s\n", b); err != nil {
				return err
			}
			continue
		}
		if _, err := io.WriteString(out, FlowLine(fl, names)); err != nil {
			return err
		}
	}
}

// FlowLine formats a flow as one line of text; names maps cluster IDs to
// names.
func FlowLine(fl *agentv1.Flow, names map[uint32]string) string {
	var b strings.Builder
	if fl.Lost > 0 {
		fmt.Fprintf(&b, "... %d flows lost: this stream did not keep up\n", fl.Lost)
	}
	end := func(addr string, id, cluster uint32) string {
		c := names[cluster]
		if c == "" {
			c = fmt.Sprintf("cluster %d", cluster)
		}
		return fmt.Sprintf("%s (identity %d, %s)", addr, id, c)
	}
	verdict := "passed"
	if fl.Dropped {
		verdict = "DROPPED"
	}
	fmt.Fprintf(&b, "%s %-7s %-4s %s -> %s %s %s",
		fl.Time.AsTime().Local().Format(time.StampMilli), fl.Direction, fl.Protocol,
		end(fl.Source, fl.SourceIdentity, fl.SourceClusterId),
		end(fl.Destination, fl.DestinationIdentity, fl.DestinationClusterId),
		verdict, fl.Reason)
	if fl.RuleId != 0 {
		fmt.Fprintf(&b, " rule %d", fl.RuleId)
	}
	if len(fl.Policies) > 0 {
		fmt.Fprintf(&b, " policy %s", strings.Join(fl.Policies, ","))
	}
	b.WriteByte('\n')
	return b.String()
}
