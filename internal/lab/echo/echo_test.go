package echo

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"
)

func TestServeAnswersWithIdentity(t *testing.T) {
	// Find two free ports, then serve on them.
	tcpPort, udpPort := freePort(t, "tcp"), freePort(t, "udp")
	id := Identity{Cluster: "c1", Node: "n1", Namespace: "default", Pod: "echo-1", PodIP: "10.1.1.2"}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, slog.New(slog.DiscardHandler), id, []Port{{"TCP", tcpPort}, {"UDP", udpPort}}, func() { close(ready) })
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatal(err)
	}

	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(tcpPort) + "/hello")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var got Response
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	if got.Identity != id || got.Port != tcpPort || got.Path != "/hello" || got.Client == "" {
		t.Errorf("HTTP answer = %+v", got)
	}

	c, err := net.Dial("udp", "127.0.0.1:"+strconv.Itoa(udpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	got = Response{}
	if err := json.Unmarshal(buf[:n], &got); err != nil || got.Identity != id || got.Port != udpPort {
		t.Errorf("UDP answer = %s (%v)", buf[:n], err)
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve = %v after cancel", err)
	}
}

func TestServeFailsOnTakenPort(t *testing.T) {
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	err = Serve(context.Background(), slog.New(slog.DiscardHandler), Identity{}, []Port{{"TCP", port}}, func() { t.Error("ready called") })
	if err == nil {
		t.Fatal("Serve succeeded on a taken port")
	}
}

func TestParsePort(t *testing.T) {
	for in, want := range map[string]string{"80": "tcp:80", "udp:53": "udp:53", "TCP:8080": "tcp:8080", "x": "", "sctp:9": "", "tcp:0": "", "70000": ""} {
		p, err := ParsePort(in)
		got := ""
		if err == nil {
			got = p.String()
		}
		if got != want {
			t.Errorf("ParsePort(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func freePort(t *testing.T, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", ":0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
