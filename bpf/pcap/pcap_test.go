package pcap

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

type record struct {
	ts      time.Time
	origLen int
	data    []byte
}

// samples are three frames as the XDP program hands them over: cut to 128
// bytes, with the length they had on the wire.
func samples() []record {
	base := time.Unix(1700000000, 123456789).UTC()
	frames := [][]byte{
		ether(etherTypeIPv4, nil, ipv4("192.0.2.1", "198.51.100.7", protoTCP, nil, 0, tcp(1234, 80, synFlag, make([]byte, 200)))),
		ether(etherTypeIPv6, nil, ipv6("2001:db8::1", "2001:db8::2", protoUDP, udp(40000, 9999, make([]byte, 300)))),
		ether(etherTypeIPv4, nil, ipv4("192.0.2.1", "192.0.2.2", protoICMP, nil, 0, icmp(8, make([]byte, 1000)))),
	}
	var rs []record
	for i, f := range frames {
		rs = append(rs, record{base.Add(time.Duration(i) * 1001 * time.Nanosecond), len(f), f[:128]})
	}
	return rs
}

func writeFile(t *testing.T, rs []record) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, 128)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if err := w.WritePacket(r.ts, r.origLen, r.data); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func readAll(t *testing.T, file []byte) (*Reader, []record) {
	t.Helper()
	r, err := NewReader(bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	var rs []record
	for {
		ts, origLen, data, err := r.Next()
		if err == io.EOF {
			return r, rs
		}
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, record{ts, origLen, data})
	}
}

func TestRoundTrip(t *testing.T) {
	want := samples()
	file := writeFile(t, want)
	if n := binary.LittleEndian.Uint32(file); n != magicNano {
		t.Errorf("magic %#x, want %#x", n, magicNano)
	}
	r, got := readAll(t, file)
	if r.SnapLen() != 128 || r.LinkType() != linkTypeEthernet {
		t.Errorf("snaplen %d, link type %d", r.SnapLen(), r.LinkType())
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("read back\n%v\nwant\n%v", got, want)
	}
	if _, _, _, err := r.Next(); err != io.EOF {
		t.Errorf("Next after the end: %v, want io.EOF", err)
	}

	// An empty capture is still a valid file.
	if _, got := readAll(t, writeFile(t, nil)); len(got) != 0 {
		t.Errorf("empty file read %d records", len(got))
	}
}

// TestReadClassic reads microsecond files as libpcap writes them, in both
// byte orders.
func TestReadClassic(t *testing.T) {
	for _, order := range []binary.AppendByteOrder{binary.LittleEndian, binary.BigEndian} {
		t.Run(order.String(), func(t *testing.T) {
			b := order.AppendUint32(nil, magicMicro)
			b = order.AppendUint16(b, 2) // version 2.4
			b = order.AppendUint16(b, 4)
			// thiszone, sigfigs, snaplen, link type; then one record header.
			for _, v := range []uint32{0, 0, 65535, linkTypeEthernet, 1700000000, 654321, 3, 60} {
				b = order.AppendUint32(b, v)
			}
			b = append(b, 1, 2, 3)
			_, got := readAll(t, b)
			want := []record{{time.Unix(1700000000, 654321000).UTC(), 60, []byte{1, 2, 3}}}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got %v, want %v", got, want)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	w, err := NewWriter(io.Discard, 4)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for name, err := range map[string]error{
		"data over snaplen":       w.WritePacket(now, 5, make([]byte, 5)),
		"origLen under data":      w.WritePacket(now, 2, make([]byte, 3)),
		"timestamp before 1970":   w.WritePacket(time.Unix(-1, 0), 1, []byte{1}),
		"snaplen 0":               func() error { _, err := NewWriter(io.Discard, 0); return err }(),
		"not pcap":                func() error { _, err := NewReader(strings.NewReader(strings.Repeat("x", 24))); return err }(),
		"short file header":       func() error { _, err := NewReader(strings.NewReader("\xd4\xc3\xb2\xa1")); return err }(),
		"record cut in data":      nextErr(writeFile(t, samples()[:1])[:24+16+100]),
		"record cut in header":    nextErr(writeFile(t, samples()[:1])[:24+8]),
		"record over the maximum": nextErr(append(writeFile(t, nil), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1)),
	} {
		if err == nil || err == io.EOF || !strings.HasPrefix(err.Error(), "pcap: ") {
			t.Errorf("%s: err %v", name, err)
		}
	}
	if err := nextErr(writeFile(t, samples()[:1])[:24+8]); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("cut record: %v, want io.ErrUnexpectedEOF", err)
	}
}

func nextErr(file []byte) error {
	r, err := NewReader(bytes.NewReader(file))
	if err != nil {
		return err
	}
	_, _, _, err = r.Next()
	return err
}

// TestTcpdump has the real tcpdump read a written file: the format is only
// right if the tools people use agree. tcpdump is a test dependency (CI
// installs it), so its absence fails the test instead of hiding a gap.
func TestTcpdump(t *testing.T) {
	bin, err := exec.LookPath("tcpdump")
	if err != nil {
		if bin, err = exec.LookPath("/usr/bin/tcpdump"); err != nil {
			t.Fatalf("tcpdump is needed for this test: %v", err)
		}
	}
	path := filepath.Join(t.TempDir(), "samples.pcap")
	if err := os.WriteFile(path, writeFile(t, samples()), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-nn", "-tt", "-r", path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tcpdump: %v\n%s", err, stderr.Bytes())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	want := []string{
		"192.0.2.1.1234 > 198.51.100.7.80",
		"2001:db8::1.40000 > 2001:db8::2.9999",
		"192.0.2.1 > 192.0.2.2",
	}
	if len(lines) != len(want) {
		t.Fatalf("tcpdump printed %d lines, want %d:\n%s\n%s", len(lines), len(want), out, stderr.Bytes())
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) {
			t.Errorf("tcpdump line %d = %q, want it to contain %q", i+1, lines[i], w)
		}
	}
	t.Logf("tcpdump:\n%s", out)
}
