package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xdpfw/xdpfw/controlplane/auth"
	"github.com/xdpfw/xdpfw/controlplane/etcdserver/etcdtest"
	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// BenchmarkAPIReadsUnderLoad: latency of API reads (a rule set's head, and
// the host list of 100 hosts) with 1 to 64 concurrent clients on keep-alive
// connections, for 3 s each, beside direct etcd reads of the same rule set
// by as many clients in the same run: the API's cost above its store.
func BenchmarkAPIReadsUnderLoad(b *testing.B) {
	_, cli := etcdtest.StartWithClient(b)
	toks, err := auth.Parse([]byte(testTokens))
	if err != nil {
		b.Fatal(err)
	}
	keys := proto.NewKeys("/xdpfw-bench/")
	a, err := New(Config{Store: etcdstore.New(cli, keys), Tokens: toks})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(a)
	defer srv.Close()
	ctx := context.Background()
	rs := `{"apiVersion":"xdpfw/v1","kind":"RuleSet","name":"edge","mode":"deny","rules":[` +
		`{"id":"ssh","action":"drop","protocol":"tcp","dstPorts":["22"]},{"id":"dns","action":"drop","protocol":"udp","dstPorts":["53"]}]}`
	req, _ := http.NewRequest("PUT", srv.URL+"/v1/rulesets/edge", strings.NewReader(rs))
	req.Header.Set("Authorization", "Bearer "+operatorToken)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode >= 300 {
		b.Fatalf("put: %v %v", resp, err)
	}
	for i := range 100 {
		st := proto.HostStatus{APIVersion: proto.APIVersion, Kind: proto.KindHostStatus, Host: fmt.Sprintf("h%d", i), InSync: true,
			Applied: []proto.RuleSetRef{{Name: "edge", Version: 1}}, Labels: map[string]string{"role": "web"}}
		data, _ := json.Marshal(st)
		if _, err := cli.Put(ctx, keys.HostStatus(st.Host), string(data)); err != nil {
			b.Fatal(err)
		}
	}

	run := func(clients int, what string, once func(c *http.Client) error) (p50, p99 time.Duration, rate float64) {
		var mu sync.Mutex
		var lat []time.Duration
		deadline := time.Now().Add(3 * time.Second)
		var wg sync.WaitGroup
		for range clients {
			c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			wg.Go(func() {
				var mine []time.Duration
				for time.Now().Before(deadline) {
					t0 := time.Now()
					if err := once(c); err != nil {
						b.Errorf("%s: %v", what, err)
						return
					}
					mine = append(mine, time.Since(t0))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
		}
		wg.Wait()
		slices.Sort(lat)
		if len(lat) == 0 {
			b.Fatalf("%s: no request completed", what)
		}
		return lat[len(lat)/2], lat[len(lat)*99/100], float64(len(lat)) / 3
	}
	get := func(path string) func(c *http.Client) error {
		return func(c *http.Client) error {
			req, _ := http.NewRequest("GET", srv.URL+path, nil)
			req.Header.Set("Authorization", "Bearer "+viewerToken)
			resp, err := c.Do(req)
			if err != nil {
				return err
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("status %d", resp.StatusCode)
			}
			return nil
		}
	}
	etcdGet := func(*http.Client) error {
		_, err := cli.Get(ctx, keys.RuleSetVersion("edge", 1))
		return err
	}
	for _, clients := range []int{1, 8, 64} {
		e50, e99, erate := run(clients, "etcd get", etcdGet)
		r50, r99, rrate := run(clients, "GET rule set", get("/v1/rulesets/edge"))
		h50, h99, hrate := run(clients, "GET hosts", get("/v1/hosts"))
		b.ReportMetric(float64(r99)/float64(time.Millisecond), fmt.Sprintf("ruleset-p99-ms/c%d", clients))
		b.ReportMetric(float64(h99)/float64(time.Millisecond), fmt.Sprintf("hosts-p99-ms/c%d", clients))
		b.ReportMetric(float64(r99)/float64(e99), fmt.Sprintf("ruleset-p99/etcd-p99/c%d", clients))
		b.Logf("%2d clients: GET /v1/rulesets/edge p50 %v p99 %v (%.0f/s); GET /v1/hosts (100) p50 %v p99 %v (%.0f/s); etcd Get p50 %v p99 %v (%.0f/s)",
			clients, r50, r99, rrate, h50, h99, hrate, e50, e99, erate)
	}
}
