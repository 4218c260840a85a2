package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/xdpfw/xdpfw/proto"
)

var hostsCommands = map[string]command{
	"enroll": {runHostsEnroll, "give a host its etcd identity and labels; writes what its agent needs"},
	"revoke": {runHostsRevoke, "take a host's etcd identity away: etcd refuses its agent from then on"},
}

func runHosts(args []string, stdout, stderr io.Writer) error {
	return dispatch("xdpfwctl hosts", hostsCommands, args, stdout, stderr)
}

// Files of an enrollment bundle.
const (
	bundleCert   = "etcd-client.crt"
	bundleKey    = "etcd-client.key"
	bundleCA     = "etcd-ca.crt"
	bundleConfig = "agent.yaml"
)

func runHostsEnroll(args []string, stdout, stderr io.Writer) error {
	var labels, out string
	c, af, rest, cancel, err := apiCommand("hosts enroll", args, stderr, "table, json, yaml", func(fs *flag.FlagSet) {
		fs.StringVar(&labels, "labels", "", "the labels that select the host's rule sets, k=v,k2=v2")
		fs.StringVar(&out, "out", "", "directory to write the host's certificate, key, CA and agent.yaml into (required; created, must be empty)")
	})
	if err != nil {
		return err
	}
	defer cancel()
	if len(rest) != 1 || out == "" {
		return usageError("want hosts enroll HOST --out DIR [--labels k=v,...]")
	}
	host := rest[0]
	if err := proto.ValidateHostName(host); err != nil {
		return usageError(err.Error())
	}
	req := proto.EnrollRequest{Labels: map[string]string{}}
	if labels != "" {
		for _, kv := range strings.Split(labels, ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return usageError(fmt.Sprintf("--labels %q: want k=v,k2=v2", labels))
			}
			req.Labels[k] = v
		}
	}
	// The directory is checked before the call: an enrollment whose key
	// cannot be written would have to be made again.
	if err := emptyDir(out); err != nil {
		return err
	}
	var resp proto.EnrollResponse
	if err := c.call("POST", "/v1/hosts/"+url.PathEscape(host)+"/enrollment", req, nil, &resp); err != nil {
		return err
	}
	config, err := writeBundle(out, resp)
	if err != nil {
		return fmt.Errorf("host %s is enrolled, but its bundle was not written (enroll it again to get another certificate): %w", host, err)
	}
	if done, err := structured(af, stdout, resp.Enrollment); done {
		return err
	}
	fmt.Fprintf(stdout, "host %s enrolled as etcd user %s, labels %s\n", host, resp.Enrollment.User, labelList(resp.Enrollment.Labels))
	fmt.Fprintf(stdout, "its agent's identity is in %s (the key is nowhere else): copy the directory to %s and run\n  xdpfw-agent --config %s --iface IFACE\n", out, host, config)
	return nil
}

// emptyDir creates dir (0700) or checks that it is an empty directory.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("--out: %w", err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("--out: %w", err)
	case len(entries) > 0:
		return usageError(fmt.Sprintf("--out %s is not empty: give a new directory for each host", dir))
	}
	return nil
}

// writeBundle writes an enrollment's files and an agent configuration
// naming them, returning the configuration's path.
func writeBundle(dir string, resp proto.EnrollResponse) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	files := []struct {
		name string
		data string
		mode os.FileMode
	}{
		{bundleKey, resp.KeyPEM, 0o600},
		{bundleCert, resp.CertPEM, 0o644},
		{bundleCA, resp.CAPEM, 0o644},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(abs, f.name), []byte(f.data), f.mode); err != nil {
			return "", err
		}
	}
	cfg := map[string]any{
		"endpoints": resp.Endpoints,
		"host":      resp.Enrollment.Host,
		"keyPrefix": resp.KeyPrefix,
		"certFile":  filepath.Join(abs, bundleCert),
		"keyFile":   filepath.Join(abs, bundleKey),
		"caFile":    filepath.Join(abs, bundleCA),
	}
	if len(resp.Enrollment.Labels) > 0 {
		// What the agent reports; the enrollment's labels are the ones
		// selectors match.
		cfg["labels"] = resp.Enrollment.Labels
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return "", err
	}
	path := filepath.Join(abs, bundleConfig)
	return path, os.WriteFile(path, data, 0o644)
}

func runHostsRevoke(args []string, stdout, stderr io.Writer) error {
	c, _, rest, cancel, err := apiCommand("hosts revoke", args, stderr, "", nil)
	if err != nil {
		return err
	}
	defer cancel()
	if len(rest) != 1 {
		return usageError("want hosts revoke HOST")
	}
	if err := c.call("DELETE", "/v1/hosts/"+url.PathEscape(rest[0])+"/enrollment", nil, nil, nil); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "host %s revoked: etcd refuses its agent's certificate from now on; its status goes when its lease expires\n", rest[0])
	return nil
}
