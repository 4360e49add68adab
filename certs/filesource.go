package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// FileSourceConfig names the PEM files a FileSource serves.
type FileSourceConfig struct {
	// CertFile and KeyFile are a certificate (chain) and its private key.
	// Set both or neither; a server needs them, a client sends them when
	// set.
	CertFile string
	KeyFile  string
	// CAFile holds the trusted CA certificates. On a server these are the
	// CAs client certificates must chain to; when empty, no client
	// certificate is asked for. On a client they are the CAs the server's
	// certificate must chain to; when empty, the system roots are used.
	CAFile string
	// CheckInterval is the least time between two looks at the files'
	// modification times. Zero means a look (one stat per file, no read
	// unless a file changed) at every new connection.
	CheckInterval time.Duration
}

// FileSource serves TLS certificates from files and picks up rotated files
// for new connections, without a restart: a changed modification time, size
// or inode of any file reloads them all. A rotation that leaves the files
// inconsistent for a moment (certificate written, key not yet) keeps the
// previous certificates until the files load again. It is safe for
// concurrent use.
type FileSource struct {
	cfg FileSourceConfig

	mu        sync.Mutex // guards the fields below
	lastCheck time.Time
	stamps    []os.FileInfo // of cfg's files, in files() order
	cert      *tls.Certificate
	pool      *x509.CertPool
	loadErr   error // of the last reload attempt, nil once loaded
}

// NewFileSource loads the files once; an error names the file at fault.
func NewFileSource(cfg FileSourceConfig) (*FileSource, error) {
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, fmt.Errorf("certificate file %q and key file %q: give both or neither", cfg.CertFile, cfg.KeyFile)
	}
	if cfg.CertFile == "" && cfg.CAFile == "" {
		return nil, errors.New("no certificate, key or CA file given")
	}
	s := &FileSource{cfg: cfg}
	stamps, err := s.stat()
	if err != nil {
		return nil, err
	}
	if err := s.load(stamps); err != nil {
		return nil, err
	}
	s.lastCheck = time.Now()
	return s, nil
}

func (s *FileSource) files() []string {
	var fs []string
	for _, f := range []string{s.cfg.CertFile, s.cfg.KeyFile, s.cfg.CAFile} {
		if f != "" {
			fs = append(fs, f)
		}
	}
	return fs
}

func (s *FileSource) stat() ([]os.FileInfo, error) {
	fs := s.files()
	stamps := make([]os.FileInfo, len(fs))
	for i, f := range fs {
		fi, err := os.Stat(f)
		if err != nil {
			return nil, fmt.Errorf("certificate source: %w", err)
		}
		stamps[i] = fi
	}
	return stamps, nil
}

// load reads every file and installs them; on error the previous contents
// stay. Callers hold s.mu or own s exclusively.
func (s *FileSource) load(stamps []os.FileInfo) error {
	var (
		cert *tls.Certificate
		pool *x509.CertPool
	)
	if s.cfg.CertFile != "" {
		certPEM, err := os.ReadFile(s.cfg.CertFile)
		if err != nil {
			return fmt.Errorf("read certificate: %w", err)
		}
		keyPEM, err := os.ReadFile(s.cfg.KeyFile)
		if err != nil {
			return fmt.Errorf("read key: %w", err)
		}
		c, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return fmt.Errorf("load certificate %s with key %s: %w", s.cfg.CertFile, s.cfg.KeyFile, err)
		}
		cert = &c
	}
	if s.cfg.CAFile != "" {
		caPEM, err := os.ReadFile(s.cfg.CAFile)
		if err != nil {
			return fmt.Errorf("read CA file: %w", err)
		}
		pool, err = NewCertPool(caPEM)
		if err != nil {
			return fmt.Errorf("load CA file %s: %w", s.cfg.CAFile, err)
		}
	}
	s.cert, s.pool, s.stamps = cert, pool, stamps
	return nil
}

// refresh reloads the files when they changed since the last load.
func (s *FileSource) refresh() {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if s.cfg.CheckInterval > 0 && now.Sub(s.lastCheck) < s.cfg.CheckInterval {
		return
	}
	s.lastCheck = now
	stamps, err := s.stat()
	if err != nil {
		s.loadErr = err
		return
	}
	if sameStamps(stamps, s.stamps) {
		return
	}
	// Stamps are taken before reading: a write racing the read shows up as
	// a change at the next look.
	s.loadErr = s.load(stamps)
}

func sameStamps(a, b []os.FileInfo) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !os.SameFile(a[i], b[i]) || !a[i].ModTime().Equal(b[i].ModTime()) || a[i].Size() != b[i].Size() {
			return false
		}
	}
	return true
}

// Certificate returns the current certificate, reloading rotated files. It
// is nil when the source has no certificate file.
func (s *FileSource) Certificate() *tls.Certificate {
	s.refresh()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cert
}

// Pool returns the current CA pool, reloading rotated files. It is nil when
// the source has no CA file.
func (s *FileSource) Pool() *x509.CertPool {
	s.refresh()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pool
}

// Err returns why the last reload of rotated files failed, or nil when the
// files in use are the current ones.
func (s *FileSource) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loadErr
}

func (s *FileSource) current() (*tls.Certificate, *x509.CertPool) {
	s.refresh()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cert, s.pool
}

// nextProtos are offered by servers: gRPC (which etcd speaks) needs h2
// negotiated, and GetConfigForClient's config is the one that counts.
var nextProtos = []string{"h2", "http/1.1"}

// ServerConfig returns a server TLS config that presents the current
// certificate and, when the source has a CA file, requires client
// certificates chaining to the current CAs. Both are looked up again for
// each new connection.
func (s *FileSource) ServerConfig() (*tls.Config, error) {
	if s.cfg.CertFile == "" {
		return nil, errors.New("server TLS config: no certificate file given")
	}
	perConn := func() *tls.Config {
		cert, pool := s.current()
		c := &tls.Config{
			MinVersion:   tls.VersionTLS12,
			NextProtos:   append([]string(nil), nextProtos...),
			Certificates: []tls.Certificate{*cert},
		}
		if pool != nil {
			c.ClientCAs = pool
			c.ClientAuth = tls.RequireAndVerifyClientCert
		}
		return c
	}
	base := perConn()
	base.Certificates = nil
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { return perConn(), nil }
	return base, nil
}

// ClientConfig returns a client TLS config that presents the current
// certificate (when the source has one) for each new connection.
//
// The server's certificate is verified against the source's CAs (the
// system roots without a CA file). With serverName set, the CAs are looked
// up again for each new connection and the certificate must be valid for
// serverName. Without it, the CAs are those of this call and the name is the
// host dialled, so call again to pick up a rotated CA file.
func (s *FileSource) ClientConfig(serverName string) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if s.cfg.CertFile != "" {
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, _ := s.current()
			return cert, nil
		}
	}
	if s.cfg.CAFile == "" {
		return c
	}
	if serverName == "" {
		// The standard verification needs the dialled name, which only the
		// TLS stack knows for IP addresses (no SNI is sent for them).
		_, c.RootCAs = s.current()
		return c
	}
	// Verify by hand against the current pool; VerifyConnection runs in
	// place of the standard check, which InsecureSkipVerify turns off.
	c.InsecureSkipVerify = true
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("server sent no certificate")
		}
		_, pool := s.current()
		opts := x509.VerifyOptions{
			DNSName:       serverName,
			Roots:         pool,
			Intermediates: x509.NewCertPool(),
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		for _, ic := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(ic)
		}
		if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
			return &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
		}
		return nil
	}
	return c
}
