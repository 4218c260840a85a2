package proto

import (
	"fmt"
	"time"
)

// The control plane's documents (docs/architecture.md, "The control plane"): the JSON of its
// REST API under /v1/ and of its etcd keys for rollouts, releases and the
// audit trail. Shared by the API service, its rollout controller and
// xdpfwctl.

// Kinds of the control plane's documents.
const (
	KindRollout = "Rollout"
)

// Roles of API tokens, from least to most allowed.
const (
	RoleViewer   = "viewer"   // reads everything
	RoleOperator = "operator" // also writes rule sets and runs rollouts
	RoleAdmin    = "admin"    // also deletes rule sets and reads the audit trail
)

// APIError is the body of every error response:
//
//	{"error": {"code": "invalid", "message": "...", "problems": [...]}}
type APIError struct {
	Error APIErrorBody `json:"error"`
}

// APIErrorBody says what went wrong and, for a document that failed
// validation, every problem with its path.
type APIErrorBody struct {
	// Code is one of the Code* constants.
	Code     string    `json:"code"`
	Message  string    `json:"message"`
	Problems []Problem `json:"problems,omitempty"`
}

// Error codes and the HTTP statuses they go with.
const (
	CodeInvalid      = "invalid"      // 400: bad document or parameters; nothing written
	CodeUnauthorized = "unauthorized" // 401: no or unknown token
	CodeForbidden    = "forbidden"    // 403: the token's role may not do this
	CodeNotFound     = "not-found"    // 404
	CodeConflict     = "conflict"     // 409: stale If-Match, rollout in a state that forbids it
	CodeTooLarge     = "too-large"    // 413
	CodeThrottled    = "throttled"    // 429: too many failed authentications from one address
	CodeUnavailable  = "unavailable"  // 503: etcd unreachable
	CodeInternal     = "internal"     // 500
)

// RuleSetVersion is a rule set at one version, as the API returns it.
type RuleSetVersion struct {
	Name    string  `json:"name"`
	Version int64   `json:"version"`
	RuleSet RuleSet `json:"ruleSet"`
}

// RuleSetWrite is the answer to a write of a rule set (PUT, rollback).
type RuleSetWrite struct {
	Name     string `json:"name"`
	Version  int64  `json:"version"`
	Revision int64  `json:"revision"`
	// Diff is what changed from the previous version (nil for version 1).
	Diff *RuleSetDiff `json:"diff,omitempty"`
}

// RuleSetSummary is one entry of GET /v1/rulesets.
type RuleSetSummary struct {
	Name    string `json:"name"`
	Version int64  `json:"version"` // the head
	// Released is the version hosts get outside rollouts (0: none yet).
	Released int64 `json:"released"`
	Rules    int   `json:"rules"`
}

// RuleSetVersionInfo is one entry of GET /v1/rulesets/{name}/versions,
// oldest first.
type RuleSetVersionInfo struct {
	Version int64 `json:"version"`
	// Revision is the etcd revision that wrote the version.
	Revision int64 `json:"revision"`
	Rules    int   `json:"rules"`
	// Author and At come from the audit record of the write, when found.
	Author string    `json:"author,omitempty"`
	At     time.Time `json:"at,omitempty"`
}

// RuleSetDiff is the difference between two versions of a rule set,
// rule by rule (by id) and set by set.
type RuleSetDiff struct {
	Name    string       `json:"name"`
	From    int64        `json:"from"`
	To      int64        `json:"to"`
	Changes []DiffChange `json:"changes"`
}

// DiffChange is one difference. Path names what changed: "mode",
// "rules[ssh]", "sets.bad-actors". Kind is added, removed or changed; for
// sets, Added and Removed count prefixes.
type DiffChange struct {
	Kind    string `json:"kind"`
	Path    string `json:"path"`
	From    any    `json:"from,omitempty"`
	To      any    `json:"to,omitempty"`
	Added   int    `json:"added,omitempty"`
	Removed int    `json:"removed,omitempty"`
}

// Diff change kinds.
const (
	DiffAdded   = "added"
	DiffRemoved = "removed"
	DiffChanged = "changed"
	// DiffMoved: a rule kept its content but changed position.
	DiffMoved = "moved"
)

// RolloutSpec is what an operator asks for: POST /v1/rollouts, and the
// immutable key rollouts/<id>/spec.
type RolloutSpec struct {
	RuleSet string `json:"ruleset"`
	Version int64  `json:"version"`
	// Selector picks the hosts by label (empty: the rule set's own
	// selector).
	Selector map[string]string `json:"selector,omitempty"`
	// Waves are cumulative host counts ("1") or percentages ("10%") of the
	// selected hosts; the last is normally "100%". Default ["100%"].
	Waves []string `json:"waves,omitempty"`
	// Pause is how long a wave's hosts must stay healthy before the next
	// wave starts ("30s"; default 0).
	Pause string `json:"pause,omitempty"`
	// MaxErrorHosts is how many hosts may refuse the version or miss the
	// deadline before the rollout halts (default 0).
	MaxErrorHosts int `json:"maxErrorHosts,omitempty"`
	// Deadline is how long a host has to apply the version ("2m" default).
	Deadline string `json:"deadline,omitempty"`
}

// Rollout states.
const (
	RolloutRunning   = "running"
	RolloutPaused    = "paused"
	RolloutHalted    = "halted"    // too many hosts failed; resume retries, abort rolls back
	RolloutSucceeded = "succeeded" // every selected host enforces the version
	RolloutAborting  = "aborting"  // returning hosts to their previous versions
	RolloutAborted   = "aborted"
)

