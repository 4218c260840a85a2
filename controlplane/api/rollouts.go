package api

import (
	"context"
	"fmt"
	"net/http"

	"go.uber.org/zap"

	"github.com/xdpfw/xdpfw/controlplane/auth"
	"github.com/xdpfw/xdpfw/controlplane/rollout"
	"github.com/xdpfw/xdpfw/proto"
)

// Rollouts is what the API needs of the rollout manager
// (controlplane/rollout.Manager).
type Rollouts interface {
	Create(ctx context.Context, spec proto.RolloutSpec, by string, audit rollout.AuditRecord) (proto.Rollout, error)
	Get(ctx context.Context, id string) (proto.Rollout, error)
	List(ctx context.Context) ([]proto.Rollout, error)
	// Control asks for want: proto.RolloutWantRun, Pause or Abort.
	Control(ctx context.Context, id, want, by string, audit rollout.AuditRecord) (proto.Rollout, error)
}

// createRollout answers POST /v1/rollouts: 201 and the rollout.
func (s *Server) createRollout(w http.ResponseWriter, r *http.Request, id auth.Identity) error {
	var spec proto.RolloutSpec
	if err := decodeJSON(r, &spec); err != nil {
		return err
	}
	ctx, cancel := s.etcdCtx(r)
	defer cancel()
	ro, err := s.rollouts.Create(ctx, spec, id.Name, s.rolloutAudit(r, id))
	if err != nil {
		return err
	}
	s.log.Info("rollout created", zapRollout(ro.ID), zapRuleSet(ro.Spec.RuleSet), zapVersion(ro.Spec.Version), zapWho(id))
	w.Header().Set("Location", "/v1/rollouts/"+ro.ID)
	writeJSON(w, http.StatusCreated, ro)
	return nil
}

// rolloutAudit makes a rollout write's audit record, which the manager
// writes in the same transaction as the rollout.
func (s *Server) rolloutAudit(r *http.Request, id auth.Identity) rollout.AuditRecord {
	return func(ro proto.Rollout, result string) proto.AuditRecord {
		rec := auditRecord(r, id, "rollout "+ro.ID)
		rec.Result = fmt.Sprintf("%s (rule set %s version %d)", result, ro.Spec.RuleSet, ro.Spec.Version)
		return rec
	}
}

// listRollouts answers GET /v1/rollouts.
func (s *Server) listRollouts(w http.ResponseWriter, r *http.Request, _ auth.Identity) error {
	ctx, cancel := s.etcdCtx(r)
	defer cancel()
	list, err := s.rollouts.List(ctx)
	if err != nil {
		return err
	}
	if list == nil {
		list = []proto.Rollout{}
	}
	writeJSON(w, http.StatusOK, list)
	return nil
}

// getRollout answers GET /v1/rollouts/{id}.
func (s *Server) getRollout(w http.ResponseWriter, r *http.Request, _ auth.Identity) error {
	ctx, cancel := s.etcdCtx(r)
	defer cancel()
	ro, err := s.rollouts.Get(ctx, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, ro)
	return nil
}

// controlRollout answers POST /v1/rollouts/{id}/pause|resume|abort.
func (s *Server) controlRollout(want string) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, id auth.Identity) error {
		ctx, cancel := s.etcdCtx(r)
		defer cancel()
		ro, err := s.rollouts.Control(ctx, r.PathValue("id"), want, id.Name, s.rolloutAudit(r, id))
		if err != nil {
			return err
		}
		s.log.Info("rollout control", zapRollout(ro.ID), zap.String("want", want), zapWho(id))
		writeJSON(w, http.StatusOK, ro)
		return nil
	}
}
