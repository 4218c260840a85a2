package proto

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// KindHostEnrollment is the kind of a host's enrollment document.
const KindHostEnrollment = "HostEnrollment"

// HostEnrollment is the value of hosts/<host>/enrollment, written by the
// control plane only (an enrolled host's etcd role cannot read or write
// it). Its labels are the ones that select the host's rule sets: what an
// agent reports about itself does not change which rules it gets.
type HostEnrollment struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Host       string            `json:"host"`
	Labels     map[string]string `json:"labels,omitempty"`
	// User is the host's etcd user and role, the common name of its
	// client certificate (HostEtcdUser).
	User       string    `json:"user"`
	EnrolledAt time.Time `json:"enrolledAt"`
	// By is the name of the API token that enrolled the host.
	By string `json:"by,omitempty"`
}

// HostEtcdUser is the etcd user (and role) of an enrolled host: the
// common name of its client certificate.
func HostEtcdUser(host string) string { return "xdpfw-host:" + host }

// HostEnrollment is the key of a host's enrollment.
func (k Keys) HostEnrollment(host string) string { return k.Host(host) + "enrollment" }

// ValidateLabels checks labels as rule-set selectors match them: keys of
// 1 to 63 letters, digits and "._/-", values of up to 63 of them.
func ValidateLabels(labels map[string]string) error {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var problems []string
	for _, k := range keys {
		if k == "" || !validLabel(k) {
			problems = append(problems, fmt.Sprintf("label key %q: want 1 to %d letters, digits or ._/-", k, MaxNameLength))
		}
		if !validLabel(labels[k]) {
			problems = append(problems, fmt.Sprintf("label %s value %q: want up to %d letters, digits or ._/-", k, labels[k], MaxNameLength))
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// Validate checks an enrollment document.
func (e HostEnrollment) Validate() error {
	if e.APIVersion != APIVersion || e.Kind != KindHostEnrollment {
		return fmt.Errorf("apiVersion %q kind %q: want %q %q", e.APIVersion, e.Kind, APIVersion, KindHostEnrollment)
	}
	if err := ValidateHostName(e.Host); err != nil {
		return err
	}
	if e.User != HostEtcdUser(e.Host) {
		return fmt.Errorf("user %q: want %q", e.User, HostEtcdUser(e.Host))
	}
	return ValidateLabels(e.Labels)
}

// DecodeHostEnrollment decodes and validates an enrollment document.
func DecodeHostEnrollment(data []byte) (HostEnrollment, error) {
	var e HostEnrollment
	if err := decodeStrictJSON(data, &e); err != nil {
		return HostEnrollment{}, err
	}
	if err := e.Validate(); err != nil {
		return HostEnrollment{}, err
	}
	return e, nil
}

// EnrollRequest is the body of POST /v1/hosts/{host}/enrollment.
type EnrollRequest struct {
	Labels map[string]string `json:"labels"`
}

// EnrollResponse is the answer to an enrollment: the host's etcd identity.
// The key is in no other place: the control plane keeps no copy.
type EnrollResponse struct {
	Enrollment HostEnrollment `json:"enrollment"`
	// CertPEM and KeyPEM are the host's client certificate and key; CAPEM
	// verifies etcd's server certificate.
	CertPEM string `json:"certPEM"`
	KeyPEM  string `json:"keyPEM"`
	CAPEM   string `json:"caPEM"`
	// Endpoints are etcd's client URLs, as agents should be given them.
	Endpoints []string `json:"endpoints,omitempty"`
	// KeyPrefix is the etcd prefix of xdpfw's keys.
	KeyPrefix string `json:"keyPrefix"`
}
