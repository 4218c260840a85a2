// Package integration holds xdpfw's end-to-end tests: test hosts are
// network namespaces joined by veth pairs, the firewall is the real
// xdpfwctl binary attached to a real interface, and real packets decide
// every outcome. The tests need root, a BPF filesystem at /sys/fs/bpf,
// nsenter (util-linux) and ping (iputils-ping).
package integration
