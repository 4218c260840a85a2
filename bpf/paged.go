package bpf

// paged16 is 65,536 slices, one per /16, kept in 256 pages of 256. A fork
// shares every page and copies a page only when it first changes a slice
// in it, so an update that changes a few /16s allocates a few KB, not the
// 1.5 MB of slice headers a copy of the whole would take (fresh memory is
// dear here: each of its pages is a fault, and the VM's page faults cost
// microseconds).
type paged16[T any] struct {
	pages [256]*[256][]T
	owned [4]uint64 // the pages this table made (and may change in place)
}

// get returns slice i.
func (p *paged16[T]) get(i int) []T {
	pg := p.pages[i>>8]
	if pg == nil {
		return nil
	}
	return pg[i&255]
}

// set sets slice i.
func (p *paged16[T]) set(i int, v []T) {
	n := i >> 8
	if p.owned[n/64]&(1<<(n%64)) == 0 {
		pg := new([256][]T)
		if old := p.pages[n]; old != nil {
			*pg = *old
		}
		p.pages[n] = pg
		p.owned[n/64] |= 1 << (n % 64)
	}
	p.pages[n][i&255] = v
}

// fork returns a table with the same slices that shares p's pages.
func (p *paged16[T]) fork() *paged16[T] {
	return &paged16[T]{pages: p.pages}
}
