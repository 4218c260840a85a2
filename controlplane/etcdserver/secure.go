package etcdserver

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/xdpfw/xdpfw/controlplane/pki"
)

// A secure member (docs/architecture.md, "Trust model") serves TLS, takes
// only clients and peers with a certificate of its CA, and has etcd's
// authentication on: a client certificate's common name is its etcd user.
// The control plane is etcd's root user; each enrolled host is a user
// whose role allows only its own keys.

// PKIDir is where a member's certificates live in its data directory
// unless told otherwise.
const PKIDir = "pki"

// PreparePKI loads the CA in dir, creating it on first use, and writes a
// server certificate for the hosts of clientURLs and peerURLs (issued
// again at every start, so that it names the addresses in use) and,
// unless there is one, a client certificate of etcd's root user.
func PreparePKI(dir string, clientURLs, peerURLs []string) (*pki.CA, *TLSFiles, error) {
	ca, err := pki.LoadOrCreateCA(dir, "xdpfw etcd CA")
	if err != nil {
		return nil, nil, err
	}
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	for _, raw := range append(append([]string(nil), clientURLs...), peerURLs...) {
		u, err := url.Parse(raw)
		if err != nil || u.Hostname() == "" {
			return nil, nil, fmt.Errorf("etcd URL %q: want https://HOST:PORT", raw)
		}
		hosts = append(hosts, u.Hostname())
	}
	name, _ := os.Hostname()
	if name != "" {
		hosts = append(hosts, name)
	}
	certPEM, keyPEM, err := ca.IssueServer("xdpfw etcd", dedupe(hosts))
	if err != nil {
		return nil, nil, err
	}
	files := &TLSFiles{CAFile: filepath.Join(dir, pki.CACertFile)}
	if files.CertFile, files.KeyFile, err = pki.WritePair(dir, "etcd-server", certPEM, keyPEM); err != nil {
		return nil, nil, err
	}
	files.RootCertFile, files.RootKeyFile = filepath.Join(dir, pki.RootCertFile), filepath.Join(dir, pki.RootKeyFile)
	if _, err := os.Stat(files.RootCertFile); errors.Is(err, os.ErrNotExist) {
		certPEM, keyPEM, err := ca.IssueClient(pki.RootUser)
		if err != nil {
			return nil, nil, err
		}
		if _, _, err := pki.WritePair(dir, "root", certPEM, keyPEM); err != nil {
			return nil, nil, err
		}
	}
	return ca, files, nil
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// enableAuth turns etcd's authentication on, once, as the root user of
// the certificate in files: the user is added (with no password: it
// authenticates by certificate) with etcd's root role first, as etcd
// requires. A cluster whose authentication is on is left as it is.
func enableAuth(ctx context.Context, endpoints []string, files *TLSFiles) error {
	tlsInfo := transport.TLSInfo{CertFile: files.RootCertFile, KeyFile: files.RootKeyFile, TrustedCAFile: files.CAFile}
	tlsCfg, err := tlsInfo.ClientConfig()
	if err != nil {
		return fmt.Errorf("root client certificate: %w", err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return fmt.Errorf("connect as root: %w", err)
	}
	defer cli.Close()
	st, err := cli.AuthStatus(ctx)
	if err != nil {
		return fmt.Errorf("auth status: %w", err)
	}
	if st.Enabled {
		return nil
	}
	if _, err := cli.UserAddWithOptions(ctx, pki.RootUser, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return fmt.Errorf("add user %s: %w", pki.RootUser, err)
	}
	if _, err := cli.UserGrantRole(ctx, pki.RootUser, "root"); err != nil {
		return fmt.Errorf("grant role root to %s: %w", pki.RootUser, err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		return fmt.Errorf("enable authentication: %w", err)
	}
	return nil
}
