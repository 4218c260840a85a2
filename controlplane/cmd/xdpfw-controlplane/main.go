// Command xdpfw-controlplane serves the control plane's API (docs/architecture.md,
// "The control plane") and runs the rollout controller. Several replicas can share
// one etcd: each serves the API, and the one elected leader runs the
// controller.
//
// With --etcd-endpoints it uses that etcd cluster; without, it starts an
// embedded single etcd member with its data in --data-dir, listening on
// --etcd-listen-client so that agents can reach it. That member is secure
// unless told --insecure-etcd: it serves TLS, takes only clients with a
// certificate of the CA the control plane creates on its first start in
// <data-dir>/pki, and has etcd's authentication on. The control plane is
// etcd's root user; hosts get their own users by enrollment
// (docs/architecture.md, "Trust model").
//
// It prints one line to stdout once it serves:
//
//	xdpfw-controlplane: ready, API at http://127.0.0.1:8080
//
// and logs JSON to stderr. SIGTERM or SIGINT stops it gracefully (exit
// 0): the API finishes its requests, the controller resigns leadership,
// the embedded member stops. SIGHUP reads the tokens file again. A
// failure exits 1, bad flags exit 2.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/xdpfw/xdpfw/controlplane/api"
	"github.com/xdpfw/xdpfw/controlplane/auth"
	"github.com/xdpfw/xdpfw/controlplane/etcdserver"
	"github.com/xdpfw/xdpfw/controlplane/pki"
	"github.com/xdpfw/xdpfw/controlplane/rollout"
	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// Timeouts of start and stop.
const (
	etcdStartTimeout = 2 * time.Minute
	etcdCheckTimeout = 5 * time.Second
	shutdownTimeout  = 15 * time.Second
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, hup)
	signal.Stop(hup)
	stop()
	os.Exit(code)
}

// options are the parsed flags.
type options struct {
	listen, tokensFile            string
	tlsCert, tlsKey, clientCA     string
	etcdEndpoints                 []string
	etcdCert, etcdKey, etcdCACert string
	dataDir, etcdListen, etcdPeer string
	prefix, name                  string
	level                         zapcore.Level
	etcdTimeout, rolloutInterval  time.Duration
	rolloutRetention              time.Duration
	insecureHTTP                  bool
	insecureEtcd                  bool
	pkiDir, etcdCAKey             string
	gc                            rollout.GCOptions
}

