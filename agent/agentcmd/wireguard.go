package agentcmd

import (
	"os"
	"os/exec"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/isthmus-mesh/isthmus/datapath/wireguard"
)

// helperCommand starts `isthmus-agent wireguard-device` from exe, logging
// like the agent into the agent's stderr. The helper keeps that open after
// the agent exits: whoever runs the agent should log to a file or a
// socket, not wait for the end of a pipe.
func helperCommand(exe string, o *options) wireguard.HelperCommand {
	return func(device string, mtu int) *exec.Cmd {
		args := []string{"wireguard-device", "--device", device, "--mtu", strconv.Itoa(mtu), "--log-level", o.logLevel}
		if o.logJSON {
			args = append(args, "--log-json")
		}
		cmd := exec.Command(exe, args...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		return cmd
	}
}

// newWireGuardDeviceCommand is the helper process that serves a userspace
// WireGuard device for the agent (--wireguard-userspace-helper): the
// device lives as long as this process, which outlives agent restarts. The
// agent starts it, or adopts one running; it can also run as a container
// of its own beside the agent's, where the agent's container restarts
// would otherwise take it along. A helper keeps running the binary it was
// started from: an upgraded agent adopts it as it is, and deleting the
// device (ip link del) makes the agent start a new one.
func newWireGuardDeviceCommand() *cobra.Command {
	o := &options{}
	var device string
	var mtu int
	cmd := &cobra.Command{
		Use:    "wireguard-device",
		Short:  "Serve a userspace WireGuard device for the agent (started by the agent)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := o.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return wireguard.ServeUserspace(cmd.Context(), logger.With("component", "wireguard-helper"), device, mtu)
		},
	}
	f := cmd.Flags()
	f.StringVar(&device, "device", wireguard.DefaultDeviceName, "name of the device (and of its UAPI socket under /var/run/wireguard)")
	f.IntVar(&mtu, "mtu", 0, "MTU to create the device with; the agent sets it right once it knows its peers (0: 1420)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.BoolVar(&o.logJSON, "log-json", false, "log in JSON instead of text")
	return cmd
}
