// Package etcdserver runs one etcd member inside the process, over
// go.etcd.io/etcd/server/v3/embed, with the defaults xdpfw wants: periodic
// auto-compaction (docs/architecture.md, "Telemetry", telemetry budget) and etcd's own
// logs kept at warn level so that they do not drown the host's logs.
//
// It is what `xdpfw-etcd` runs, what the control plane starts when it is
// given no etcd endpoints, and what tests start instead of a real cluster.
package etcdserver

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Defaults of Config.
const (
	DefaultName                    = "default"
	DefaultClientURL               = "http://127.0.0.1:2379"
	DefaultPeerURL                 = "http://127.0.0.1:2380"
	DefaultAutoCompactionRetention = "5m"
	DefaultLogLevel                = "warn"
)

// Cluster states of Config.ClusterState.
const (
	ClusterStateNew      = embed.ClusterStateFlagNew
	ClusterStateExisting = embed.ClusterStateFlagExisting
)

// Config says how to run one member. The zero value of every field but
// DataDir has a default.
type Config struct {
	// Name is the member's name in InitialCluster ("default").
	Name string
	// DataDir holds the member's WAL and database. It is required: etcd
	// preallocates 64 MB WAL segments, so no default may land in a
	// working tree.
	DataDir string
	// ClientURLs and PeerURLs are listened on and advertised as they are,
	// so they must be addresses other members and clients can reach (no
	// 0.0.0.0, no port 0).
	ClientURLs []string
	PeerURLs   []string
	// InitialCluster is "m1=http://a:2380,m2=http://b:2380,..."; empty
	// means a cluster of this member alone.
	InitialCluster string
	// ClusterState is "new" (the default) to bootstrap a cluster, or
	// "existing" to join one this member was added to.
	ClusterState string
	// AutoCompactionRetention is how much history periodic compaction
	// keeps ("5m"; a bare number is hours). Every telemetry write is a
	// revision kept until compaction: 10,000 hosts writing a 2 KB document
	// every 5 s make 4 MB/s, so an hour of history (14 GB) would overrun
	// the 2 GiB quota while five minutes (1.2 GB) fit. A watcher that
	// falls further behind resyncs from a fresh read, as agents do.
	AutoCompactionRetention string
	// QuotaBackendBytes is the database size limit (0: etcd's 2 GiB).
	QuotaBackendBytes int64
	// Logger receives etcd's logs (nil: JSON on stderr).
	Logger *zap.Logger
	// LogLevel is the lowest level of etcd's own logs that is kept
	// ("warn"): at info, etcd logs every raft step and request it finds
	// slow.
	LogLevel string
	// DefragInterval is how often the defragmentation policy looks at the
	// database (DefaultDefragInterval; negative turns it off). It
	// defragments when half the file, and at least 64 MiB, is free.
	DefragInterval time.Duration
	// TLS, when set, makes the member serve its client and peer URLs (which
	// must then be https) over TLS and require a client certificate signed
	// by TLS.CAFile from every client and peer: with etcd's auth enabled,
	// the certificate's common name is the client's etcd user.
	TLS *TLSFiles
}

// TLSFiles are the member's certificate and key, and the CA its clients'
// and peers' certificates must chain to.
type TLSFiles struct {
	CertFile, KeyFile, CAFile string
	// RootCertFile and RootKeyFile, when set, are a client certificate of
	// etcd's root user: Start then turns etcd's authentication on with it
	// (once; a member whose cluster has it on is left as it is).
	RootCertFile, RootKeyFile string
}

// Server is one running member.
type Server struct {
	etcd      *embed.Etcd
	endpoints []string
	quiet     *atomic.Bool // see closingFilter

	errc       chan error    // the first error after start; closed by Close
	done       chan struct{} // closed when the forwarding goroutine ends
	defragDone chan struct{} // closed when the defragmentation policy ends
	closing    chan struct{} // closed when Close begins
	closeOnce  sync.Once
}

// Start starts a member and returns once it serves clients: for a new
// cluster, once the cluster has a leader and this member has joined it.
// It waits as long as ctx allows; give ctx a deadline to bound the wait
// for the other members.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	quiet := new(atomic.Bool)
	ecfg, err := embedConfig(cfg, quiet)
	if err != nil {
		return nil, err
	}
	if err := checkDataDir(ecfg.Dir); err != nil {
		return nil, err
	}
	e, err := embed.StartEtcd(ecfg)
	if err != nil {
		return nil, fmt.Errorf("etcd member %s (data dir %s): start: %w", ecfg.Name, ecfg.Dir, err)
	}

	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		abort(e, quiet)
		if err == nil {
			err = errors.New("stopped")
		}
		return nil, fmt.Errorf("etcd member %s: before it was ready: %w", ecfg.Name, err)
	case <-e.Server.StopNotify():
		abort(e, quiet)
		return nil, fmt.Errorf("etcd member %s stopped before it was ready (see its log)", ecfg.Name)
	case <-ctx.Done():
		abort(e, quiet)
		return nil, fmt.Errorf("etcd member %s: waiting for the cluster %s to elect a leader and admit this member: %w",
			ecfg.Name, ecfg.InitialCluster, ctx.Err())
	}

	s := &Server{
		etcd:    e,
		quiet:   quiet,
		errc:    make(chan error, 1),
		done:    make(chan struct{}),
		closing: make(chan struct{}),

		defragDone: make(chan struct{}),
	}
	for _, u := range ecfg.AdvertiseClientUrls {
		s.endpoints = append(s.endpoints, u.String())
	}
	if cfg.TLS != nil && cfg.TLS.RootCertFile != "" {
		if err := enableAuth(ctx, s.endpoints, cfg.TLS); err != nil {
			abort(e, quiet)
			return nil, fmt.Errorf("etcd member %s: %w", ecfg.Name, err)
		}
	}
	go s.forward()
	if every := cfg.DefragInterval; every >= 0 {
		if every == 0 {
			every = DefaultDefragInterval
		}
		go s.defragPolicy(every, e.GetLogger())
	} else {
		close(s.defragDone)
	}
	return s, nil
}

