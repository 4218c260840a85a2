// Command xdpfw-etcd runs one etcd member with xdpfw's defaults (periodic
// auto-compaction, quiet logs). Three of them with the same
// --initial-cluster form a cluster; the integration tests run each in its
// own network namespace.
//
// It prints one line to stdout once the member serves clients:
//
//	xdpfw-etcd: ready, clients at http://198.18.0.1:2379
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
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/xdpfw/xdpfw/controlplane/etcdserver"
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
	listenClient := fs.String("listen-client", etcdserver.DefaultClientURL, "comma-separated client URLs, listened on and advertised")
	listenPeer := fs.String("listen-peer", etcdserver.DefaultPeerURL, "comma-separated peer URLs, listened on and advertised")
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

	lg := newLogger(stderr, level)
	defer lg.Sync()

	startCtx, cancel := ctx, context.CancelFunc(func() {})
	if *startTimeout > 0 {
		startCtx, cancel = context.WithTimeout(ctx, *startTimeout)
	}
	srv, err := etcdserver.Start(startCtx, etcdserver.Config{
		Name:                    *name,
		DataDir:                 *dataDir,
		ClientURLs:              splitList(*listenClient),
		PeerURLs:                splitList(*listenPeer),
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
	lg.Info("ready", zap.String("name", *name), zap.Strings("clients", srv.Endpoints()))

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
