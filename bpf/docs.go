package bpf

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/xdpfw/xdpfw/proto"
)

const pageSize = 4096

// appliedDoc is what the docs map holds for a generation: the rule sets it
// was compiled from and how.
type appliedDoc struct {
	Interface string          `json:"interface"`
	Options   CompileOptions  `json:"options"`
	RuleSets  []proto.RuleSet `json:"ruleSets"`
}

// writeDocs stores the compiled rule sets with generation gen, reusing the
// generation's docs map when it is big enough.
func (fw *Firewall) writeDocs(gen uint32, c *Compiled, rep *ApplyReport) error {
	var buf bytes.Buffer
	buf.Write(make([]byte, 8)) // the length, filled in below
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return err
	}
	if _, err := zw.Write(c.doc); err != nil {
		return fmt.Errorf("compress applied rule sets: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("compress applied rule sets: %w", err)
	}
	data := buf.Bytes()
	binary.LittleEndian.PutUint64(data, uint64(len(data)-8))
	pages := uint32((len(data) + pageSize - 1) / pageSize)

	m, err := innerMap(fw.objs.Docs, gen)
	if err != nil {
		return err
	}
	if m != nil && m.MaxEntries() < pages {
		m.Close()
		m = nil
	}
	if m == nil {
		if m, err = fw.newInner(fw.objs.Docs, gen, fw.spec.Maps["docs"].InnerMap, pages+pages/4+1); err != nil {
			return err
		}
	}
	defer m.Close()
	mem, err := m.Memory()
	if err != nil {
		return fmt.Errorf("map docs: %w", err)
	}
	if _, err := mem.WriteAt(data, 0); err != nil {
		return fmt.Errorf("write docs: %w", err)
	}
	rep.DocBytes = len(data)
	return nil
}

// AppliedRuleSets returns the rule sets the active generation was compiled
// from, with the interface and options they were compiled for.
func (fw *Firewall) AppliedRuleSets() ([]proto.RuleSet, CompileOptions, error) {
	gen, err := fw.ActiveGeneration()
	if err != nil {
		return nil, CompileOptions{}, err
	}
	m, err := innerMap(fw.objs.Docs, gen)
	if err != nil {
		return nil, CompileOptions{}, err
	}
	if m == nil {
		return nil, CompileOptions{}, fmt.Errorf("generation %d of %s: %w", gen, fw.iface, errNoDocs)
	}
	defer m.Close()
	mem, err := m.Memory()
	if err != nil {
		return nil, CompileOptions{}, fmt.Errorf("map docs: %w", err)
	}
	var n [8]byte
	if _, err := mem.ReadAt(n[:], 0); err != nil {
		return nil, CompileOptions{}, fmt.Errorf("read docs: %w", err)
	}
	size := binary.LittleEndian.Uint64(n[:])
	if size > uint64(mem.Size())-8 {
		return nil, CompileOptions{}, fmt.Errorf("docs of generation %d: length %d past the map", gen, size)
	}
	zr, err := gzip.NewReader(io.NewSectionReader(mem, 8, int64(size)))
	if err != nil {
		return nil, CompileOptions{}, fmt.Errorf("docs of generation %d: %w", gen, err)
	}
	var doc appliedDoc
	if err := json.NewDecoder(zr).Decode(&doc); err != nil {
		return nil, CompileOptions{}, fmt.Errorf("decode docs of generation %d: %w", gen, err)
	}
	return doc.RuleSets, doc.Options, nil
}

var errNoDocs = errors.New("no applied rule sets stored (applied by an older version?)")
