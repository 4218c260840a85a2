package bpf

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"

	"github.com/xdpfw/xdpfw/proto"
)

// ticksPerSecond is the rate limiter's clock: 1/16 ns (struct fw_limit).
const ticksPerSecond = 16_000_000_000

// kernelLimit turns a rule's rate limit into its fw_limit: the costs and
// tolerances of GCRA in ticks, and the bucket identity.
func kernelLimit(identity string, rl *proto.RateLimit) firewallFwLimit {
	var l firewallFwLimit
	if scope, err := proto.ParseLimitScope(rl.Per); err == nil && scope.PerSource {
		// Validation refused a bad scope before compile.
		l.Per = uint8(firewallFwLimitPerFW_PER_SOURCE)
		l.Prefix4, l.Prefix6 = uint8(scope.Bits4), uint8(scope.Bits6)
	}
	if rl.PPS > 0 {
		l.PktCost = (ticksPerSecond + rl.PPS/2) / rl.PPS
		l.PktTol = (rl.EffectiveBurst() - 1) * l.PktCost
	}
	if rl.BPS > 0 {
		// Ticks per byte in 16.16 fixed point: 8 bits a byte.
		l.ByteCost = (ticksPerSecond<<16*8 + rl.BPS/2) / rl.BPS
		// burstBytes (up to 2^40) times the cost (up to 2^40) needs
		// 128 bits before the shift.
		hi, lo := bits.Mul64(rl.EffectiveBurstBytes(), l.ByteCost)
		l.ByteTol = hi<<48 | lo>>16
		if hi>>16 != 0 || l.ByteTol > math.MaxInt64 {
			l.ByteTol = math.MaxInt64
		}
	}
	l.Id = limitID(identity, rl)
	return l
}

// limitID identifies a rule's buckets: the same rule with the same limit
// keeps them across swaps (and agent restarts), a changed limit gets new,
// full ones. WithinLimit is left out: it does not change what is counted.
func limitID(identity string, rl *proto.RateLimit) uint64 {
	scope, _ := proto.ParseLimitScope(rl.Per)
	h := sha256.Sum256(fmt.Appendf(nil, "%s\x00pps=%d bps=%d burst=%d burstBytes=%d scope=%+v",
		identity, rl.PPS, rl.BPS, rl.EffectiveBurst(), rl.EffectiveBurstBytes(), scope))
	return binary.LittleEndian.Uint64(h[:8])
}
