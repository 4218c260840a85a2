package proto

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Kinds of the host documents.
const (
	KindHostDesired   = "HostDesired"
	KindHostStatus    = "HostStatus"
	KindHostTelemetry = "HostTelemetry"
)

// RuleSetHead is the value of rulesets/<name>/head.
type RuleSetHead struct {
	Version int64 `json:"version"`
}

// RuleSetRef names one version of a rule set.
type RuleSetRef struct {
	Name    string `json:"name"`
	Version int64  `json:"version"`
}

func (r RuleSetRef) String() string { return fmt.Sprintf("%s@%d", r.Name, r.Version) }

// HostDesired is the value of hosts/<host>/desired: the rule-set versions
// the host must enforce. No rule sets means enforce nothing (pass all).
type HostDesired struct {
	APIVersion string       `json:"apiVersion"`
	Kind       string       `json:"kind"`
	RuleSets   []RuleSetRef `json:"ruleSets"`
}

// DecodeHostDesired decodes and validates a desired-state document
// strictly: unknown fields, trailing data and bad references are errors.
func DecodeHostDesired(data []byte) (HostDesired, error) {
	var d HostDesired
	if err := decodeStrictJSON(data, &d); err != nil {
		return HostDesired{}, err
	}
	if err := d.Validate(); err != nil {
		return HostDesired{}, err
	}
	return d, nil
}

// Validate checks a desired-state document; it returns nil or a
// *ValidationError listing every problem.
func (d *HostDesired) Validate() error {
	var problems []Problem
	add := func(path, format string, args ...any) {
		problems = append(problems, Problem{Path: path, Message: fmt.Sprintf(format, args...)})
	}
	if d.APIVersion != APIVersion {
		add("apiVersion", "must be %q, not %q", APIVersion, d.APIVersion)
	}
	if d.Kind != KindHostDesired {
		add("kind", "must be %q, not %q", KindHostDesired, d.Kind)
	}
	if len(d.RuleSets) > MaxRuleSetsPerHost {
		add("ruleSets", "%d rule sets, the limit is %d", len(d.RuleSets), MaxRuleSetsPerHost)
	}
	seen := map[string]int{}
	for i, r := range d.RuleSets {
		path := fmt.Sprintf("ruleSets[%d]", i)
		if !validDNSLabel(r.Name) {
			add(path+".name", "%q is not a valid rule set name (lowercase RFC 1123 label)", r.Name)
		}
		if r.Version < 1 {
			add(path+".version", "must be 1 or more, not %d", r.Version)
		}
		if j, dup := seen[r.Name]; dup {
			add(path+".name", "rule set %q is already listed at ruleSets[%d]", r.Name, j)
		}
		seen[r.Name] = i
	}
	if len(problems) > 0 {
		return &ValidationError{Problems: problems}
	}
	return nil
}

// NewHostDesired builds a valid desired-state document.
func NewHostDesired(refs ...RuleSetRef) HostDesired {
	return HostDesired{APIVersion: APIVersion, Kind: KindHostDesired, RuleSets: refs}
}

// HostStatus is the value of hosts/<host>/status, written by the host's
// agent under its lease: what the host enforces and how it is doing.
type HostStatus struct {
	APIVersion   string            `json:"apiVersion"`
	Kind         string            `json:"kind"`
	Host         string            `json:"host"`
	Labels       map[string]string `json:"labels,omitempty"`
	AgentVersion string            `json:"agentVersion"`
	StartedAt    time.Time         `json:"startedAt"`
	UpdatedAt    time.Time         `json:"updatedAt"`
	// Applied lists the rule-set versions in force on every interface.
	Applied []RuleSetRef `json:"applied"`
	// Revision is the etcd revision whose desired state is in force (or
	// was refused: see LastError).
	Revision int64 `json:"revision"`
	// InSync is true when what is in force is what etcd desires at
	// Revision; false while a desired state is refused or not yet applied.
	InSync     bool              `json:"inSync"`
	Interfaces []InterfaceStatus `json:"interfaces"`
	LastError  *StatusError      `json:"lastError,omitempty"`
	// DataPlaneError is set while the host's data plane does not work:
	// the XDP program of a managed interface did not load (the kernel's
	// verifier refused it, or the kernel lacks a feature). The agent
	// retries with backoff; meanwhile it applies nothing, and whatever
	// was pinned before keeps filtering with its last rules.
	DataPlaneError *DataPlaneError `json:"dataPlaneError,omitempty"`
}

