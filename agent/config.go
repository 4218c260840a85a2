// Package agent is the host daemon of xdpfw: it watches the host's key
// prefix in etcd, compiles the desired rule-set versions, applies the
// difference to the pinned BPF maps of each managed interface, and reports
// status and telemetry under a per-host lease (docs/architecture.md, "The agent").
package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/xdpfw/xdpfw/bpf"
	"github.com/xdpfw/xdpfw/proto"
)

// Defaults of the agent's configuration.
const (
	DefaultLeaseTTL          = 10 * time.Second
	DefaultTelemetryInterval = 5 * time.Second
	DefaultMetricsAddr       = "127.0.0.1:9464"
)

// Config is the agent's configuration: a YAML file, flags, or both (flags
// win).
type Config struct {
	// Endpoints are the etcd client URLs.
	Endpoints []string `json:"endpoints"`
	// TLS client certificate, key and CA (all optional).
	CertFile string `json:"certFile,omitempty"`
	KeyFile  string `json:"keyFile,omitempty"`
	CAFile   string `json:"caFile,omitempty"`
	// KeyPrefix is the etcd prefix of xdpfw's keys.
	KeyPrefix string `json:"keyPrefix,omitempty"`
	// Host names this host in etcd keys (default: the OS host name).
	Host string `json:"host,omitempty"`
	// Labels describe the host to the control plane's selectors.
	Labels map[string]string `json:"labels,omitempty"`
	// Interfaces are the interfaces the agent manages.
	Interfaces []InterfaceConfig `json:"interfaces"`
	// PinPath is the bpffs directory of the firewalls.
	PinPath string `json:"pinPath,omitempty"`
	// LeaseTTL bounds how long a dead host's status and telemetry stay.
	LeaseTTL Duration `json:"leaseTTL,omitempty"`
	// TelemetryInterval is how often telemetry is sampled and written.
	TelemetryInterval Duration `json:"telemetryInterval,omitempty"`
	// MetricsAddr is where /metrics is served ("" turns it off).
	MetricsAddr *string `json:"metricsAddr,omitempty"`
	// ParseErrors and NonIP are the policies for frames the parser cannot
	// read and for non-IP frames: "pass" (default) or "drop".
	ParseErrors string `json:"parseErrors,omitempty"`
	NonIP       string `json:"nonIP,omitempty"`
	// NoDropSources turns off the count of the top dropped sources per rule
	// in telemetry (from sampled drops; on by default).
	NoDropSources bool `json:"noDropSources,omitempty"`
}

// InterfaceConfig is one managed interface and how to attach to it.
type InterfaceConfig struct {
	Name string         `json:"name"`
	Mode bpf.AttachMode `json:"mode,omitempty"`
	// SourceBuckets sizes the per-source rate-limit buckets (an LRU) when
	// the interface's maps are created; default bpf.DefaultSourceBuckets.
	SourceBuckets int `json:"sourceBuckets,omitempty"`
	// SourceSketchLines sizes the sketch per-source limits count every
	// packet in (64-byte lines) when the interface's maps are created;
	// default bpf.DefaultSourceSketchLines (256 KiB).
	SourceSketchLines int `json:"sourceSketchLines,omitempty"`
	// Sampling configures drop sampling (1 in N, a cap per second); unset
	// keeps what the interface has (by default every drop, 1,000 a second
	// at most, sent only while a reader is there).
	Sampling *bpf.SamplingConfig `json:"sampling,omitempty"`
}

// Duration is a time.Duration written as "10s" in YAML and JSON.
type Duration time.Duration

// UnmarshalJSON reads "10s" or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var secs float64
		if err2 := json.Unmarshal(b, &secs); err2 != nil {
			return fmt.Errorf("duration: want a string such as \"10s\" or seconds: %w", err)
		}
		*d = Duration(secs * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration as "10s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// LoadConfig reads a YAML (or JSON) configuration file strictly: an unknown
// field is an error.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	var c Config
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// ParseInterface reads "eth0" or "eth0:native".
func ParseInterface(s string) (InterfaceConfig, error) {
	name, mode, _ := strings.Cut(s, ":")
	m, err := bpf.ParseAttachMode(mode)
	if err != nil {
		return InterfaceConfig{}, fmt.Errorf("interface %q: %w", s, err)
	}
	return InterfaceConfig{Name: name, Mode: m}, nil
}

// ParseLabels reads "k=v,k2=v2".
func ParseLabels(s string) (map[string]string, error) {
	labels := map[string]string{}
	if s == "" {
		return labels, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q: want key=value", kv)
		}
		labels[k] = v
	}
	return labels, nil
}

// withDefaults fills in what is left empty and checks the rest; every
// problem is reported at once.
func (c Config) withDefaults() (Config, error) {
	var errs []error
	if len(c.Endpoints) == 0 {
		errs = append(errs, errors.New("no etcd endpoints given (--endpoints)"))
	}
	if c.Host == "" {
		h, err := os.Hostname()
		if err != nil {
			errs = append(errs, fmt.Errorf("host name: %w (give --host)", err))
		}
		c.Host = strings.ToLower(h)
	}
	if err := proto.ValidateHostName(c.Host); err != nil {
		errs = append(errs, fmt.Errorf("%w (give --host)", err))
	}
	if len(c.Interfaces) == 0 {
		errs = append(errs, errors.New("no interface to manage (--iface)"))
	}
	seen := map[string]bool{}
	for i, ifc := range c.Interfaces {
		if ifc.Name == "" {
			errs = append(errs, fmt.Errorf("interfaces[%d]: no name", i))
		}
		if seen[ifc.Name] {
			errs = append(errs, fmt.Errorf("interface %s given twice", ifc.Name))
		}
		seen[ifc.Name] = true
		m, err := bpf.ParseAttachMode(string(ifc.Mode))
		if err != nil {
			errs = append(errs, err)
		}
		c.Interfaces[i].Mode = m
		if ifc.SourceBuckets < 0 || ifc.SourceBuckets > bpf.MaxSourceBuckets {
			errs = append(errs, fmt.Errorf("interface %s: sourceBuckets %d is out of range 0..%d", ifc.Name, ifc.SourceBuckets, bpf.MaxSourceBuckets))
		}
		if ifc.SourceSketchLines < 0 || ifc.SourceSketchLines > bpf.MaxSourceSketchLines {
			errs = append(errs, fmt.Errorf("interface %s: sourceSketchLines %d is out of range 0..%d", ifc.Name, ifc.SourceSketchLines, bpf.MaxSourceSketchLines))
		}
	}
	if c.PinPath == "" {
		c.PinPath = bpf.DefaultPinPath
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = Duration(DefaultLeaseTTL)
	}
	if time.Duration(c.LeaseTTL) < 2*time.Second {
		errs = append(errs, fmt.Errorf("lease TTL %v: etcd needs at least 2s", time.Duration(c.LeaseTTL)))
	}
	if c.TelemetryInterval == 0 {
		c.TelemetryInterval = Duration(DefaultTelemetryInterval)
	}
	if time.Duration(c.TelemetryInterval) < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("telemetry interval %v: at least 100ms", time.Duration(c.TelemetryInterval)))
	}
	if c.MetricsAddr == nil {
		addr := DefaultMetricsAddr
		c.MetricsAddr = &addr
	}
	for _, p := range []struct{ name, v string }{{"parseErrors", c.ParseErrors}, {"nonIP", c.NonIP}} {
		if p.v != "" && p.v != "pass" && p.v != "drop" {
			errs = append(errs, fmt.Errorf("%s: %q is not pass or drop", p.name, p.v))
		}
	}
	return c, errors.Join(errs...)
}
