package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// readyPollInterval is how often a starting component's health endpoint is
// probed.
const readyPollInterval = 200 * time.Millisecond

// probeClient returns an HTTP client trusting the cluster CA; for the
// apiserver it presents the admin certificate, since /readyz's details
// need authorization (the controller manager's and scheduler's /healthz
// are open).
func (p *pki) probeClient(admin bool) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.ca.certPEM)
	tlsConfig := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if admin {
		cert, err := tls.X509KeyPair(p.admin.CertPEM, p.admin.KeyPEM)
		if err == nil {
			tlsConfig.Certificates = []tls.Certificate{cert}
		}
	}
	return &http.Client{
		Transport: &http.Transport{TLSClientConfig: tlsConfig, DisableKeepAlives: true},
		Timeout:   5 * time.Second,
	}
}

// waitReady polls url until it answers 200, the process exits, ctx ends or
// timeout passes. Errors name the component and carry its log's tail; an
// exit because the port was taken wraps errAddrInUse.
func waitReady(ctx context.Context, p *process, client *http.Client, url string, timeout time.Duration) error {
	defer client.CloseIdleConnections()
	start := time.Now()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	ticker := time.NewTicker(readyPollInterval)
	defer ticker.Stop()
	lastProbe := "no answer yet"
	for {
		status, err := probe(ctx, client, url)
		if err == nil && status == "" {
			return nil
		}
		if err != nil {
			lastProbe = err.Error()
		} else {
			lastProbe = status
		}
		select {
		case <-p.done:
			tail := p.logTail()
			err := p.exitError()
			if strings.Contains(tail, "address already in use") {
				err = fmt.Errorf("%w (%w)", err, errAddrInUse)
			}
			return fmt.Errorf("%w while starting; last lines of %s:\n%s", err, p.logPath, tail)
		case <-ctx.Done():
			return fmt.Errorf("start %s: %w; last probe of %s: %s; last lines of %s:\n%s",
				p.name, context.Cause(ctx), url, lastProbe, p.logPath, p.logTail())
		case <-deadline.C:
			return fmt.Errorf("%s not ready after %s; last probe of %s: %s; last lines of %s:\n%s",
				p.name, time.Since(start).Round(time.Millisecond), url, lastProbe, p.logPath, p.logTail())
		case <-ticker.C:
		}
	}
}

// probe GETs url: ("", nil) means ready; a non-empty status describes a
// non-200 answer.
func probe(ctx context.Context, client *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode == http.StatusOK {
		return "", nil
	}
	// /readyz lists the checks that fail; keep those lines.
	var failing []string
	for _, line := range strings.Split(string(body), "\n") {
		if strings.Contains(line, "[-]") {
			failing = append(failing, strings.TrimSpace(line))
		}
	}
	if len(failing) == 0 {
		failing = []string{strings.TrimSpace(string(body))}
	}
	return fmt.Sprintf("HTTP %d: %s", resp.StatusCode, strings.Join(failing, "; ")), nil
}
