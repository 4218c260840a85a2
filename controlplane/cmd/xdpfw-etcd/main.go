// Command xdpfw-etcd runs one etcd member with xdpfw's defaults (periodic
// auto-compaction, quiet logs). Three of them with the same
// --initial-cluster form a cluster; the integration tests run each in its
// own network namespace.
//
// The member is secure unless told --insecure: it serves TLS on https://
// URLs, takes only clients and peers with a certificate of the CA in
// --pki-dir (created on the first start of the first member; copy its
// ca.crt and ca.key into every other member's --pki-dir before theirs),
// and has etcd's authentication on. The control plane connects with the
// root client certificate written there (root.crt, root.key) and, given
// the CA's key too, enrolls hosts (docs/operator-guide.md).
//
// It prints one line to stdout once the member serves clients:
//
//	xdpfw-etcd: ready, clients at https://198.18.0.1:2379
//
// and logs JSON to stderr. SIGTERM or SIGINT stops it gracefully (exit 0);
// a failure exits 1, bad flags exit 2.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/xdpfw/xdpfw/controlplane/etcdserver"
	"github.com/xdpfw/xdpfw/controlplane/pki"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs the member until ctx ends (a signal) or the member fails.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("xdpfw-etcd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", etcdserver.DefaultName, "member name, as in --initial-cluster")
	dataDir := fs.String("data-dir", "", "data directory (required; etcd preallocates 64 MB WAL files)")
	listenClient := fs.String("listen-client", "", "comma-separated client URLs, listened on and advertised (https://127.0.0.1:2379; http:// with --insecure)")
	listenPeer := fs.String("listen-peer", "", "comma-separated peer URLs, listened on and advertised (https://127.0.0.1:2380; http:// with --insecure)")
	insecure := fs.Bool("insecure", false, "serve plain HTTP with no authentication: anyone who reaches the member controls every host's rules")
	pkiDir := fs.String("pki-dir", "", "the CA, the member's certificate and the root client certificate (default <data-dir>/pki; the CA is created there if absent)")
	initialCluster := fs.String("initial-cluster", "", "NAME=PEER-URL,... of every member (empty: this member alone)")
	clusterState := fs.String("initial-cluster-state", etcdserver.ClusterStateNew, "new (bootstrap a cluster) or existing (join one)")
	retention := fs.String("auto-compaction-retention", etcdserver.DefaultAutoCompactionRetention, "history kept by periodic compaction (e.g. 1h, 30m)")
	logLevel := fs.String("log-level", etcdserver.DefaultLogLevel, "debug, info, warn or error")
	startTimeout := fs.Duration("start-timeout", 2*time.Minute, "how long to wait for the cluster to form before giving up (0: forever)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	usage := func(msg string) int {
		fmt.Fprintf(stderr, "xdpfw-etcd: %s (see --help)\n", msg)
		return exitUsage
	}
	if fs.NArg() > 0 {
		return usage(fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
	}
	if *dataDir == "" {
		return usage("--data-dir is required; there is no default because etcd preallocates 64 MB WAL files and a default in the working directory ends up in the working tree")
	}
	level, err := zapcore.ParseLevel(*logLevel)
	if err != nil {
		return usage(fmt.Sprintf("--log-level %q: want debug, info, warn or error", *logLevel))
	}
	if *clusterState != etcdserver.ClusterStateNew && *clusterState != etcdserver.ClusterStateExisting {
		return usage(fmt.Sprintf("--initial-cluster-state %q: want new or existing", *clusterState))
	}
	scheme := "https"
	if *insecure {
		scheme = "http"
		if *pkiDir != "" {
			return usage("--pki-dir is for a secure member; --insecure has no certificates")
		}
	} else if *pkiDir == "" {
		*pkiDir = filepath.Join(*dataDir, etcdserver.PKIDir)
	}
	if *listenClient == "" {
		*listenClient = scheme + "://127.0.0.1:2379"
	}
	if *listenPeer == "" {
		*listenPeer = scheme + "://127.0.0.1:2380"
	}
	clientURLs, peerURLs := splitList(*listenClient), splitList(*listenPeer)
	for _, u := range append(append([]string(nil), clientURLs...), peerURLs...) {
		if !strings.HasPrefix(u, scheme+"://") {
			if *insecure {
				return usage(fmt.Sprintf("%s: with --insecure the member serves http://", u))
			}
			return usage(fmt.Sprintf("%s: the member serves https:// (TLS with client certificates); --insecure runs it on plain http:// with no authentication", u))
		}
	}

	lg := newLogger(stderr, level)
	defer lg.Sync()

	startCtx, cancel := ctx, context.CancelFunc(func() {})
	if *startTimeout > 0 {
		startCtx, cancel = context.WithTimeout(ctx, *startTimeout)
	}
	var tlsFiles *etcdserver.TLSFiles
	if !*insecure {
		if _, tlsFiles, err = etcdserver.PreparePKI(*pkiDir, clientURLs, peerURLs); err != nil {
			cancel()
			lg.Error("PKI not set up", zap.Error(err))
			fmt.Fprintf(stderr, "xdpfw-etcd: %v\n", err)
			return exitError
		}
	}
	srv, err := etcdserver.Start(startCtx, etcdserver.Config{
		TLS:                     tlsFiles,
		Name:                    *name,
		DataDir:                 *dataDir,
		ClientURLs:              clientURLs,
		PeerURLs:                peerURLs,
		InitialCluster:          *initialCluster,
		ClusterState:            *clusterState,
		AutoCompactionRetention: *retention,
		Logger:                  lg,
		LogLevel:                level.String(),
	})
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			lg.Info("stopped by a signal before the member was ready")
			fmt.Fprintf(stderr, "xdpfw-etcd: stopped before the member was ready\n")
			return exitOK
		}
		lg.Error("start failed", zap.Error(err))
		fmt.Fprintf(stderr, "xdpfw-etcd: %v\n", err)
		return exitError
	}
	fmt.Fprintf(stdout, "xdpfw-etcd: ready, clients at %s\n", strings.Join(srv.Endpoints(), ","))
	lg.Info("ready", zap.String("name", *name), zap.Strings("clients", srv.Endpoints()), zap.Bool("secure", !*insecure), zap.String("pki_dir", *pkiDir))
	if *insecure {
		lg.Warn("serving plain HTTP with no authentication (--insecure): anyone who reaches the member controls every host's rules",
			zap.Strings("clients", srv.Endpoints()))
	} else {
		// What the control plane is given: --etcd-cert, --etcd-key,
		// --etcd-cacert, and --etcd-ca-key to enroll hosts.
		lg.Info("control plane certificates", zap.String("root_cert", tlsFiles.RootCertFile), zap.String("root_key", tlsFiles.RootKeyFile),
			zap.String("ca_cert", tlsFiles.CAFile), zap.String("ca_key", filepath.Join(*pkiDir, pki.CAKeyFile)))
	}

	select {
	case <-ctx.Done():
		lg.Info("stopping on a signal")
		srv.Close()
		lg.Info("stopped")
		return exitOK
	case err := <-srv.Err():
		lg.Error("member failed", zap.Error(err))
		srv.Close()
		fmt.Fprintf(stderr, "xdpfw-etcd: %v\n", err)
		return exitError
	}
}

func newLogger(w io.Writer, level zapcore.Level) *zap.Logger {
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), level)
	return zap.New(core, zap.ErrorOutput(zapcore.Lock(zapcore.AddSync(w)))).Named("xdpfw-etcd")
}

func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