// parseFlags returns the options, or an exit code and nothing when the
// flags are wrong or --help was asked for.
func parseFlags(args []string, stderr io.Writer) (*options, int) {
	fs := flag.NewFlagSet("xdpfw-controlplane", flag.ContinueOnError)
	fs.SetOutput(stderr)
	host, _ := os.Hostname()
	o := &options{}
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8080", "address the API listens on (HOST:PORT)")
	fs.StringVar(&o.tokensFile, "tokens-file", "", "YAML file of bearer tokens and their roles (required; SIGHUP reads it again)")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "certificate of the API (HTTPS; with --tls-key)")
	fs.StringVar(&o.tlsKey, "tls-key", "", "key of --tls-cert")
	fs.BoolVar(&o.insecureHTTP, "insecure-http", false, "serve plain HTTP on an address that is not loopback: bearer tokens then cross the network in clear (use --tls-cert instead)")
	fs.StringVar(&o.clientCA, "client-ca", "", "CA certificates that sign client certificates: every client must present one (mTLS; needs --tls-cert)")
	endpoints := fs.String("etcd-endpoints", "", "comma-separated etcd endpoints (empty: run an embedded etcd member in --data-dir)")
	fs.StringVar(&o.etcdCert, "etcd-cert", "", "client certificate for etcd (mTLS)")
	fs.StringVar(&o.etcdKey, "etcd-key", "", "key of --etcd-cert")
	fs.StringVar(&o.etcdCACert, "etcd-cacert", "", "CA certificate that signed etcd's")
	fs.StringVar(&o.dataDir, "data-dir", "", "data directory of the embedded etcd member (required without --etcd-endpoints; etcd preallocates 64 MB WAL files)")
	fs.StringVar(&o.etcdListen, "etcd-listen-client", "", "client URL of the embedded etcd member, for this process and the agents (https://127.0.0.1:2379; http:// with --insecure-etcd)")
	fs.StringVar(&o.etcdPeer, "etcd-listen-peer", "", "peer URL of the embedded etcd member (https://127.0.0.1:2380; http:// with --insecure-etcd)")
	fs.BoolVar(&o.insecureEtcd, "insecure-etcd", false, "run the embedded etcd member on plain HTTP with no authentication: anyone who reaches it controls every host's rules")
	fs.StringVar(&o.pkiDir, "etcd-pki-dir", "", "where the embedded member's CA, server and root certificates live (default <data-dir>/pki; the CA is created on first start)")
	fs.StringVar(&o.etcdCAKey, "etcd-ca-key", "", "key of --etcd-cacert, to sign enrolled hosts' certificates for an etcd cluster of your own (with --etcd-endpoints)")
	fs.StringVar(&o.prefix, "prefix", proto.DefaultKeyPrefix, "etcd key prefix of xdpfw's documents")
	fs.StringVar(&o.name, "name", host, "name of this replica (in leader election and rollout states; the embedded member's name too)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&o.etcdTimeout, "etcd-timeout", api.DefaultEtcdTimeout, "how long an API request waits for etcd before answering 503")
	fs.DurationVar(&o.rolloutInterval, "rollout-interval", 0, "how often the rollout controller looks at the fleet (0: its default)")
	fs.DurationVar(&o.rolloutRetention, "rollout-retention", rollout.DefaultRetention, "how long finished rollouts are kept (the newest of each rule set always is); negative: forever")
	fs.IntVar(&o.gc.KeepVersions, "keep-versions", rollout.DefaultKeepVersions, "newest versions of each rule set always kept; older ones go when no host, release or rollout needs them (negative: keep all)")
	fs.DurationVar(&o.gc.ChunkGrace, "chunk-grace", rollout.DefaultChunkGrace, "how long a chunk no version names is kept after it was written")
	fs.DurationVar(&o.gc.AuditRetention, "audit-retention", 0, "how long audit records stay in etcd; older ones are appended to --audit-export, then deleted (0: forever)")
	fs.StringVar(&o.gc.AuditExport, "audit-export", "", "JSON-lines file audit records are appended to before they are deleted (default <data-dir>/audit-export.jsonl with an embedded member)")
	fs.DurationVar(&o.gc.Interval, "gc-interval", rollout.DefaultGCInterval, "how often the leader collects old versions, chunks and audit records")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, exitOK
		}
		return nil, exitUsage
	}
	usage := func(format string, args ...any) (*options, int) {
		fmt.Fprintf(stderr, "xdpfw-controlplane: %s (see --help)\n", fmt.Sprintf(format, args...))
		return nil, exitUsage
	}
	if fs.NArg() > 0 {
		return usage("unexpected argument %q", fs.Arg(0))
	}
	if o.tokensFile == "" {
		return usage("--tokens-file is required: every API request needs a token (tokens: [{name: NAME, role: viewer|operator|admin, token: SECRET}])")
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return usage("--tls-cert and --tls-key go together")
	}
	if o.clientCA != "" && o.tlsCert == "" {
		return usage("--client-ca needs --tls-cert and --tls-key: client certificates are checked over TLS")
	}
	if o.tlsCert == "" && !o.insecureHTTP && !loopback(o.listen) {
		return usage("--listen %s is not a loopback address: plain HTTP there sends every bearer token in clear; give --tls-cert and --tls-key, or --insecure-http to accept that", o.listen)
	}
	for _, e := range strings.Split(*endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			o.etcdEndpoints = append(o.etcdEndpoints, e)
		}
	}
	if len(o.etcdEndpoints) > 0 {
		if o.dataDir != "" || o.etcdListen != "" || o.etcdPeer != "" || o.insecureEtcd || o.pkiDir != "" {
			return usage("--data-dir, --etcd-listen-client, --etcd-listen-peer, --insecure-etcd and --etcd-pki-dir are for the embedded etcd member; with --etcd-endpoints drop them")
		}
		if o.etcdCAKey != "" && o.etcdCACert == "" {
			return usage("--etcd-ca-key needs --etcd-cacert, the CA certificate it belongs to")
		}
	} else {
		if o.dataDir == "" {
			return usage("--data-dir is required without --etcd-endpoints (the embedded etcd member keeps its data there; there is no default because etcd preallocates 64 MB WAL files)")
		}
		if o.etcdCert != "" || o.etcdKey != "" || o.etcdCACert != "" || o.etcdCAKey != "" {
			return usage("--etcd-cert, --etcd-key, --etcd-cacert and --etcd-ca-key are for --etcd-endpoints; the embedded member's certificates are in --etcd-pki-dir")
		}
		scheme := "https"
		if o.insecureEtcd {
			scheme = "http"
			if o.pkiDir != "" {
				return usage("--etcd-pki-dir is for the secure member; --insecure-etcd has no certificates")
			}
		} else if o.pkiDir == "" {
			o.pkiDir = filepath.Join(o.dataDir, etcdserver.PKIDir)
		}
		if o.etcdListen == "" {
			o.etcdListen = scheme + "://127.0.0.1:2379"
		}
		if o.etcdPeer == "" {
			o.etcdPeer = scheme + "://127.0.0.1:2380"
		}
		for _, u := range []string{o.etcdListen, o.etcdPeer} {
			if !strings.HasPrefix(u, scheme+"://") {
				if o.insecureEtcd {
					return usage("%s: with --insecure-etcd the embedded member serves http://", u)
				}
				return usage("%s: the embedded member serves https:// (TLS with client certificates); --insecure-etcd runs it on plain http:// with no authentication", u)
			}
		}
	}
	if o.name == "" {
		return usage("--name is required: the host name could not be read")
	}
	if o.gc.AuditRetention < 0 {
		return usage("--audit-retention %s: want 0 (forever) or a positive duration", o.gc.AuditRetention)
	}
	if o.gc.AuditRetention > 0 && o.gc.AuditExport == "" {
		if o.dataDir == "" {
			return usage("--audit-retention needs --audit-export: records are exported before they are deleted")
		}
		o.gc.AuditExport = filepath.Join(o.dataDir, "audit-export.jsonl")
	}
	if o.etcdTimeout <= 0 {
		return usage("--etcd-timeout %s: want a positive duration", o.etcdTimeout)
	}
	if o.rolloutInterval < 0 {
		return usage("--rollout-interval %s: want 0 (the default) or a positive duration", o.rolloutInterval)
	}
	level, err := zapcore.ParseLevel(*logLevel)
	if err != nil {
		return usage("--log-level %q: want debug, info, warn or error", *logLevel)
	}
	o.level = level
	return o, exitOK
}

