package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zaptest"

	"github.com/xdpfw/xdpfw/bpf"
	"github.com/xdpfw/xdpfw/controlplane/etcdserver/etcdtest"
	"github.com/xdpfw/xdpfw/etcdstore"
	"github.com/xdpfw/xdpfw/proto"
)

// An agent with an enrolled host's certificate, on a secure etcd (TLS,
// client certificates, auth on), converges and reports with exactly the
// rights its role gives; with another host's certificate it can report
// nothing under its own name.
func TestEnrolledAgentConvergesAndReports(t *testing.T) {
	if testing.Short() {
		t.Skip("needs root and BPF; not run with -short")
	}
	sec := etcdtest.StartSecure(t)
	tlsInfo := transport.TLSInfo{CertFile: sec.Files.RootCertFile, KeyFile: sec.Files.RootKeyFile, TrustedCAFile: sec.Files.CAFile}
	tlsCfg, err := tlsInfo.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	root, err := clientv3.New(clientv3.Config{Endpoints: sec.Endpoints(), TLS: tlsCfg, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	keys := proto.NewKeys("")
	rootStore := etcdstore.New(root, keys)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, h := range []string{"h1", "h2"} {
		e := proto.HostEnrollment{APIVersion: proto.APIVersion, Kind: proto.KindHostEnrollment, Host: h,
			User: proto.HostEtcdUser(h), Labels: map[string]string{"role": "edge"}, EnrolledAt: time.Now().UTC()}
		if _, err := rootStore.EnrollHost(ctx, e, proto.AuditRecord{Who: "test", Action: "enroll"}); err != nil {
			t.Fatal(err)
		}
	}

	pin := filepath.Join(bpf.DefaultPinPath+"-agent-test", fmt.Sprintf("%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "_")))
	t.Cleanup(func() {
		bpf.Detach(bpf.Options{PinPath: pin, Interface: "lo"})
		os.RemoveAll(pin)
	})
	f := &fixture{t: t, cli: root, keys: keys, pinPath: pin, host: "h1", iface: InterfaceConfig{Name: "lo"}}
	f.putRuleSet("edge", 1, 22)
	f.desire(proto.RuleSetRef{Name: "edge", Version: 1})

	cert, key := sec.Issue(t, proto.HostEtcdUser("h1"))
	f.startSecure(cert, key, sec.Files.CAFile)
	f.waitStatus("edge@1 in force, reported with h1's certificate", applied(proto.RuleSetRef{Name: "edge", Version: 1}))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := root.Get(ctx, keys.HostTelemetry("h1"))
		if err == nil && len(resp.Kvs) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no telemetry of h1 10s after it applied: %v", err)
		}
	}

	// h2's certificate on an agent calling itself h3: etcd refuses what
	// it would write, so no status of h3 appears.
	cert2, key2 := sec.Issue(t, proto.HostEtcdUser("h2"))
	f3 := *f
	f3.host = "h3"
	f3.pinPath = pin + "-h3"
	t.Cleanup(func() { os.RemoveAll(f3.pinPath) })
	f3.desireVia(root, proto.RuleSetRef{Name: "edge", Version: 1})
	f3.startSecure(cert2, key2, sec.Files.CAFile)
	time.Sleep(3 * time.Second)
	if st, ok := f3.status(); ok {
		t.Fatalf("an agent with h2's certificate wrote h3's status: %+v", st)
	}
}

// startSecure runs an agent of f.host with a client certificate.
func (f *fixture) startSecure(certFile, keyFile, caFile string) {
	f.t.Helper()
	off := ""
	a, err := New(Config{
		Endpoints: f.cli.Endpoints(), CertFile: certFile, KeyFile: keyFile, CAFile: caFile, Host: f.host,
		Interfaces: []InterfaceConfig{f.iface}, PinPath: f.pinPath,
		LeaseTTL: Duration(2 * time.Second), TelemetryInterval: Duration(200 * time.Millisecond),
		MetricsAddr: &off,
	}, zaptest.NewLogger(f.t))
	if err != nil {
		f.t.Fatalf("new agent: %v", err)
	}
	a.noAttach = true
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	f.t.Cleanup(func() {
		cancel()
		<-done
		a.Close()
	})
}

func (f *fixture) desireVia(cli *clientv3.Client, refs ...proto.RuleSetRef) {
	f.t.Helper()
	st := etcdstore.New(cli, f.keys)
	if _, err := st.SetDesired(context.Background(), f.host, refs); err != nil {
		f.t.Fatal(err)
	}
}
