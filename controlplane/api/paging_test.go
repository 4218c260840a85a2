package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/xdpfw/xdpfw/proto"
)

// GET /v1/hosts pages with limit and continue (a Link header names the
// next page), and a host whose status does not decode is listed in place
// with why, not a 500 for the whole list.
func TestHostsPagedAndBadRecordsInPlace(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for i := 1; i <= 5; i++ {
		d, _ := json.Marshal(proto.NewHostDesired())
		if _, err := e.cli.Put(ctx, e.keys.HostDesired(fmt.Sprintf("h%d", i)), string(d)); err != nil {
			t.Fatal(err)
		}
	}
	// And 120 more under another name, so that one answer spans several
	// transactions of etcd reads (etcd allows 128 operations in one).
	for i := 0; i < 120; i++ {
		d, _ := json.Marshal(proto.NewHostDesired())
		if _, err := e.cli.Put(ctx, e.keys.HostDesired(fmt.Sprintf("x%03d", i)), string(d)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.cli.Put(ctx, e.keys.HostStatus("h3"), "{not json"); err != nil {
		t.Fatal(err)
	}
	var all []string
	path := "/v1/hosts?limit=2"
	pages := 0
	for path != "" {
		r := e.do("GET", path, viewerToken, nil)
		if r.code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, r.code, r.body)
		}
		var page []proto.HostInfo
		if err := json.Unmarshal(r.body, &page); err != nil {
			t.Fatal(err)
		}
		if len(page) > 2 {
			t.Fatalf("page of %d hosts with limit=2", len(page))
		}
		for _, h := range page {
			all = append(all, h.Host)
			if h.Host == "h3" && (h.State != proto.HostStateBadStatus || !strings.Contains(h.Reason, "decode")) {
				t.Errorf("h3 with an undecodable status: state %q reason %q", h.State, h.Reason)
			}
		}
		pages++
		path = ""
		if link := r.header.Get("Link"); link != "" {
			start, end := strings.Index(link, "<"), strings.Index(link, ">")
			path = link[start+1 : end]
		}
	}
	if got := strings.Join(all[:5], ","); got != "h1,h2,h3,h4,h5" || len(all) != 125 || pages != 63 {
		t.Fatalf("%d hosts over %d pages, first %s; want 125 over 63, h1..h5 first", len(all), pages, got)
	}
	r := e.do("GET", "/v1/hosts", viewerToken, nil)
	var whole []proto.HostInfo
	if err := json.Unmarshal(r.body, &whole); r.code != http.StatusOK || err != nil || len(whole) != 125 || r.header.Get("Link") != "" {
		t.Fatalf("unpaged list: %d, %d hosts, Link %q: %s", r.code, len(whole), r.header.Get("Link"), r.body[:min(len(r.body), 300)])
	}
	for _, bad := range []string{"limit=0", "limit=5001", "limit=x", "continue=Bad_Name"} {
		if r := e.do("GET", "/v1/hosts?"+bad, viewerToken, nil); r.code != http.StatusBadRequest {
			t.Errorf("GET /v1/hosts?%s: %d, want 400", bad, r.code)
		}
	}
}
