package brigadier

import (
	"encoding/json"
	"strconv"
	"sync"
)

// How goroutines wait for the host.
//
// A host call blocks the whole Go runtime (the sandbox has one thread), so a
// goroutine cannot simply sit in wait_any: another goroutine might have a job
// to start first. The SDK therefore counts the goroutines it knows of (the
// main goroutine, and those Concurrent starts) that are able to run. A
// goroutine that must wait for something (a ticket: a job's end, its logs, a
// timer; or the children of a group) parks on a future and stops counting.
// The one that brings the count to zero has nobody left to wait for: it
// becomes the driver and calls wait_any, delivering each completion to its
// future, until a parked goroutine is woken (itself, or another that then
// runs while the driver blocks on its own future). This is the loop of
// docs/host-api.md's "Tickets and wait_any", with goroutines for promises.
//
// A goroutine the SDK does not know of (started with a bare `go`) may call
// the SDK too: parking and waking balance, so nothing deadlocks, but the SDK
// may enter wait_any while that goroutine could still run, which only makes
// it less concurrent. Concurrent and RunnableFunc are the way to run things
// at once.
var sched = struct {
	mu      sync.Mutex
	active  int                // known goroutines able to run
	driving bool               // a goroutine is inside wait_any
	tickets map[uint64]*future // outstanding tickets
}{active: 1, tickets: map[uint64]*future{}}

// outcome is what a future completes with.
type outcome struct {
	result json.RawMessage
	err    error
	panic  *panicError // a group's child that panicked
}

// future is something a goroutine may wait for.
type future struct {
	done    bool
	out     outcome
	waiters []chan struct{}
}

// resolveLocked completes f and wakes its waiters (sched.mu held).
func (f *future) resolveLocked(o outcome) {
	if f.done {
		return
	}
	f.done, f.out = true, o
	for _, w := range f.waiters {
		sched.active++
		close(w)
	}
	f.waiters = nil
}

// await parks the calling goroutine until f completes, driving wait_any if
// nobody else can run.
func (f *future) await() outcome {
	sched.mu.Lock()
	if f.done {
		sched.mu.Unlock()
		return f.out
	}
	w := make(chan struct{})
	f.waiters = append(f.waiters, w)
	sched.active--
	driveLocked()
	sched.mu.Unlock()
	<-w
	return f.out
}

// spawn runs fn in a goroutine the scheduler counts.
func spawn(fn func()) {
	sched.mu.Lock()
	sched.active++
	sched.mu.Unlock()
	go func() {
		defer func() {
			sched.mu.Lock()
			sched.active--
			driveLocked()
			sched.mu.Unlock()
		}()
		fn()
	}()
}

// driveLocked calls wait_any until a parked goroutine is woken, when no known
// goroutine can run (sched.mu held; released during the host call).
func driveLocked() {
	if sched.driving {
		return
	}
	sched.driving = true
	defer func() { sched.driving = false }()
	for sched.active <= 0 && len(sched.tickets) > 0 {
		sched.mu.Unlock()
		var reply struct {
			Status string          `json:"status"`
			Ticket uint64          `json:"ticket"`
			Result json.RawMessage `json:"result"`
			Error  *Error          `json:"error"`
		}
		err := callInto(opWaitAny, nil, &reply)
		sched.mu.Lock()
		if err == nil && reply.Status == "idle" {
			err = &Error{Code: "internal", Message: "wait_any answered idle while " +
				strconv.Itoa(len(sched.tickets)) + " tickets were outstanding"}
		}
		if err != nil {
			// Nothing will complete these tickets: fail them all rather
			// than wait forever.
			for t, f := range sched.tickets {
				delete(sched.tickets, t)
				f.resolveLocked(outcome{err: err})
			}
			continue
		}
		f := sched.tickets[reply.Ticket]
		if f == nil {
			continue // not a ticket this guest waits for
		}
		delete(sched.tickets, reply.Ticket)
		switch reply.Status {
		case "completed":
			f.resolveLocked(outcome{result: reply.Result})
		case "failed":
			if reply.Error == nil {
				reply.Error = &Error{Code: "internal", Message: "a ticket failed without an error"}
			}
			f.resolveLocked(outcome{err: reply.Error})
		default:
			f.resolveLocked(outcome{err: &Error{Code: "internal", Message: "wait_any answered status " + strconv.Quote(reply.Status)}})
		}
	}
	// With no ticket outstanding and nobody able to run, the goroutines the
	// SDK knows of wait for something outside it; Go's runtime reports the
	// deadlock if nothing else wakes them.
}

// submit performs an operation that answers with a ticket and returns the
// future of its result.
func submit(op uint32, request any) (*future, error) {
	sched.mu.Lock()
	defer sched.mu.Unlock()
	return submitLocked(op, request)
}

// submitLocked is submit with sched.mu held: the ticket is in the table
// before any driver can see it complete.
func submitLocked(op uint32, request any) (*future, error) {
	var reply struct {
		Ticket uint64 `json:"ticket"`
	}
	if err := callInto(op, request, &reply); err != nil {
		return nil, err
	}
	f := &future{}
	sched.tickets[reply.Ticket] = f
	return f, nil
}
