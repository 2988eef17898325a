package controller

import "testing"

// FuzzDecodeRecords: records read back from the store (bbolt file or
// etcd) decode or fail, never panic.
func FuzzDecodeRecords(f *testing.F) {
	f.Add([]byte(`{"name":"n1","region":"r","role":"node","class":"weak","state":"active","publicKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","slot":3,"overlayIPv4":"100.64.32.3"}`))
	f.Add([]byte(`{"healthy":true,"lastHeartbeat":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"overlayIPv4":"not an address"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		decode[NodeRecord](data)
		decode[HealthRecord](data)
		decode[SessionRecord](data)
		decode[ClientsGatewayRecord](data)
	})
}
