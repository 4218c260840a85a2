package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The interface map sizes are read from the configuration file and out of
// range values are refused, every one named.
func TestConfigSizesOfTheInterfaceMaps(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.yaml")
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("endpoints: [http://127.0.0.1:2379]\nhost: web-1\ninterfaces:\n  - {name: eth0, sourceBuckets: 4096, sourceSketchLines: 16384}\n")
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if c, err = c.withDefaults(); err != nil {
		t.Fatal(err)
	}
	if ic := c.Interfaces[0]; ic.SourceBuckets != 4096 || ic.SourceSketchLines != 16384 {
		t.Fatalf("interface %+v, want 4096 buckets and 16384 sketch lines", ic)
	}

	write("endpoints: [http://127.0.0.1:2379]\nhost: web-1\ninterfaces:\n  - {name: eth0, sourceBuckets: -1, sourceSketchLines: 99999999}\n")
	if c, err = LoadConfig(path); err != nil {
		t.Fatal(err)
	}
	_, err = c.withDefaults()
	for _, want := range []string{"sourceBuckets -1 is out of range", "sourceSketchLines 99999999 is out of range"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("config error %v, want it to say %q", err, want)
		}
	}
}