// Endpoints returns the client URLs, for clientv3.Config.Endpoints.
func (s *Server) Endpoints() []string { return append([]string(nil), s.endpoints...) }

// Err reports the first error of a running member: a listener that
// failed, or the member stopping on its own (removed from the cluster,
// data corruption). It is closed by Close.
func (s *Server) Err() <-chan error { return s.errc }

// Close stops the member gracefully: in-flight requests finish (within
// etcd's request timeout), a leader hands over leadership, then the
// listeners close. It is safe to call more than once; the error is
// always nil today and is there for io.Closer.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		<-s.defragDone
		s.quiet.Store(true)
		s.etcd.Close()
		<-s.done
		close(s.errc)
	})
	return nil
}

// forward turns embed's error channel (which also carries nil when a
// listener stops) and the server's stop notice into at most one error on
// s.errc. It runs from Start until Close, which waits for it.
func (s *Server) forward() {
	defer close(s.done)
	stopped := s.etcd.Server.StopNotify()
	for {
		select {
		case err, ok := <-s.etcd.Err():
			if !ok {
				return
			}
			if err != nil && !s.isClosing() {
				s.report(fmt.Errorf("etcd member %s: %w", s.etcd.Config().Name, err))
			}
		case <-stopped:
			stopped = nil
			if !s.isClosing() {
				s.report(fmt.Errorf("etcd member %s stopped (see its log)", s.etcd.Config().Name))
			}
		}
	}
}

func (s *Server) isClosing() bool {
	select {
	case <-s.closing:
		return true
	default:
		return false
	}
}

// report keeps the first error; later ones are only in etcd's log.
func (s *Server) report(err error) {
	select {
	case s.errc <- err:
	default:
	}
}

// abort closes a member that never became ready. embed's Close waits for
// the client servers, which wait for the member to be ready or stopping:
// stop the member first or Close blocks forever.
func abort(e *embed.Etcd, quiet *atomic.Bool) {
	quiet.Store(true)
	e.Server.HardStop()
	e.Close()
}

// embedConfig checks cfg and builds etcd's configuration from it.
func embedConfig(cfg Config, quiet *atomic.Bool) (*embed.Config, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("etcd: no data dir given (there is no default: etcd preallocates 64 MB WAL files)")
	}
	ecfg := embed.NewConfig()
	ecfg.Name = cfg.Name
	if ecfg.Name == "" {
		ecfg.Name = DefaultName
	}
	ecfg.Dir = cfg.DataDir

	clientURLs, err := parseURLs("client", cfg.ClientURLs, DefaultClientURL)
	if err != nil {
		return nil, err
	}
	peerURLs, err := parseURLs("peer", cfg.PeerURLs, DefaultPeerURL)
	if err != nil {
		return nil, err
	}
	if cfg.TLS != nil {
		if cfg.TLS.CertFile == "" || cfg.TLS.KeyFile == "" || cfg.TLS.CAFile == "" {
			return nil, errors.New("etcd: TLS needs a certificate, its key and a client CA")
		}
		for _, u := range append(append([]url.URL(nil), clientURLs...), peerURLs...) {
			if u.Scheme != "https" {
				return nil, fmt.Errorf("etcd: %s: with TLS every client and peer URL is https", u.String())
			}
		}
		tls := transport.TLSInfo{CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile, TrustedCAFile: cfg.TLS.CAFile, ClientCertAuth: true}
		ecfg.ClientTLSInfo, ecfg.PeerTLSInfo = tls, tls
	} else {
		for _, u := range append(append([]url.URL(nil), clientURLs...), peerURLs...) {
			if u.Scheme != "http" {
				return nil, fmt.Errorf("etcd: %s: without TLS files every client and peer URL is http", u.String())
			}
		}
	}
	ecfg.ListenClientUrls, ecfg.AdvertiseClientUrls = clientURLs, clientURLs
	ecfg.ListenPeerUrls, ecfg.AdvertisePeerUrls = peerURLs, peerURLs

	ecfg.InitialCluster = cfg.InitialCluster
	if ecfg.InitialCluster == "" {
		members := make([]string, len(peerURLs))
		for i, u := range peerURLs {
			members[i] = ecfg.Name + "=" + u.String()
		}
		ecfg.InitialCluster = strings.Join(members, ",")
	}
	switch cfg.ClusterState {
	case "", ClusterStateNew:
		ecfg.ClusterState = ClusterStateNew
	case ClusterStateExisting:
		ecfg.ClusterState = ClusterStateExisting
	default:
		return nil, fmt.Errorf("etcd: cluster state %q: want %q or %q", cfg.ClusterState, ClusterStateNew, ClusterStateExisting)
	}

	ecfg.AutoCompactionMode = embed.CompactorModePeriodic
	ecfg.AutoCompactionRetention = cfg.AutoCompactionRetention
	if ecfg.AutoCompactionRetention == "" {
		ecfg.AutoCompactionRetention = DefaultAutoCompactionRetention
	}
	ecfg.QuotaBackendBytes = cfg.QuotaBackendBytes

	lg, err := etcdLogger(cfg.Logger, cfg.LogLevel)
	if err != nil {
		return nil, err
	}
	lg = lg.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return closingFilter{c, quiet} }))
	ecfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg.With(zap.String("member", ecfg.Name)))
	ecfg.LogLevel = cfg.LogLevel
	if ecfg.LogLevel == "" {
		ecfg.LogLevel = DefaultLogLevel
	}
	return ecfg, nil
}

