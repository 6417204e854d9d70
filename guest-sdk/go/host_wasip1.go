//go:build wasip1

package brigadier

import (
	"runtime"
	"runtime/debug"
	"unsafe"
)

// The sandbox gives a worker 64 MiB of linear memory unless its project
// says otherwise, and growing past it ends the worker. With Go's default
// (the heap may double before the collector runs) a script holding 30 MiB
// would already fail; a soft limit below 64 MiB makes the collector work
// harder as the heap nears it instead. It is only a soft limit: a project
// that grants more memory can still use it.
const softMemoryLimit = 56 << 20

func init() {
	debug.SetMemoryLimit(softMemoryLimit)
}

// The two functions of mizzen:host/v1 (docs/host-api.md, "The imports").

//go:wasmimport mizzen:host/v1 call
func hostCall(op uint32, reqPtr unsafe.Pointer, reqLen uint32) uint64

//go:wasmimport mizzen:host/v1 take_reply
func hostTakeReply(bufPtr unsafe.Pointer, bufLen uint32) int32

// rawCall performs one operation and takes its reply: the status (0 for
// success) and the reply's bytes (nil when there is none).
func rawCall(op uint32, req []byte) (uint32, []byte) {
	// The host keeps one reply per guest, replaced by the next call: call and
	// take_reply must not be separated by another goroutine's call (the
	// allocation between them can let the scheduler run another goroutine).
	hostMu.Lock()
	defer hostMu.Unlock()
	var ptr unsafe.Pointer
	if len(req) > 0 {
		ptr = unsafe.Pointer(unsafe.SliceData(req))
	}
	result := hostCall(op, ptr, uint32(len(req)))
	runtime.KeepAlive(req)
	status, n := uint32(result>>32), uint32(result)
	if n == 0 {
		return status, nil
	}
	reply := make([]byte, n)
	if got := hostTakeReply(unsafe.Pointer(unsafe.SliceData(reply)), n); got != int32(n) {
		return statusInternal, []byte(`{"code":"internal","message":"take_reply returned no reply"}`)
	}
	return status, reply
}
