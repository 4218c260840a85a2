package store

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// DefaultDialTimeout is ClientConfig.DialTimeout's default.
const DefaultDialTimeout = 5 * time.Second

// ClientConfig says how to reach etcd.
type ClientConfig struct {
	// Endpoints are host:port or http(s)://host:port.
	Endpoints []string
	// CertFile and KeyFile are a client certificate (mTLS); CAFile
	// verifies the servers. Any of them turns TLS on.
	CertFile, KeyFile, CAFile string
	// DialTimeout bounds connecting (5s). Requests still need a context
	// deadline: the client waits for a reachable endpoint until then.
	DialTimeout time.Duration
	// Logger receives the client's logs (nil: discarded, so that a CLI
	// prints only its own messages).
	Logger *zap.Logger
}

// Connect returns a client of the endpoints. It does not wait for them to
// answer; the first request does.
func Connect(cfg ClientConfig) (*clientv3.Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints given")
	}
	where := strings.Join(cfg.Endpoints, ",")
	ccfg := clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		Logger:      cfg.Logger,
	}
	if ccfg.DialTimeout <= 0 {
		ccfg.DialTimeout = DefaultDialTimeout
	}
	if ccfg.Logger == nil {
		ccfg.Logger = zap.NewNop()
	}
	if cfg.CertFile != "" || cfg.KeyFile != "" || cfg.CAFile != "" {
		if (cfg.CertFile == "") != (cfg.KeyFile == "") {
			return nil, fmt.Errorf("etcd at %s: a client certificate needs both a cert file and a key file", where)
		}
		tlsInfo := transport.TLSInfo{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, TrustedCAFile: cfg.CAFile}
		tlsCfg, err := tlsInfo.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd at %s: tls: %w", where, err)
		}
		ccfg.TLS = tlsCfg
	}
	cli, err := clientv3.New(ccfg)
	if err != nil {
		return nil, fmt.Errorf("etcd at %s: %w", where, err)
	}
	return cli, nil
}