// run serves until ctx ends (a signal) or something fails; hup asks for
// the tokens file to be read again.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, hup <-chan os.Signal) int {
	o, code := parseFlags(args, stderr)
	if o == nil {
		return code
	}
	lg := newLogger(stderr, o.level)
	defer lg.Sync() //nolint:errcheck // stderr
	fail := func(msg string, err error) int {
		lg.Error(msg, zap.Error(err))
		fmt.Fprintf(stderr, "xdpfw-controlplane: %v\n", err)
		return exitError
	}

	tokens, err := auth.Load(o.tokensFile)
	if err != nil {
		return fail("tokens file refused", err)
	}
	tlsCfg, err := serverTLS(o)
	if err != nil {
		return fail("tls set-up failed", err)
	}

	// Take the address first: a busy port fails before etcd starts.
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fail("listen failed", fmt.Errorf("listen on %s: %w", o.listen, err))
	}
	defer ln.Close()
	scheme := "http"
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
		scheme = "https"
	}
	url := scheme + "://" + ln.Addr().String()

	// etcd: the cluster given, or a member of our own.
	var member *etcdserver.Server
	var issuer api.Issuer
	endpoints := o.etcdEndpoints
	if o.etcdCAKey != "" {
		ca, err := pki.LoadCA(o.etcdCACert, o.etcdCAKey)
		if err != nil {
			return fail("etcd CA not loaded", err)
		}
		issuer = ca
	}
	if len(endpoints) == 0 {
		ecfg := etcdserver.Config{
			Name:       o.name,
			DataDir:    o.dataDir,
			ClientURLs: []string{o.etcdListen},
			PeerURLs:   []string{o.etcdPeer},
			Logger:     lg,
		}
		if !o.insecureEtcd {
			ca, files, err := etcdserver.PreparePKI(o.pkiDir, ecfg.ClientURLs, ecfg.PeerURLs)
			if err != nil {
				return fail("etcd PKI not set up", err)
			}
			ecfg.TLS, issuer = files, ca
			o.etcdCert, o.etcdKey, o.etcdCACert = files.RootCertFile, files.RootKeyFile, files.CAFile
		}
		startCtx, cancel := context.WithTimeout(ctx, etcdStartTimeout)
		member, err = etcdserver.Start(startCtx, ecfg)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				lg.Info("stopped by a signal before the embedded etcd member was ready")
				return exitOK
			}
			return fail("embedded etcd did not start", err)
		}
		defer func() {
			member.Close()
			lg.Info("embedded etcd member stopped")
		}()
		endpoints = member.Endpoints()
		lg.Info("embedded etcd member ready", zap.Strings("endpoints", endpoints), zap.String("data_dir", o.dataDir),
			zap.Bool("secure", !o.insecureEtcd), zap.String("pki_dir", o.pkiDir))
		if o.insecureEtcd {
			lg.Warn("the embedded etcd member serves plain HTTP with no authentication (--insecure-etcd): anyone who reaches it controls every host's rules",
				zap.Strings("endpoints", endpoints))
			fmt.Fprintf(stderr, "xdpfw-controlplane: WARNING: etcd at %s has no TLS and no authentication (--insecure-etcd): anyone who reaches it controls every host's rules\n", strings.Join(endpoints, ","))
		}
	}
	st, err := etcdstore.Open(etcdstore.ClientConfig{
		Endpoints: endpoints,
		CertFile:  o.etcdCert, KeyFile: o.etcdKey, CAFile: o.etcdCACert,
		Logger: lg.Named("etcd-client").WithOptions(zap.IncreaseLevel(zapcore.WarnLevel)),
	}, proto.NewKeys(o.prefix))
	if err != nil {
		return fail("etcd client set-up failed", err)
	}
	defer st.Close()
	checkEtcd(ctx, st, endpoints, lg)

	// The API (with its rollout manager) and the leader-elected rollout
	// controller.
	ctl := newController(st, o.name, o.rolloutInterval, o.rolloutRetention, o.gc, lg)
	cols := append([]prometheus.Collector{collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})},
		ctl.Collectors()...)
	handler, err := api.New(api.Config{
		Store: st, Tokens: tokens,
		Log: lg.Named("api"), Collectors: cols, EtcdTimeout: o.etcdTimeout,
		Issuer: issuer, EtcdEndpoints: endpoints,
	})
	if err != nil {
		return fail("api set-up failed", err)
	}

	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		WriteTimeout:      time.Minute,
		IdleTimeout:       2 * time.Minute,
	}
	// net/http's own complaints (TLS handshakes refused, bad requests).
	if srv.ErrorLog, err = zap.NewStdLogAt(lg.Named("http"), zapcore.WarnLevel); err != nil {
		return fail("logger set-up failed", err)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	ctlCtx, stopCtl := context.WithCancel(context.Background())
	ctlDone := make(chan error, 1)
	go func() { ctlDone <- ctl.Run(ctlCtx) }()

	fmt.Fprintf(stdout, "xdpfw-controlplane: ready, API at %s\n", url)
	if o.insecureHTTP && tlsCfg == nil {
		lg.Warn("serving plain HTTP on a non-loopback address (--insecure-http): bearer tokens cross the network in clear", zap.String("listen", o.listen))
	}
	lg.Info("ready", zap.String("url", url), zap.String("name", o.name), zap.String("prefix", st.Keys().Prefix),
		zap.Strings("etcd", endpoints), zap.Bool("mtls", o.clientCA != ""), zap.Int("tokens", tokens.Tokens().Len()))

	var memberErr <-chan error
	if member != nil {
		memberErr = member.Err()
	}
	code = exitOK
loop:
	for {
		select {
		case <-ctx.Done():
			lg.Info("stopping on a signal")
			break loop
		case <-hup:
			if err := tokens.Reload(); err != nil {
				lg.Error("tokens file not reloaded; the tokens in use stay", zap.String("file", o.tokensFile), zap.Error(err))
				continue
			}
			lg.Info("tokens file reloaded", zap.String("file", o.tokensFile), zap.Int("tokens", tokens.Tokens().Len()))
		case err := <-serveErr:
			code = fail("api server failed", err)
			break loop
		case err := <-memberErr:
			code = fail("embedded etcd member failed", err)
			break loop
		case err := <-ctlDone:
			ctlDone = nil
			if err == nil {
				err = errors.New("the rollout controller stopped on its own")
			}
			code = fail("rollout controller failed", err)
			break loop
		}
	}

	// Stop taking requests and finish those under way, then let the
	// controller resign, then close etcd (deferred).
	shCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shCtx); err != nil {
		lg.Warn("api requests still running at shutdown were cut", zap.Error(err))
		srv.Close()
	}
	stopCtl()
	if ctlDone != nil {
		select {
		case <-ctlDone:
			lg.Info("rollout controller stopped (leadership resigned)")
		case <-shCtx.Done():
			lg.Warn("the rollout controller did not stop in time")
		}
	}
	lg.Info("stopped")
	return code
}

