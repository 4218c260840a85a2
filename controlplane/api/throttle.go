package api

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// Failed-authentication throttling: an address that fails authentication
// MaxAuthFailures times within AuthFailureWindow gets 429 for every /v1/
// request until the window ends. It slows guessing of tokens (each try is
// also audited, until the address is throttled) and keeps a flood of bad
// tokens from writing audit records without end.
const (
	MaxAuthFailures   = 10
	AuthFailureWindow = time.Minute
	// maxTracked bounds the addresses tracked; past it, expired ones are
	// dropped, and if none has expired the oldest window is.
	maxTracked = 10000
)

// failures counts failed authentications by remote address.
type failures struct {
	// limit is the failures allowed in a window (negative: any number).
	limit int
	mu    sync.Mutex
	now   func() time.Time
	// byIP is keyed by throttleKey: one IPv4 address, or one IPv6 /64.
	byIP map[netip.Prefix]*failureWindow
}

type failureWindow struct {
	start time.Time
	count int
	// noted is set once the address's throttling was audited.
	noted bool
}

func newFailures(limit int) *failures {
	if limit == 0 {
		limit = MaxAuthFailures
	}
	return &failures{limit: limit, now: time.Now, byIP: map[netip.Prefix]*failureWindow{}}
}

// remoteIP is a request's peer address without its port (the zero Addr
// when it does not parse).
func remoteIP(remote string) netip.Addr {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip, _ := netip.ParseAddr(host)
	return ip.Unmap()
}

// throttleKey is what failures are counted by: an IPv4 address, or the
// /64 an IPv6 address is in, since one host usually holds a whole /64 and
// could otherwise take a fresh address for every ten guesses.
func throttleKey(ip netip.Addr) netip.Prefix {
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p
	}
	p, _ := ip.Prefix(ip.BitLen())
	return p
}

// throttled says whether ip is throttled now, how long until it is not,
// and whether this is the first request refused in its window (audited
// once).
func (f *failures) throttled(ip netip.Addr) (bool, time.Duration, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := throttleKey(ip)
	w := f.byIP[key]
	if f.limit < 0 || w == nil || w.count < f.limit {
		return false, 0, false
	}
	left := AuthFailureWindow - f.now().Sub(w.start)
	if left <= 0 {
		delete(f.byIP, key)
		return false, 0, false
	}
	first := !w.noted
	w.noted = true
	return true, left, first
}

// fail counts a failed authentication from ip.
func (f *failures) fail(ip netip.Addr) {
	if f.limit < 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	key := throttleKey(ip)
	w := f.byIP[key]
	if w == nil || now.Sub(w.start) >= AuthFailureWindow {
		if len(f.byIP) >= maxTracked {
			f.evict(now)
		}
		w = &failureWindow{start: now}
		f.byIP[key] = w
	}
	w.count++
}

// evict drops the expired windows, or the oldest one if none has expired.
func (f *failures) evict(now time.Time) {
	var oldest netip.Prefix
	var oldestStart time.Time
	for key, w := range f.byIP {
		if now.Sub(w.start) >= AuthFailureWindow {
			delete(f.byIP, key)
			continue
		}
		if oldestStart.IsZero() || w.start.Before(oldestStart) {
			oldest, oldestStart = key, w.start
		}
	}
	if len(f.byIP) >= maxTracked {
		delete(f.byIP, oldest)
	}
}
