package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/xdpfw/xdpfw/proto"
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
	// Keepalives notice a member that stopped answering (a cut cable, a
	// blackhole), so requests move to another member.
	ccfg.DialKeepAliveTime, ccfg.DialKeepAliveTimeout = 2*time.Second, 2*time.Second
	// gRPC's reconnect backoff grows to 120 s by default: a client cut off
	// for a minute would then learn of etcd's return a minute late. Capped
	// at 5 s, with gRPC's own jitter.
	ccfg.DialOptions = []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           grpcbackoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
		MinConnectTimeout: 5 * time.Second,
	})}
	cli, err := clientv3.New(ccfg)
	if err != nil {
		return nil, fmt.Errorf("etcd at %s: %w", where, err)
	}
	return cli, nil
}

// Open connects to etcd (Connect) and returns a store over the connection,
// which Close releases.
func Open(cfg ClientConfig, keys proto.Keys) (*Store, error) {
	cli, err := Connect(cfg)
	if err != nil {
		return nil, err
	}
	s := New(cli, keys)
	s.owned = true
	return s, nil
}

// Close releases the connection of a store made by Open (a store made by
// New leaves its client to the caller).
func (s *Store) Close() error {
	if !s.owned {
		return nil
	}
	return s.cli.Close()
}

// Ping makes one linearizable read (of the prefix key itself, counting
// only): it says whether etcd answers reads, a quorum being there, within
// ctx.
func (s *Store) Ping(ctx context.Context) error {
	if _, err := s.cli.Get(ctx, s.keys.Prefix, clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("etcd read: %w", err)
	}
	return nil
}

// Unavailable reports whether err means etcd could not be reached or had
// no leader in time (a caller may try again), as opposed to a refusal.
func Unavailable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return true
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		switch ee.Code() {
		case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
			return true
		}
	}
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
			return true
		}
	}
	return false
}