// DataPlaneError says why a host's data plane does not work.
type DataPlaneError struct {
	// Interface is the managed interface whose firewall did not load.
	Interface string `json:"interface"`
	Message   string `json:"message"`
	// Since is the first failed attempt, Attempts how many failed so far.
	Since    time.Time `json:"since"`
	Attempts int       `json:"attempts"`
	// NextAttemptAt is when the agent tries again.
	NextAttemptAt time.Time `json:"nextAttemptAt"`
}

// InterfaceStatus is one managed interface.
type InterfaceStatus struct {
	Name       string    `json:"name"`
	AttachMode string    `json:"attachMode"`
	Attached   bool      `json:"attached"`
	Digest     string    `json:"digest"`
	Rules      int       `json:"rules"`
	AppliedAt  time.Time `json:"appliedAt"`
	// Writes is how many map entries the last apply wrote.
	Writes int `json:"lastApplyWrites"`
	// Error is why the interface's firewall did not load (see
	// HostStatus.DataPlaneError); Attached then says whether a program
	// pinned before is still attached and filtering.
	Error string `json:"error,omitempty"`
}

// StatusError says why a desired state was refused.
type StatusError struct {
	// Document is the etcd key of the document at fault.
	Document string `json:"document"`
	// Version is the rule-set version at fault (0 for the desired state).
	Version  int64     `json:"version,omitempty"`
	Revision int64     `json:"revision"`
	Message  string    `json:"message"`
	At       time.Time `json:"at"`
}

// HostTelemetry is the value of hosts/<host>/telemetry: counters summed
// over CPUs, with rates over the last interval. It stays within the
// budget of docs/architecture.md, "Telemetry": per-action totals and the busiest rules.
type HostTelemetry struct {
	APIVersion string    `json:"apiVersion"`
	Kind       string    `json:"kind"`
	Host       string    `json:"host"`
	At         time.Time `json:"at"`
	// IntervalSeconds is the time the rates are measured over.
	IntervalSeconds float64              `json:"intervalSeconds"`
	Interfaces      []InterfaceTelemetry `json:"interfaces"`
}

// InterfaceTelemetry is the counters of one interface.
type InterfaceTelemetry struct {
	Name string `json:"name"`
	// Actions are keyed by outcome: pass-rule, drop-rule, pass-default,
	// parse-error, non-ip, would-drop, fragment, no-policy, rate-limited.
	Actions map[string]Rate `json:"actions"`
	// Rules are the busiest rules by packet rate, then by packets; rules
	// that never matched are left out.
	Rules []RuleTelemetry `json:"rules"`
	// RulesOmitted counts rules left out: never matched, or past the
	// busiest (every rule is in the agent's /metrics).
	RulesOmitted int `json:"rulesOmitted,omitempty"`
}

// Rate is a counter and its rate over the last interval.
type Rate struct {
	Packets uint64  `json:"packets"`
	Bytes   uint64  `json:"bytes"`
	PPS     float64 `json:"pps"`
	BPS     float64 `json:"bps"`
}

// RuleTelemetry is one rule's counter.
type RuleTelemetry struct {
	RuleSet string `json:"ruleSet"`
	ID      string `json:"id"`
	Action  string `json:"action"`
	DryRun  bool   `json:"dryRun,omitempty"`
	Rate
	// Limited is, for a rate-limit rule, the part of Rate that was over
	// its limit (dropped, or would-dropped in a dry-run set).
	Limited *Rate `json:"limited,omitempty"`
	// TopSources are the sources the rule dropped most over the interval,
	// estimated from sampled drops; most first.
	TopSources []SourceCount `json:"topSources,omitempty"`
}

// SourceCount is a source address and about how many of its packets a
// rule dropped: its share of the rule's sampled drops times the rule's
// drops.
type SourceCount struct {
	Src     string `json:"src"`
	Packets uint64 `json:"packets"`
}

// decodeStrictJSON decodes one JSON value, refusing unknown fields and
// anything after it.
func decodeStrictJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty document")
		}
		return fmt.Errorf("decode: %w", err)
	}
	if dec.More() {
		return errors.New("decode: data after the document")
	}
	return nil
}
