package etcdserver

import (
	"time"

	"go.uber.org/zap"
)

// Defaults of the defragmentation policy (docs/architecture.md, "Telemetry"). Compaction
// frees pages inside the database file but never shrinks it; telemetry
// rewrites every host's documents all day, so without defragmentation the
// file grows towards the quota.
const (
	DefaultDefragInterval = time.Hour
	// defragMinFree is the free space worth a defragmentation: it blocks
	// the member's writes for the time it takes (about a second per GB).
	defragMinFree = 64 << 20
)

// defragPolicy defragments the member's database when at least half of
// the file and 64 MiB are free (compacted away). It runs from Start until
// Close, which waits for it.
func (s *Server) defragPolicy(every time.Duration, log *zap.Logger) {
	defer close(s.defragDone)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.closing:
			return
		case <-t.C:
		}
		s.maybeDefrag(defragMinFree, log)
	}
}

// maybeDefrag defragments when the database file holds at least minFree
// bytes, and half its size, that are not in use; it reports whether it did.
func (s *Server) maybeDefrag(minFree int64, log *zap.Logger) bool {
	be := s.etcd.Server.Backend()
	size, inUse := be.Size(), be.SizeInUse()
	free := size - inUse
	if free < minFree || free < size/2 {
		return false
	}
	start := time.Now()
	if err := s.etcd.Server.Defragment(); err != nil {
		log.Warn("defragment etcd database", zap.Int64("size", size), zap.Int64("inUse", inUse), zap.Error(err))
		return false
	}
	log.Info("defragmented etcd database", zap.Int64("sizeBefore", size), zap.Int64("sizeAfter", be.Size()),
		zap.Duration("took", time.Since(start)))
	return true
}
