package pki

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCAIsCreatedOnceAndSignsClientsAndServers(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ca, err := LoadOrCreateCA(dir, "xdpfw test CA")
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("CA key mode %v, want 0600", st.Mode().Perm())
	}
	again, err := LoadOrCreateCA(dir, "another name")
	if err != nil {
		t.Fatal(err)
	}
	if string(again.CertPEM()) != string(ca.CertPEM()) {
		t.Fatal("a second start made a new CA: every enrolled host would be locked out")
	}

	certPEM, _, err := again.IssueClient("host:web-1")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "host:web-1" {
		t.Errorf("CN %q, want host:web-1 (the etcd user)", cert.Subject.CommonName)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate does not verify as a client against the CA: %v", err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("a host's client certificate verifies as a server certificate")
	}

	srvPEM, _, err := ca.IssueServer("etcd", []string{"127.0.0.1", "198.18.0.10", "etcd.example"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := parseCert(srvPEM)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"127.0.0.1", "198.18.0.10", "etcd.example"} {
		if _, err := srv.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: name}); err != nil {
			t.Errorf("server certificate for %s: %v", name, err)
		}
	}
	if _, err := srv.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "198.18.0.11"}); err == nil {
		t.Error("server certificate verifies for an address it does not name")
	}

	// A certificate from another CA does not verify.
	other, err := LoadOrCreateCA(t.TempDir(), "other")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: other.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("a certificate verifies against a CA that did not sign it")
	}
}

func TestHalfAPKIIsNotReplaced(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadOrCreateCA(dir, "ca"); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, CACertFile)); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrCreateCA(dir, "ca")
	if err == nil || !strings.Contains(err.Error(), "not both") {
		t.Fatalf("a key without its certificate: %v, want an error saying so", err)
	}
	if _, err := os.Stat(filepath.Join(dir, CACertFile)); err == nil {
		t.Fatal("a new CA certificate was written beside the old key")
	}
}

func TestLoadCARefusesAForeignKey(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for _, d := range []string{a, b} {
		if _, err := LoadOrCreateCA(d, "ca"); err != nil {
			t.Fatal(err)
		}
	}
	_, err := LoadCA(filepath.Join(a, CACertFile), filepath.Join(b, CAKeyFile))
	if err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Fatalf("a CA certificate with another CA's key: %v", err)
	}
	_, err = LoadCA(filepath.Join(a, CAKeyFile), filepath.Join(a, CAKeyFile))
	if err == nil {
		t.Fatal("a key given as the CA certificate loaded")
	}
}
