// Package flood measures packet filters under a real flood: trafgen sends
// 64-byte UDP frames from random source addresses through a veth pair
// between two network namespaces, and the receiving end drops them with one
// of several configurations (a bare XDP_DROP program, a kernel LPM-trie
// program, an nftables interval set, xdp-filter, xdpfw). The figure is the
// receiver's rate: the packets the receiving veth processed per second.
//
// Where the work runs (checked on kernel 6.18, and measured by every run
// from /proc/softirqs): veth has no interrupt and, unless its NAPI is made
// threaded, no thread of its own. With an XDP program attached, veth_xmit
// puts the sender's skb on the peer's ptr_ring and schedules the peer's
// NAPI on the CPU that transmits; the NET_RX softirq then runs the XDP
// program when that CPU re-enables bottom halves at the end of the
// transmit, or in that CPU's ksoftirqd under load. Without XDP (the
// nftables case) veth_xmit hands the skb to netif_rx, which queues it on
// the same CPU's backlog, processed by the same softirq. So with trafgen
// pinned to one CPU, that CPU sends and receives every packet, the time
// per packet is 1/rate = send + receive, and the difference between two
// configurations' 1/rate (ns above bare XDP_DROP) is the difference of
// their per-packet receive costs. The sender saturates the receiver in the
// sense that matters here: its CPU is busy all the time (each run reports
// that CPU's idle share), and every packet it sends is received, never
// queued for another CPU.
//
// The package is a harness for its benchmark (BenchmarkFlood, `make
// bench`) and smoke test (TestFloodHarness); it needs root, a BPF
// filesystem, trafgen (netsniff-ng), nft (nftables) and ip (iproute2).
package flood
