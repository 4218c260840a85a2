package etcdstore

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/xdpfw/xdpfw/proto"
)

// What hosts write about themselves (status, telemetry) is read by the
// control plane: an enrolled host can write anything there. Decoding it
// and deriving a host's state never panics, whatever the bytes.
func FuzzDecodeHostDocuments(f *testing.F) {
	st, _ := json.Marshal(proto.HostStatus{APIVersion: proto.APIVersion, Kind: proto.KindHostStatus, Host: "h1", InSync: true,
		Applied: []proto.RuleSetRef{{Name: "edge", Version: 2}}, LastError: &proto.StatusError{Document: "d", Message: "m"},
		DataPlaneError: &proto.DataPlaneError{Interface: "eth0", Message: "refused", Since: time.Unix(0, 0).UTC()}})
	tel, _ := json.Marshal(proto.HostTelemetry{APIVersion: proto.APIVersion, Kind: proto.KindHostTelemetry, Host: "h1"})
	f.Add(st)
	f.Add(tel)
	f.Add([]byte(`{"kind":"HostStatus","applied":null,"lastError":{},"interfaces":[{}]}`))
	f.Add([]byte(`{"kind":"HostTelemetry","interfaces":[{"rules":[{"packets":18446744073709551615}]}]}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if s, err := decodeStatus("k", data); err == nil {
			if s.Kind != proto.KindHostStatus {
				t.Fatalf("a status of kind %q decoded", s.Kind)
			}
			proto.HostStateOf(proto.HostInfo{Host: "h1", Status: &s})
		}
		if tel, err := decodeTelemetry("k", data); err == nil && tel.Kind != proto.KindHostTelemetry {
			t.Fatalf("telemetry of kind %q decoded", tel.Kind)
		}
	})
}