// RolloutControl is what operators ask of a rollout after its creation
// (key rollouts/<id>/control, written by the API): "run", "pause" or
// "abort".
type RolloutControl struct {
	Want string    `json:"want"`
	By   string    `json:"by"`
	At   time.Time `json:"at"`
}

// Wanted states of RolloutControl.
const (
	RolloutWantRun   = "run"
	RolloutWantPause = "pause"
	RolloutWantAbort = "abort"
)

// RolloutState is the controller's progress (key rollouts/<id>/state,
// written by the elected controller only).
type RolloutState struct {
	State string `json:"state"`
	// Wave is the index of the wave being rolled out (len(waves) when done).
	Wave int `json:"wave"`
	// WaveHealthyAt is when the current wave's hosts were all healthy (the
	// pause runs from then), zero while they are not.
	WaveHealthyAt time.Time `json:"waveHealthyAt,omitempty"`
	// Hosts are the hosts the rollout has touched, by name.
	Hosts   map[string]RolloutHost `json:"hosts"`
	Message string                 `json:"message,omitempty"`
	// ControlRevision is the etcd mod revision of rollouts/<id>/control
	// that the controller had read when it halted the rollout: a control
	// written after it (a higher revision) wanting "run" resumes it.
	ControlRevision int64 `json:"controlRevision,omitempty"`
	// UpdatedAt and Controller say when and by which replica it was
	// last written.
	UpdatedAt  time.Time `json:"updatedAt"`
	Controller string    `json:"controller,omitempty"`
}

// RolloutHost is one host's part in a rollout.
type RolloutHost struct {
	Wave int `json:"wave"`
	// Previous is the version the host was given before (0: none), which
	// an abort returns it to.
	Previous int64 `json:"previous"`
	// State: pending (not given the version yet), applying, applied,
	// failed (refused it or missed the deadline), reverted.
	State     string    `json:"state"`
	Error     string    `json:"error,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// Rollout host states.
const (
	HostPending  = "pending"
	HostApplying = "applying"
	HostApplied  = "applied"
	HostFailed   = "failed"
	HostReverted = "reverted"
)

// Rollout is a rollout as the API returns it.
type Rollout struct {
	ID        string         `json:"id"`
	Spec      RolloutSpec    `json:"spec"`
	Control   RolloutControl `json:"control"`
	Status    RolloutState   `json:"status"`
	CreatedBy string         `json:"createdBy"`
	CreatedAt time.Time      `json:"createdAt"`
}

// Release is the version of a rule set that hosts get outside rollouts
// (key rulesets/<name>/released, written by the rollout controller when a
// rollout succeeds).
type Release struct {
	Version int64     `json:"version"`
	Rollout string    `json:"rollout,omitempty"`
	At      time.Time `json:"at"`
}

// AuditRecord is one write through the API (key audit/<time>-<random>).
type AuditRecord struct {
	At     time.Time `json:"at"`
	Who    string    `json:"who"`
	Role   string    `json:"role"`
	Action string    `json:"action"` // "PUT /v1/rulesets/edge", ...
	// Target and Result say what was written: "ruleset edge", "version 4".
	Target   string `json:"target"`
	Result   string `json:"result"`
	Revision int64  `json:"revision"`
	// Remote is the client's address (host:port as the server saw it).
	Remote string `json:"remote,omitempty"`
}

// HostInfo is one host as GET /v1/hosts returns it: its desired state and
// what its agent reports (nothing when its lease expired: Lost).
type HostInfo struct {
	Host    string       `json:"host"`
	Lost    bool         `json:"lost"`
	Desired []RuleSetRef `json:"desired"`
	Status  *HostStatus  `json:"status,omitempty"`
	// Enrollment is the host's enrollment (nil: not enrolled); its labels
	// are the ones selectors match.
	Enrollment *HostEnrollment `json:"enrollment,omitempty"`
	// State is one of the HostState* values and Reason, for the failed
	// and error states, why (see HostStateOf).
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
}

// What a host is doing, as HostInfo.State says it.
const (
	HostStateInSync    = "in sync"          // enforces what it is given
	HostStateApplying  = "applying"         // has not reported the desired state in force yet
	HostStateError     = "error"            // refused its desired state; the last good rules stay in force
	HostStateFailed    = "failed"           // its data plane did not load: it applies nothing
	HostStateLost      = "lost"             // its lease expired (no status)
	HostStateNoStatus  = "no status"        // no agent ever reported
	HostStateNoDesired = "no desired state" // nothing given to it yet
	HostStateBadStatus = "bad status"       // its status key holds a document that does not decode (Reason says why)
)

// HostStateOf says what a host is doing and, when it failed or refused
// its desired state, why.
func HostStateOf(h HostInfo) (state, reason string) {
	st := h.Status
	switch {
	case h.Lost:
		return HostStateLost, ""
	case st == nil:
		return HostStateNoStatus, ""
	case st.DataPlaneError != nil:
		return HostStateFailed, "data plane: " + st.DataPlaneError.Message
	case st.LastError != nil:
		return HostStateError, fmt.Sprintf("%s: %s", st.LastError.Document, st.LastError.Message)
	case st.InSync:
		return HostStateInSync, ""
	case len(h.Desired) == 0 && len(st.Applied) == 0:
		return HostStateNoDesired, ""
	}
	return HostStateApplying, ""
}

// TelemetryReport is GET /v1/telemetry: fleet totals per rule and per
// outcome, and per host.
type TelemetryReport struct {
	At      time.Time       `json:"at"`
	Hosts   int             `json:"hosts"`
	Actions map[string]Rate `json:"actions"`
	Rules   []RuleTelemetry `json:"rules"`
	PerHost []HostTelemetry `json:"perHost,omitempty"`
}
