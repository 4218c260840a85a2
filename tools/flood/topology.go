package flood

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Interface names inside the namespaces. The namespaces are fresh, so the
// names need not be unique on the machine; the veth pair is created
// straight into them and never exists in the caller's namespace.
const (
	SenderIface   = "flood-tx"
	ReceiverIface = "flood-rx"
)

// MAC addresses of the pair (locally administered): the frames are
// addressed to the receiver, as a real flood to a host would be.
var (
	senderMAC   = net.HardwareAddr{0x02, 0x00, 0x5e, 0x10, 0x00, 0x01}
	receiverMAC = net.HardwareAddr{0x02, 0x00, 0x5e, 0x10, 0x00, 0x02}
)

// Pair is two fresh network namespaces joined by a veth pair: trafgen
// sends from the sender's end, the configuration under test drops on the
// receiver's.
type Pair struct {
	SenderNS, ReceiverNS string // names under /run/netns (for ip netns exec)
	sender, receiver     netns.NsHandle
	senderNL, receiverNL *netlink.Handle
	// ReceiverIndex is the receiving veth's ifindex in its namespace.
	ReceiverIndex int
}

var pairSeq atomic.Int64

// NewPair creates the namespaces and the veth pair, both ends up. Close
// removes everything (it is safe on a half-built pair: NewPair calls it on
// failure).
func NewPair() (p *Pair, err error) {
	n := pairSeq.Add(1)
	p = &Pair{
		SenderNS:   fmt.Sprintf("flood-%d-%d-tx", os.Getpid(), n),
		ReceiverNS: fmt.Sprintf("flood-%d-%d-rx", os.Getpid(), n),
		sender:     netns.None(), receiver: netns.None(),
	}
	defer func() {
		if err != nil {
			p.Close()
			p = nil
		}
	}()
	if p.sender, err = newNamedNetns(p.SenderNS); err != nil {
		err = fmt.Errorf("create network namespace %s: %w", p.SenderNS, err)
		p.SenderNS, p.ReceiverNS = "", "" // nothing to delete
		return nil, err
	}
	if p.receiver, err = newNamedNetns(p.ReceiverNS); err != nil {
		err = fmt.Errorf("create network namespace %s: %w", p.ReceiverNS, err)
		p.ReceiverNS = ""
		return nil, err
	}
	if p.senderNL, err = netlink.NewHandleAt(p.sender); err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", p.SenderNS, err)
	}
	if p.receiverNL, err = netlink.NewHandleAt(p.receiver); err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", p.ReceiverNS, err)
	}
	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{
			Name: SenderIface, HardwareAddr: senderMAC, Namespace: netlink.NsFd(p.sender),
			// One queue each way: the receiver's XDP counters and NAPI are
			// those of rx queue 0, and nothing spreads the load.
			NumTxQueues: 1, NumRxQueues: 1,
		},
		PeerName: ReceiverIface, PeerHardwareAddr: receiverMAC, PeerNamespace: netlink.NsFd(p.receiver),
		PeerNumTxQueues: 1, PeerNumRxQueues: 1,
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("create veth pair %s/%s: %w", SenderIface, ReceiverIface, err)
	}
	for _, end := range []struct {
		h    *netlink.Handle
		name string
	}{{p.receiverNL, ReceiverIface}, {p.senderNL, SenderIface}} {
		l, err := end.h.LinkByName(end.name)
		if err != nil {
			return nil, fmt.Errorf("find %s: %w", end.name, err)
		}
		if err := end.h.LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("set %s up: %w", end.name, err)
		}
		if end.name == ReceiverIface {
			p.ReceiverIndex = l.Attrs().Index
		}
	}
	return p, nil
}

// newNamedNetns makes a network namespace mounted under /run/netns (as `ip
// netns add` does) without moving the calling thread into it.
func newNamedNetns(name string) (netns.NsHandle, error) {
	type result struct {
		ns  netns.NsHandle
		err error
	}
	c := make(chan result, 1)
	go func() {
		// Never unlocked: NewNamed moves this thread into the new
		// namespace, so it must end with the goroutine.
		runtime.LockOSThread()
		ns, err := netns.NewNamed(name)
		c <- result{ns, err}
	}()
	r := <-c
	return r.ns, r.err
}