func parseURLs(what string, in []string, def string) ([]url.URL, error) {
	if len(in) == 0 {
		in = []string{def}
	}
	out := make([]url.URL, 0, len(in))
	for _, s := range in {
		u, err := url.Parse(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("etcd: %s URL %q: want http(s)://HOST:PORT: %w", what, s, err)
		}
		if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" || u.Port() == "" {
			return nil, fmt.Errorf("etcd: %s URL %q: want http(s)://HOST:PORT", what, s)
		}
		if u.Port() == "0" {
			return nil, fmt.Errorf("etcd: %s URL %q: port 0 cannot be advertised; pick a free port", what, s)
		}
		out = append(out, *u)
	}
	return out, nil
}

// etcdLogger returns the logger for etcd's own logs: lg (or JSON on
// stderr) with levels below level dropped.
func etcdLogger(lg *zap.Logger, level string) (*zap.Logger, error) {
	if level == "" {
		level = DefaultLogLevel
	}
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("etcd: log level %q: %w", level, err)
	}
	if lg == nil {
		zc := zap.NewProductionConfig()
		zc.Level = zap.NewAtomicLevelAt(lvl)
		zc.Sampling = nil
		lg, err = zc.Build()
		if err != nil {
			return nil, fmt.Errorf("etcd: build logger: %w", err)
		}
		return lg.Named("etcd"), nil
	}
	// IncreaseLevel complains when asked to lower a level: only raise it.
	if lvl > zapcore.LevelOf(lg.Core()) {
		lg = lg.WithOptions(zap.IncreaseLevel(lvl))
	}
	return lg.Named("etcd"), nil
}

// closeNoise is what embed logs, at error level, for each listener that
// Close itself closes.
const closeNoise = "setting up serving from embedded etcd failed."

// closingFilter drops closeNoise once the member is being closed, so that
// a clean stop does not log errors that send operators looking for a
// fault. Before that the message is a real failure and is kept.
type closingFilter struct {
	zapcore.Core
	closing *atomic.Bool
}

func (c closingFilter) With(fields []zapcore.Field) zapcore.Core {
	return closingFilter{c.Core.With(fields), c.closing}
}

func (c closingFilter) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if e.Message == closeNoise && c.closing.Load() {
		return ce
	}
	if e.Message == cancelledTxn && c.Core.Enabled(e.Level) {
		return ce.AddCore(e, c) // Write looks at the error
	}
	return c.Core.Check(e, ce)
}

// cancelledTxn is what etcd logs, at error level, when a read in a
// transaction ends because its client cancelled it: a client that stops
// (a replica shutting down mid-round) is not a fault of the member.
const cancelledTxn = "unexpected error during readonly txn"

// Write drops cancelledTxn when its error is a cancellation and passes
// everything else on.
func (c closingFilter) Write(e zapcore.Entry, fields []zapcore.Field) error {
	if e.Message == cancelledTxn {
		for _, f := range fields {
			if err, ok := f.Interface.(error); ok && f.Type == zapcore.ErrorType &&
				(strings.Contains(err.Error(), "context canceled") || strings.Contains(err.Error(), "context cancelled")) {
				return nil
			}
		}
	}
	return c.Core.Write(e, fields)
}

// checkDataDir creates the data dir and makes sure it is writable, so that
// a bad path fails here with its name rather than deep inside etcd.
func checkDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("etcd data dir %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, ".xdpfw-write-check-")
	if err != nil {
		return fmt.Errorf("etcd data dir %s is not writable: %w", dir, err)
	}
	name := f.Name()
	f.Close()
	if err := os.Remove(name); err != nil {
		return fmt.Errorf("etcd data dir %s: %w", dir, err)
	}
	return nil
}
