package proto

import (
	"fmt"
	"strconv"
	"strings"
)

// DefaultKeyPrefix is where xdpfw keeps its documents in etcd.
const DefaultKeyPrefix = "/xdpfw/v1/"

// Keys builds the etcd keys of docs/architecture.md, "The etcd key layout" under one prefix:
//
//	rulesets/<name>/versions/<n>   immutable RuleSet JSON
//	rulesets/<name>/head           RuleSetHead: the latest version
//	hosts/<host>/desired           HostDesired: what the host must enforce
//	hosts/<host>/status            HostStatus, under the host's lease
//	hosts/<host>/telemetry         HostTelemetry, under the host's lease
type Keys struct {
	// Prefix ends with "/" (NewKeys adds it).
	Prefix string
}

// NewKeys returns the key builder of a prefix ("" is DefaultKeyPrefix).
func NewKeys(prefix string) Keys {
	if prefix == "" {
		prefix = DefaultKeyPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return Keys{Prefix: prefix}
}

// RuleSets is the prefix of every rule set's keys.
func (k Keys) RuleSets() string { return k.Prefix + "rulesets/" }

// RuleSetVersions is the prefix of one rule set's versions.
func (k Keys) RuleSetVersions(name string) string {
	return k.RuleSets() + name + "/versions/"
}

// RuleSetVersion is the key of version v of rule set name.
func (k Keys) RuleSetVersion(name string, v int64) string {
	return k.RuleSetVersions(name) + strconv.FormatInt(v, 10)
}

// RuleSetHead is the key holding the latest version of rule set name.
func (k Keys) RuleSetHead(name string) string { return k.RuleSets() + name + "/head" }

// Hosts is the prefix of every host's keys.
func (k Keys) Hosts() string { return k.Prefix + "hosts/" }

// Host is the prefix of one host's keys.
func (k Keys) Host(host string) string { return k.Hosts() + host + "/" }

// HostDesired is the key of a host's desired state.
func (k Keys) HostDesired(host string) string { return k.Host(host) + "desired" }

// HostStatus is the key of a host's status.
func (k Keys) HostStatus(host string) string { return k.Host(host) + "status" }

// HostTelemetry is the key of a host's telemetry.
func (k Keys) HostTelemetry(host string) string { return k.Host(host) + "telemetry" }

// ParseRuleSetVersion splits a rule-set version key into its name and
// version; ok is false for any other key.
func (k Keys) ParseRuleSetVersion(key string) (name string, version int64, ok bool) {
	rest, found := strings.CutPrefix(key, k.RuleSets())
	if !found {
		return "", 0, false
	}
	name, v, found := strings.Cut(rest, "/versions/")
	if !found || !validDNSLabel(name) {
		return "", 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1 || strconv.FormatInt(n, 10) != v {
		return "", 0, false
	}
	return name, n, true
}

// ParseHostKey splits a host key into the host name and what follows
// ("desired", "status", "telemetry"); ok is false for any other key.
func (k Keys) ParseHostKey(key string) (host, leaf string, ok bool) {
	rest, found := strings.CutPrefix(key, k.Hosts())
	if !found {
		return "", "", false
	}
	host, leaf, found = strings.Cut(rest, "/")
	if !found || host == "" || strings.Contains(leaf, "/") {
		return "", "", false
	}
	return host, leaf, true
}

// ValidateHostName checks a host name as it appears in keys: an RFC 1123
// name of lowercase labels separated by dots.
func ValidateHostName(host string) error {
	if host == "" || len(host) > 253 {
		return fmt.Errorf("host name %q: want 1 to 253 characters", host)
	}
	for _, label := range strings.Split(host, ".") {
		if !validDNSLabel(label) {
			return fmt.Errorf("host name %q: %q is not a lowercase RFC 1123 label", host, label)
		}
	}
	return nil
}

// RuleSetReleased is the key of the version of rule set name that hosts
// get outside rollouts (a Release).
func (k Keys) RuleSetReleased(name string) string { return k.RuleSets() + name + "/released" }

// Rollouts is the prefix of every rollout's keys:
//
//	rollouts/<id>/spec      RolloutSpec, immutable (API)
//	rollouts/<id>/control   RolloutControl: run, pause or abort (API)
//	rollouts/<id>/state     RolloutState: progress (the elected controller)
func (k Keys) Rollouts() string { return k.Prefix + "rollouts/" }

// RolloutSpec is the key of a rollout's spec.
func (k Keys) RolloutSpec(id string) string { return k.Rollouts() + id + "/spec" }

// RolloutControl is the key of what operators want of a rollout.
func (k Keys) RolloutControl(id string) string { return k.Rollouts() + id + "/control" }

// RolloutState is the key of a rollout's progress.
func (k Keys) RolloutState(id string) string { return k.Rollouts() + id + "/state" }

// Audit is the prefix of the audit trail: audit/<RFC 3339 UTC time with
// nanoseconds>-<random>, so keys sort by time.
func (k Keys) Audit() string { return k.Prefix + "audit/" }

// Election is the prefix of the control-plane replicas' leader election
// (etcd concurrency.Election); the leader runs the rollout controller.
func (k Keys) Election() string { return k.Prefix + "election/controller" }

// Chunks is the prefix of the immutable chunks of big prefix sets.
func (k Keys) Chunks() string { return k.Prefix + "chunks/" }

// ChunkEpoch is written by the storage collector with every delete of
// chunks: a version write that reused chunks guards on it, so it never
// publishes a version naming a chunk collected under it.
func (k Keys) ChunkEpoch() string { return k.Prefix + "gc/chunks" }

// Chunk is the key of the chunk with a hash (see ChunkSets).
func (k Keys) Chunk(hash string) string { return k.Chunks() + hash }