// serverTLS builds the API's TLS configuration (nil: plain HTTP).
func serverTLS(o *options) (*tls.Config, error) {
	if o.tlsCert == "" {
		return nil, nil
	}
	pair, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("load --tls-cert %s and --tls-key %s: %w", o.tlsCert, o.tlsKey, err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}
	if o.clientCA != "" {
		pem, err := os.ReadFile(o.clientCA)
		if err != nil {
			return nil, fmt.Errorf("read --client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--client-ca %s: no PEM certificate in it", o.clientCA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// checkEtcd says in the log whether etcd answers. It does not stop the
// start: replicas come up while etcd is away and /readyz tells.
func checkEtcd(ctx context.Context, st *etcdstore.Store, endpoints []string, lg *zap.Logger) {
	cctx, cancel := context.WithTimeout(ctx, etcdCheckTimeout)
	defer cancel()
	if err := st.Ping(cctx); err != nil {
		lg.Warn("etcd does not answer yet; serving anyway (see /readyz)", zap.Strings("etcd", endpoints), zap.Error(err))
	}
}

func newLogger(w io.Writer, level zapcore.Level) *zap.Logger {
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	sink := zapcore.Lock(zapcore.AddSync(w))
	return zap.New(zapcore.NewCore(enc, sink, level), zap.ErrorOutput(sink)).Named("xdpfw-controlplane")
}

// loopback says whether a listen address (HOST:PORT) only takes
// connections from this machine: a loopback IP or "localhost". An empty
// host listens everywhere.
func loopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}
