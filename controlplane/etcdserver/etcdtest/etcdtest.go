// Package etcdtest starts real etcd members for tests: on 127.0.0.1, on
// ports that were free a moment ago, with data under t.TempDir() (never in
// the working tree: etcd preallocates 64 MB WAL files).
package etcdtest

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/xdpfw/xdpfw/controlplane/etcdserver"
	"github.com/xdpfw/xdpfw/controlplane/pki"
)

// StartTimeout bounds the wait for a single member to serve.
const StartTimeout = 30 * time.Second

// FreeURLs returns n http://127.0.0.1:PORT URLs on ports the kernel just
// handed out and that were closed again. embed cannot listen on port 0
// (it advertises what it listens on), so this is the next best thing; a
// port taken in between makes Start fail with "address already in use".
func FreeURLs(t testing.TB, n int) []string {
	t.Helper()
	urls := make([]string, 0, n)
	var ls []net.Listener
	// Hold every listener until all are picked so that no two are equal.
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("pick a free port: %v", err)
		}
		ls = append(ls, l)
		urls = append(urls, "http://"+l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return urls
}

// Config returns the configuration of a single member named name on free
// ports, its data in a fresh t.TempDir().
func Config(t testing.TB, name string) etcdserver.Config {
	t.Helper()
	urls := FreeURLs(t, 2)
	return etcdserver.Config{
		Name:       name,
		DataDir:    t.TempDir(),
		ClientURLs: urls[:1],
		PeerURLs:   urls[1:],
		Logger:     zap.NewNop(),
	}
}

// Start runs a single member for the length of the test.
func Start(t testing.TB) *etcdserver.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	s, err := etcdserver.Start(ctx, Config(t, "test"))
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Client returns a client of endpoints, closed at the end of the test.
func Client(t testing.TB, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcd client of %v: %v", endpoints, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// StartWithClient is Start and a client of the member.
func StartWithClient(t testing.TB) (*etcdserver.Server, *clientv3.Client) {
	t.Helper()
	s := Start(t)
	return s, Client(t, s.Endpoints())
}

// Secure is a member serving TLS with client certificates and etcd's
// authentication on, as the control plane runs its own by default.
type Secure struct {
	*etcdserver.Server
	// CA signs the member's and its clients' certificates.
	CA *pki.CA
	// Files are the member's certificate and key, the CA's certificate
	// (CAFile) and the root user's client certificate.
	Files *etcdserver.TLSFiles
	// Dir holds the PKI's files.
	Dir string
}

// StartSecure runs a secure single member for the length of the test.
func StartSecure(t testing.TB) *Secure {
	t.Helper()
	cfg := Config(t, "secure")
	for i, u := range cfg.ClientURLs {
		cfg.ClientURLs[i] = "https" + strings.TrimPrefix(u, "http")
	}
	for i, u := range cfg.PeerURLs {
		cfg.PeerURLs[i] = "https" + strings.TrimPrefix(u, "http")
	}
	dir := t.TempDir()
	ca, files, err := etcdserver.PreparePKI(dir, cfg.ClientURLs, cfg.PeerURLs)
	if err != nil {
		t.Fatalf("etcd PKI: %v", err)
	}
	cfg.TLS = files
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	s, err := etcdserver.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start secure etcd: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return &Secure{Server: s, CA: ca, Files: files, Dir: dir}
}

// Issue writes a client certificate of user into the PKI directory and
// returns its files.
func (s *Secure) Issue(t testing.TB, user string) (certFile, keyFile string) {
	t.Helper()
	certPEM, keyPEM, err := s.CA.IssueClient(user)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err = pki.WritePair(s.Dir, strings.NewReplacer(":", "-", "/", "-").Replace(user), certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
