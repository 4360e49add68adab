// Package echo is the workload of every lab pod: on each declared container
// port it answers with the names of the pod, node and cluster that served the
// request, so tests and demos can see where traffic landed.
//
// TCP ports serve HTTP: any method and path gets 200 and a JSON Response
// (Content-Type application/json). UDP ports answer each datagram with the
// same JSON.
//
// It must not import other isthmus packages.
package echo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Identity is who answers.
type Identity struct {
	Cluster   string `json:"cluster"`
	Node      string `json:"node"`
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	PodIP     string `json:"podIP"`
}

// Response is what every request gets back.
type Response struct {
	Identity
	// Port is the port the request arrived on.
	Port int `json:"port"`
	// Client is the address the request came from, as the server saw it.
	Client string `json:"client"`
	// Path is the HTTP request path (empty for UDP).
	Path string `json:"path,omitempty"`
}

// Port is one port to serve.
type Port struct {
	Protocol string // "TCP" or "UDP"
	Number   int
}

// ParsePort reads "tcp:8080", "udp:53" or "8080" (TCP).
func ParsePort(s string) (Port, error) {
	proto, num, ok := strings.Cut(s, ":")
	if !ok {
		proto, num = "TCP", s
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 1 || n > 65535 {
		return Port{}, fmt.Errorf("port %q: want [tcp|udp:]1-65535", s)
	}
	p := Port{Protocol: strings.ToUpper(proto), Number: n}
	if p.Protocol != "TCP" && p.Protocol != "UDP" {
		return Port{}, fmt.Errorf("port %q: protocol %q is neither tcp nor udp", s, proto)
	}
	return p, nil
}

func (p Port) String() string { return strings.ToLower(p.Protocol) + ":" + strconv.Itoa(p.Number) }

// Serve listens on every port, calls ready once all are bound, and serves
// until ctx ends. With no ports it only waits for ctx, as a pod without
// ports still runs.
func Serve(ctx context.Context, logger *slog.Logger, id Identity, ports []Port, ready func()) error {
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	var wg sync.WaitGroup
	errc := make(chan error, len(ports))
	for _, p := range ports {
		addr := ":" + strconv.Itoa(p.Number)
		switch p.Protocol {
		case "TCP":
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("listen on %s: %w", p, err)
			}
			srv := &http.Server{Handler: handler(id, p.Number), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelDebug)}
			closers = append(closers, func() { srv.Close() })
			wg.Go(func() {
				if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
					errc <- fmt.Errorf("serve %s: %w", p, err)
				}
			})
		case "UDP":
			conn, err := net.ListenPacket("udp", addr)
			if err != nil {
				return fmt.Errorf("listen on %s: %w", p, err)
			}
			closers = append(closers, func() { conn.Close() })
			wg.Go(func() {
				if err := serveUDP(conn, id, p.Number); !errors.Is(err, net.ErrClosed) {
					errc <- fmt.Errorf("serve %s: %w", p, err)
				}
			})
		default:
			return fmt.Errorf("port %d: unsupported protocol %q", p.Number, p.Protocol)
		}
	}
	ready()
	logger.Info("serving", "ports", ports)
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	for _, c := range closers {
		c()
	}
	closers = nil
	wg.Wait()
	return err
}

func handler(id Identity, port int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(Response{Identity: id, Port: port, Client: r.RemoteAddr, Path: r.URL.Path})
	})
}

func serveUDP(conn net.PacketConn, id Identity, port int) error {
	buf := make([]byte, 64<<10)
	for {
		_, from, err := conn.ReadFrom(buf)
		if err != nil {
			return err
		}
		b, _ := json.Marshal(Response{Identity: id, Port: port, Client: from.String()})
		_, _ = conn.WriteTo(append(b, '\n'), from)
	}
}