// InReceiver runs fn on a thread inside the receiver's namespace: network
// interface names and ifindexes (bpf.Open, XDP attach) resolve there.
func (p *Pair) InReceiver(fn func() error) error {
	c := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with the goroutine, so it never
		// runs anything else in the wrong namespace.
		runtime.LockOSThread()
		if err := netns.Set(p.receiver); err != nil {
			c <- fmt.Errorf("enter network namespace %s: %w", p.ReceiverNS, err)
			return
		}
		c <- fn()
	}()
	return <-c
}

// StackReceives reads how many packets the receiver's IP stack has
// received, IPv4 and IPv6 (InReceives and Ip6InReceives of its
// /proc/net/snmp and snmp6).
func (p *Pair) StackReceives() (uint64, error) {
	var total uint64
	err := p.InReceiver(func() error {
		// thread-self: /proc/self/net is the namespace of the process's
		// first thread, not of this one.
		v4, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		lines := strings.Split(string(v4), "\n")
		found := false
		for i := 0; i+1 < len(lines); i++ {
			names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			if len(names) == 0 || names[0] != "Ip:" || len(values) != len(names) || values[0] != "Ip:" {
				continue
			}
			for k, name := range names {
				if name == "InReceives" {
					n, err := strconv.ParseUint(values[k], 10, 64)
					if err != nil {
						return fmt.Errorf("parse InReceives: %w", err)
					}
					total += n
					found = true
				}
			}
			break
		}
		v6, err := os.ReadFile("/proc/thread-self/net/snmp6")
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(v6), "\n") {
			if f := strings.Fields(line); len(f) == 2 && f[0] == "Ip6InReceives" {
				n, err := strconv.ParseUint(f[1], 10, 64)
				if err != nil {
					return fmt.Errorf("parse Ip6InReceives: %w", err)
				}
				if !found {
					return errors.New("no Ip InReceives in /proc/net/snmp")
				}
				total += n
				return nil
			}
		}
		return errors.New("no Ip6InReceives in /proc/net/snmp6")
	})
	if err != nil {
		return 0, fmt.Errorf("read the receiver's IP statistics: %w", err)
	}
	return total, nil
}

// Counters are one reading of the pair's interface statistics.
type Counters struct {
	// RxPackets is what the receiving veth processed: with an XDP program
	// attached, the packets its NAPI ran through XDP (the per-queue
	// xdp_packets of `ethtool -S`); without, the packets the sender handed
	// to its backlog. Either way every one of them reached the
	// configuration under test.
	RxPackets uint64
	// SenderDropped is what the sending veth could not hand over (the
	// receiver's ring or backlog full).
	SenderDropped uint64
}

// Read reads both ends' counters over netlink.
func (p *Pair) Read() (Counters, error) {
	rx, err := p.receiverNL.LinkByIndex(p.ReceiverIndex)
	if err != nil {
		return Counters{}, fmt.Errorf("read %s statistics: %w", ReceiverIface, err)
	}
	tx, err := p.senderNL.LinkByName(SenderIface)
	if err != nil {
		return Counters{}, fmt.Errorf("read %s statistics: %w", SenderIface, err)
	}
	rs, ts := rx.Attrs().Statistics, tx.Attrs().Statistics
	if rs == nil || ts == nil {
		return Counters{}, errors.New("netlink returned no interface statistics")
	}
	return Counters{RxPackets: rs.RxPackets, SenderDropped: ts.TxDropped}, nil
}

// Close deletes the namespaces, which removes the veth pair with them.
func (p *Pair) Close() error {
	var errs []error
	for _, h := range []*netlink.Handle{p.senderNL, p.receiverNL} {
		if h != nil {
			h.Close()
		}
	}
	for _, ns := range []struct {
		h    netns.NsHandle
		name string
	}{{p.sender, p.SenderNS}, {p.receiver, p.ReceiverNS}} {
		if ns.h.IsOpen() {
			ns.h.Close()
		}
		if ns.name != "" {
			if err := netns.DeleteNamed(ns.name); err != nil {
				errs = append(errs, fmt.Errorf("delete network namespace %s: %w", ns.name, err))
			}
		}
	}
	return errors.Join(errs...)
}
