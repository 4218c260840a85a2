package api

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/xdpfw/xdpfw/controlplane/auth"
	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// Enrollment (docs/architecture.md, "Trust model"): an admin gives a host
// its etcd identity, a client certificate whose common name is an etcd
// user whose role allows only the host's own keys, and the labels that
// select its rule sets.

// Issuer signs hosts' client certificates: the CA of the etcd the agents
// use (pki.CA).
type Issuer interface {
	IssueClient(user string) (certPEM, keyPEM []byte, err error)
	CertPEM() []byte
}

// errNoIssuer is the answer to an enrollment on a control plane with no CA.
var errNoIssuer = &Error{Status: http.StatusConflict, Code: proto.CodeConflict,
	Message: "this control plane holds no CA to sign host certificates: enrollment needs its embedded etcd (without --insecure-etcd) or --etcd-ca-key"}

func (s *Server) hostParam(r *http.Request) (string, error) {
	host := r.PathValue("host")
	if err := proto.ValidateHostName(host); err != nil {
		return "", &Error{Status: http.StatusBadRequest, Code: proto.CodeInvalid, Message: err.Error(),
			Problems: []proto.Problem{{Path: "host", Message: err.Error()}}}
	}
	return host, nil
}

// enrollHost answers POST /v1/hosts/{host}/enrollment: the host's etcd
// user and role are made (or kept), its labels written, and a new client
// certificate returned with its key, which the control plane does not
// keep. Enrolling again replaces the labels and issues another
// certificate; the earlier ones stay valid until the host is revoked.
func (s *Server) enrollHost(w http.ResponseWriter, r *http.Request, id auth.Identity) error {
	host, err := s.hostParam(r)
	if err != nil {
		return err
	}
	var req proto.EnrollRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	if err := proto.ValidateLabels(req.Labels); err != nil {
		return &Error{Status: http.StatusBadRequest, Code: proto.CodeInvalid, Message: err.Error(),
			Problems: []proto.Problem{{Path: "labels", Message: err.Error()}}}
	}
	if s.issuer == nil {
		return errNoIssuer
	}
	e := proto.HostEnrollment{APIVersion: proto.APIVersion, Kind: proto.KindHostEnrollment, Host: host,
		Labels: req.Labels, User: proto.HostEtcdUser(host), EnrolledAt: time.Now().UTC(), By: id.Name}
	certPEM, keyPEM, err := s.issuer.IssueClient(e.User)
	if err != nil {
		return fmt.Errorf("issue the certificate of %s: %w", host, err)
	}
	ctx, cancel := s.etcdCtx(r)
	defer cancel()
	rec := auditRecord(r, id, "host "+host)
	rec.Result = fmt.Sprintf("enrolled as etcd user %s, labels %v", e.User, e.Labels)
	rev, err := s.store.EnrollHost(ctx, e, rec)
	if errors.Is(err, etcdstore.ErrAuthDisabled) {
		return &Error{Status: http.StatusConflict, Code: proto.CodeConflict, Message: err.Error()}
	}
	if err != nil {
		return err
	}
	s.log.Info("host enrolled", zap.String("host", host), zapWho(id), zapRevision(rev))
	writeJSON(w, http.StatusOK, proto.EnrollResponse{Enrollment: e, CertPEM: string(certPEM), KeyPEM: string(keyPEM),
		CAPEM: string(s.issuer.CertPEM()), Endpoints: s.etcdEndpoints, KeyPrefix: s.keys.Prefix})
	return nil
}

// revokeHost answers DELETE /v1/hosts/{host}/enrollment: the host's etcd
// user and role are deleted, so etcd refuses every request its
// certificates make from then on.
func (s *Server) revokeHost(w http.ResponseWriter, r *http.Request, id auth.Identity) error {
	host, err := s.hostParam(r)
	if err != nil {
		return err
	}
	ctx, cancel := s.etcdCtx(r)
	defer cancel()
	rec := auditRecord(r, id, "host "+host)
	rec.Result = "revoked: etcd user " + proto.HostEtcdUser(host) + " deleted"
	rev, err := s.store.RevokeHost(ctx, host, rec)
	if errors.Is(err, etcdstore.ErrNotEnrolled) {
		return &Error{Status: http.StatusNotFound, Code: proto.CodeNotFound, Message: err.Error()}
	}
	if err != nil {
		return err
	}
	s.log.Info("host revoked", zap.String("host", host), zapWho(id), zapRevision(rev))
	w.WriteHeader(http.StatusNoContent)
	return nil
}
