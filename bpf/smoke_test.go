package bpf

import (
	"encoding/binary"
	"testing"
)

func udp4Frame(src, dst [4]byte, sport, dport uint16) []byte {
	f := make([]byte, 14+20+8)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], 28)
	ip[8] = 64
	ip[9] = 17
	copy(ip[12:], src[:])
	copy(ip[16:], dst[:])
	udp := ip[20:]
	binary.BigEndian.PutUint16(udp[0:], sport)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], 8)
	return f
}

func TestSmoke(t *testing.T) {
	fw := openTestFirewall(t)
	rep := mustApply(t, fw, mustDecode(t, `
apiVersion: xdpfw/v1
kind: RuleSet
name: edge
mode: deny
rules:
  - id: dns
    action: drop
    src: [203.0.113.0/24]
    protocol: udp
    dstPorts: ["53"]
`))
	t.Logf("apply: %+v", rep)
	if got := run(t, fw, udp4Frame([4]byte{203, 0, 113, 9}, [4]byte{198, 18, 0, 1}, 1000, 53)); got != xdpDrop {
		t.Fatalf("dns from bad: got %d want drop", got)
	}
	if got := run(t, fw, udp4Frame([4]byte{203, 0, 114, 9}, [4]byte{198, 18, 0, 1}, 1000, 53)); got != xdpPass {
		t.Fatalf("dns from other: got %d want pass", got)
	}
	if got := run(t, fw, udp4Frame([4]byte{203, 0, 113, 9}, [4]byte{198, 18, 0, 1}, 1000, 54)); got != xdpPass {
		t.Fatalf("port 54: got %d want pass", got)
	}
	rep = mustApply(t, fw, mustDecode(t, `
apiVersion: xdpfw/v1
kind: RuleSet
name: edge
mode: deny
rules:
  - id: dns
    action: drop
    src: [203.0.113.0/24]
    protocol: udp
    dstPorts: ["53"]
`))
	t.Logf("apply 2: %+v", rep)
	rep = mustApply(t, fw, mustDecode(t, `
apiVersion: xdpfw/v1
kind: RuleSet
name: edge
mode: deny
rules:
  - id: dns
    action: drop
    src: [203.0.113.0/24]
    protocol: udp
    dstPorts: ["53"]
`))
	t.Logf("apply 3: %+v", rep)
}
