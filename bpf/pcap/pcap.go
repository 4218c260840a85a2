// Package pcap writes drop samples as pcap files and summarises the frames they hold.
//
// The XDP program samples the first bytes of each dropped frame; a pcap file
// of them opens in tcpdump and Wireshark, and Decode gives the one-line view
// for tables and JSON without needing either.
package pcap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"time"
)

// File format constants (https://www.ietf.org/archive/id/draft-ietf-opsawg-pcap-04.html).
const (
	magicMicro       = 0xa1b2c3d4
	magicNano        = 0xa1b23c4d
	linkTypeEthernet = 1
	fileHeaderLen    = 24
	recordHeaderLen  = 16
	// maxCapLen bounds what Reader allocates for one record when a file's
	// snaplen is small but a record claims more (libpcap's own limit).
	maxCapLen = 262144
)

// Writer writes a pcap file (nanosecond-resolution magic 0xa1b23c4d, version
// 2.4, LINKTYPE_ETHERNET = 1). Nanoseconds, because the samples carry
// nanosecond kernel timestamps and rounding would reorder close drops.
// It is not safe for concurrent use.
type Writer struct {
	w       io.Writer
	snaplen uint32
	buf     []byte // one record, so each record is a single Write
}

// NewWriter writes the file header at once; snaplen is the most bytes any
// packet holds (128 for samples). Writing the header eagerly means even a
// capture that saw no drops is a valid, empty pcap file.
func NewWriter(w io.Writer, snaplen uint32) (*Writer, error) {
	if snaplen == 0 || snaplen > math.MaxInt32 {
		return nil, fmt.Errorf("pcap: snaplen %d out of range", snaplen)
	}
	var h [fileHeaderLen]byte
	le := binary.LittleEndian // readers take either order from the magic
	le.PutUint32(h[0:], magicNano)
	le.PutUint16(h[4:], 2) // version 2.4
	le.PutUint16(h[6:], 4)
	// h[8:16]: thiszone and sigfigs, 0 as every modern writer has it.
	le.PutUint32(h[16:], snaplen)
	le.PutUint32(h[20:], linkTypeEthernet)
	if _, err := w.Write(h[:]); err != nil {
		return nil, fmt.Errorf("pcap: write file header: %w", err)
	}
	return &Writer{w: w, snaplen: snaplen}, nil
}

// WritePacket writes one record: ts, the captured bytes (len(data) <=
// snaplen, else an error), and the frame's original length (>= len(data),
// else an error). Readers trust both lengths, so a record that breaks them
// is refused rather than written.
func (w *Writer) WritePacket(ts time.Time, origLen int, data []byte) error {
	if uint64(len(data)) > uint64(w.snaplen) {
		return fmt.Errorf("pcap: packet of %d bytes exceeds snaplen %d", len(data), w.snaplen)
	}
	if origLen < len(data) || uint64(origLen) > math.MaxUint32 {
		return fmt.Errorf("pcap: original length %d invalid for %d captured bytes", origLen, len(data))
	}
	sec := ts.Unix()
	if sec < 0 || sec > math.MaxUint32 {
		return fmt.Errorf("pcap: timestamp %v outside the pcap range", ts)
	}
	le := binary.LittleEndian
	b := append(w.buf[:0], make([]byte, recordHeaderLen)...)
	le.PutUint32(b[0:], uint32(sec))
	le.PutUint32(b[4:], uint32(ts.Nanosecond()))
	le.PutUint32(b[8:], uint32(len(data)))
	le.PutUint32(b[12:], uint32(origLen))
	w.buf = append(b, data...)
	if _, err := w.w.Write(w.buf); err != nil {
		return fmt.Errorf("pcap: write packet: %w", err)
	}
	return nil
}

// Reader reads back what Writer wrote (and classic microsecond pcap files,
// both byte orders), for tests and tools. It does not read pcapng.
type Reader struct {
	r        io.Reader
	order    binary.ByteOrder
	nano     bool
	snaplen  uint32
	linkType uint32
}

// NewReader reads and checks the file header.
func NewReader(r io.Reader) (*Reader, error) {
	var h [fileHeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, fmt.Errorf("pcap: read file header: %w", err)
	}
	rd := &Reader{r: r}
	switch magic := binary.LittleEndian.Uint32(h[:]); magic {
	case magicMicro, magicNano:
		rd.order = binary.LittleEndian
		rd.nano = magic == magicNano
	case 0xd4c3b2a1, 0x4d3cb2a1: // the same magics written big-endian
		rd.order = binary.BigEndian
		rd.nano = magic == 0x4d3cb2a1
	default:
		return nil, fmt.Errorf("pcap: not a pcap file (magic 0x%08x)", magic)
	}
	if major := rd.order.Uint16(h[4:]); major != 2 {
		return nil, fmt.Errorf("pcap: unsupported version %d.%d", major, rd.order.Uint16(h[6:]))
	}
	rd.snaplen = rd.order.Uint32(h[16:])
	rd.linkType = rd.order.Uint32(h[20:]) & 0x0fffffff // the top bits carry FCS info
	return rd, nil
}

// SnapLen is the snapshot length the file header declares.
func (r *Reader) SnapLen() uint32 { return r.snaplen }

// LinkType is the file's link-layer header type (1 for Ethernet).
func (r *Reader) LinkType() uint32 { return r.linkType }

// Next reads one record. It returns io.EOF, unwrapped, at a clean end of file
// so that callers can loop with err == io.EOF; a file cut inside a record
// gives io.ErrUnexpectedEOF (wrapped). data is new for each call.
func (r *Reader) Next() (ts time.Time, origLen int, data []byte, err error) {
	var h [recordHeaderLen]byte
	if _, err := io.ReadFull(r.r, h[:]); err != nil {
		if err == io.EOF {
			return time.Time{}, 0, nil, io.EOF
		}
		return time.Time{}, 0, nil, fmt.Errorf("pcap: read record header: %w", err)
	}
	sec, frac := r.order.Uint32(h[0:]), r.order.Uint32(h[4:])
	capLen, orig := r.order.Uint32(h[8:]), r.order.Uint32(h[12:])
	if capLen > max(r.snaplen, maxCapLen) {
		return time.Time{}, 0, nil, fmt.Errorf("pcap: record of %d bytes exceeds snaplen %d", capLen, r.snaplen)
	}
	data = make([]byte, capLen)
	if _, err := io.ReadFull(r.r, data); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return time.Time{}, 0, nil, fmt.Errorf("pcap: read record data: %w", err)
	}
	nsec := int64(frac)
	if !r.nano {
		nsec *= 1000
	}
	return time.Unix(int64(sec), nsec).UTC(), int(orig), data, nil
}
