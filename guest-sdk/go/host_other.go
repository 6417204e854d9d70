//go:build !wasip1

package brigadier

// Outside the sandbox (go test, go vet for the host's GOOS) there is no host:
// every operation answers not_configured, unless a test installs fakeHost.

// fakeHost stands in for mizzen:host/v1 in the package's own tests.
var fakeHost func(op uint32, req []byte) (uint32, []byte)

func rawCall(op uint32, req []byte) (uint32, []byte) {
	hostMu.Lock()
	defer hostMu.Unlock()
	if fakeHost == nil {
		return statusNotConfigured, []byte(`{"code":"not_configured","message":"not running in Mizzen's sandbox: build with GOOS=wasip1 GOARCH=wasm"}`)
	}
	return fakeHost(op, req)
}
