package netnstest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// ServeEcho serves TCP on port (0 picks one) on every address of the pod,
// both families: each connection first receives the pod's name and a
// newline, then gets back everything it sends. It returns the port and
// stops when the test ends.
func (p *Pod) ServeEcho(tb testing.TB, port int) int {
	tb.Helper()
	l, err := p.NS.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		tb.Fatalf("pod %s: listen: %v", p.Name, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		var conns sync.WaitGroup
		defer conns.Wait()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Go(func() {
				defer c.Close()
				if _, err := io.WriteString(c, p.Name+"\n"); err != nil {
					return
				}
				_, _ = io.Copy(c, c)
			})
		}
	})
	tb.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	return l.Addr().(*net.TCPAddr).Port
}

// Exchange connects from a namespace to address, a literal IP and port
// served by ServeEcho, and checks that size random bytes sent come back
// intact while they are still being sent: a real connection with data
// both ways. It returns the name of the pod that answered.
func Exchange(ctx context.Context, from *Namespace, address string, size int) (server string, err error) {
	c, err := from.Dial(ctx, "tcp", address)
	if err != nil {
		return "", fmt.Errorf("connect to %s from netns %s: %w", address, from.Name(), err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	} else {
		_ = c.SetDeadline(time.Now().Add(time.Minute))
	}
	r := bufio.NewReader(c)
	greeting, err := r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read greeting from %s: %w", address, err)
	}
	server = strings.TrimSuffix(greeting, "\n")

	sent := make([]byte, size)
	_, _ = rand.Read(sent)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(sent)
		if cw, ok := c.(interface{ CloseWrite() error }); ok && err == nil {
			err = cw.CloseWrite()
		}
		werr <- err
	}()
	got, rerr := io.ReadAll(r)
	if err := errors.Join(<-werr, rerr); err != nil {
		return server, fmt.Errorf("exchange %d bytes with %s (%s): %w", size, server, address, err)
	}
	if !bytes.Equal(got, sent) {
		return server, fmt.Errorf("exchange with %s (%s): sent %d bytes, got back %d different ones", server, address, size, len(got))
	}
	return server, nil
}
