// Package cli is the isthmus command line: each subcommand lives in its own
// file and calls into the package that does the work (internal/lab for the
// local lab, and so on). It holds flag parsing, output and user-facing
// errors, not mesh logic.
//
// It must not be imported by anything but cmd/isthmus.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// Options are the settings every subcommand shares.
type Options struct {
	// Verbose turns on debug logging to stderr.
	Verbose bool
	// Out and Err are where output and messages go.
	Out, Err io.Writer
}

// Logger returns the logger subcommands use: warnings and errors only,
// unless --verbose.
func (o *Options) Logger() *slog.Logger {
	level := slog.LevelWarn
	if o.Verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(o.Err, &slog.HandlerOptions{Level: level}))
}

// NewRootCommand returns the isthmus command with every subcommand,
// writing to stdout and stderr.
func NewRootCommand() *cobra.Command { return newRootCommand(os.Stdout, os.Stderr) }

func newRootCommand(out, errOut io.Writer) *cobra.Command {
	opts := &Options{Out: out, Err: errOut}
	root := &cobra.Command{
		Use:   "isthmus",
		Short: "Connect Kubernetes clusters into one mesh",
		Long: `isthmus connects Kubernetes clusters into one mesh: pods in one cluster
reach global services and pods in another by identity, over WireGuard, with
cross-cluster policy written against labels.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(opts.Out)
	root.SetErr(opts.Err)
	root.PersistentFlags().BoolVarP(&opts.Verbose, "verbose", "v", false, "log debug detail to stderr")
	// One line per top-level subcommand, each defined in its own file.
	root.AddCommand(
		newVersionCommand(opts),
		newEnableCommand(opts),
		newConnectCommand(opts),
		newDisconnectCommand(opts),
		newStatusCommand(opts),
		newLabCommand(opts),
	)
	return root
}

// Main runs the command line and returns the process exit code.
func Main() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
}

// Run runs the command line with args, writing to out and errOut, and
// returns the exit code: 0, the code of an ExitError, or 1 for any other
// error, which it prints to errOut.
func Run(ctx context.Context, args []string, out, errOut io.Writer) int {
	cmd := newRootCommand(out, errOut)
	cmd.SetArgs(args)
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(errOut, "Error: %v\n", err)
		var ee *ExitError
		if errors.As(err, &ee) {
			return ee.Code
		}
		return 1
	}
	return 0
}

// ExitError makes the command exit with Code instead of 1, e.g. to pass on
// the exit status of a command run inside a lab pod.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }
