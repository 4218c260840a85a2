// Command xdpfw-agent keeps this host's XDP firewall equal to what etcd
// says: it watches the host's desired state, applies the rule-set versions
// it names to the pinned BPF maps of each managed interface, and reports
// status and telemetry under a per-host lease. Stopping it (SIGTERM) leaves
// the firewall attached and filtering; `xdpfwctl local detach` removes it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/xdpfw/xdpfw/agent"
	"github.com/xdpfw/xdpfw/bpf"
)

// Exit codes: 0 stopped by a signal, 1 failed, 2 bad usage.
func main() { os.Exit(run(os.Args[1:])) }

type ifaceFlags []agent.InterfaceConfig

func (f *ifaceFlags) String() string { return fmt.Sprint(*f) }

func (f *ifaceFlags) Set(s string) error {
	ic, err := agent.ParseInterface(s)
	if err != nil {
		return err
	}
	*f = append(*f, ic)
	return nil
}

func run(args []string) int {
	fs := flag.NewFlagSet("xdpfw-agent", flag.ContinueOnError)
	configFile := fs.String("config", "", "YAML configuration file (flags given override it)")
	endpoints := fs.String("endpoints", os.Getenv("XDPFW_ETCD_ENDPOINTS"), "etcd client URLs, comma-separated (env XDPFW_ETCD_ENDPOINTS)")
	cert := fs.String("cert", "", "etcd TLS client certificate")
	key := fs.String("key", "", "etcd TLS client key")
	ca := fs.String("cacert", "", "etcd TLS CA certificate")
	prefix := fs.String("prefix", "", "etcd key prefix (default /xdpfw/v1/)")
	host := fs.String("host", "", "this host's name in etcd (default: the OS host name)")
	labels := fs.String("labels", "", "host labels, k=v,k2=v2")
	var ifaces ifaceFlags
	fs.Var(&ifaces, "iface", "interface to manage, NAME or NAME:MODE (native, generic, auto); repeat for several")
	pinPath := fs.String("pin-path", "", "bpffs directory of the firewalls (default /sys/fs/bpf/xdpfw)")
	leaseTTL := fs.Duration("lease-ttl", 0, "lease TTL: a dead host's status and telemetry expire after it (default 10s)")
	interval := fs.Duration("telemetry-interval", 0, "how often counters are sampled and telemetry written (default 5s)")
	metricsAddr := fs.String("metrics-addr", agent.DefaultMetricsAddr, "where to serve /metrics (empty: off)")
	parseErrors := fs.String("parse-errors", "", "frames the parser cannot read: pass (default) or drop")
	nonIP := fs.String("non-ip", "", "non-IP frames (ARP, LLDP): pass (default) or drop")
	noDropSources := fs.Bool("no-drop-sources", false, "do not count the top dropped sources per rule (from sampled drops) in telemetry")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "xdpfw-agent: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	var cfg agent.Config
	if *configFile != "" {
		c, err := agent.LoadConfig(*configFile)
		if err != nil {
			fmt.Fprintf(os.Stderr, "xdpfw-agent: %v\n", err)
			return 2
		}
		cfg = c
	}
	if *endpoints != "" && (set["endpoints"] || len(cfg.Endpoints) == 0) {
		cfg.Endpoints = strings.Split(*endpoints, ",")
	}
	override := func(name string, dst *string, v string) {
		if set[name] {
			*dst = v
		}
	}
	override("cert", &cfg.CertFile, *cert)
	override("key", &cfg.KeyFile, *key)
	override("cacert", &cfg.CAFile, *ca)
	override("prefix", &cfg.KeyPrefix, *prefix)
	override("host", &cfg.Host, *host)
	override("pin-path", &cfg.PinPath, *pinPath)
	override("parse-errors", &cfg.ParseErrors, *parseErrors)
	override("non-ip", &cfg.NonIP, *nonIP)
	if set["no-drop-sources"] {
		cfg.NoDropSources = *noDropSources
	}
	if set["labels"] {
		l, err := agent.ParseLabels(*labels)
		if err != nil {
			fmt.Fprintf(os.Stderr, "xdpfw-agent: --labels: %v\n", err)
			return 2
		}
		cfg.Labels = l
	}
	if len(ifaces) > 0 {
		cfg.Interfaces = ifaces
	}
	if set["lease-ttl"] {
		cfg.LeaseTTL = agent.Duration(*leaseTTL)
	}
	if set["telemetry-interval"] {
		cfg.TelemetryInterval = agent.Duration(*interval)
	}
	if set["metrics-addr"] || cfg.MetricsAddr == nil {
		cfg.MetricsAddr = metricsAddr
	}

	log, err := newLogger(*logLevel)
	if err != nil {
		fmt.Fprintf(os.Stderr, "xdpfw-agent: %v\n", err)
		return 2
	}
	defer log.Sync()

	var opts []agent.Option
	if v := os.Getenv(faultLoadFailuresEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			fmt.Fprintf(os.Stderr, "xdpfw-agent: %s=%q: want a count\n", faultLoadFailuresEnv, v)
			return 2
		}
		log.Warn("fault injection: the data plane's first loads fail as a verifier refusal", zap.String("env", faultLoadFailuresEnv), zap.Int("failures", n))
		opts = append(opts, agent.WithOpenFirewall(failingOpen(n)))
	}
	a, err := agent.New(cfg, log, opts...)
	if err != nil {
		log.Error("start", zap.Error(err))
		fmt.Fprintf(os.Stderr, "xdpfw-agent: %v\n", err)
		return 1
	}
	defer a.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log.Info("started", zap.String("host", cfg.Host), zap.Strings("endpoints", cfg.Endpoints))
	start := time.Now()
	if err := a.Run(ctx); err != nil {
		log.Error("stopped", zap.Error(err))
		return 1
	}
	log.Info("stopped: the firewall stays attached with its last rules", zap.Duration("uptime", time.Since(start)))
	return 0
}

// faultLoadFailuresEnv is a fault-injection hook for the integration
// tests, not a setting: with it set to N, the first N attempts to load an
// interface's data plane fail as if the kernel's verifier had refused the
// program, so the agent's failure mode (status, /metrics, retries, a
// halted rollout) can be tested on a kernel that loads it.
const faultLoadFailuresEnv = "XDPFW_FAULT_INJECT_LOAD_FAILURES"

// failingOpen is bpf.Open, but its first n calls fail with a verifier
// refusal that says it was injected.
func failingOpen(n int) func(bpf.Options) (*bpf.Firewall, error) {
	var calls atomic.Int64
	return func(opts bpf.Options) (*bpf.Firewall, error) {
		if calls.Add(1) <= int64(n) {
			return nil, fmt.Errorf("load XDP program and maps for %s: %w", opts.Interface, &bpf.VerifierRefusal{
				Processed: 1000001,
				Last:      []string{"BPF program is too large. Processed 1000001 insn (injected by " + faultLoadFailuresEnv + ")"},
				Err:       errors.New("injected by " + faultLoadFailuresEnv),
			})
		}
		return bpf.Open(opts)
	}
}

func newLogger(level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.Sampling = nil
	cfg.EncoderConfig.TimeKey = "ts"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	return cfg.Build()
}
