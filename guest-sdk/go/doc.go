// Package brigadier is Brigade's script API for Go: a Mizzen project's
// automation written in Go and compiled to a WebAssembly module
// (GOOS=wasip1 GOARCH=wasm), which Mizzen runs in its sandbox as
// .brigade/brigade.wasm.
//
// It is the Go counterpart of the JavaScript library brigadier.js (Brigade
// v2's @brigadecore/brigadier): an event registry (Events), jobs and their
// containers (Job, Container), services the event's jobs share (Service),
// groups that run jobs one after another or at the same time (Sequence,
// Concurrent), a levelled logger (Log), the event's summary (SetSummary), the
// project's secrets (Secret), timers (Sleep), the event's shared workspace
// (Workspace) and the artifacts its jobs saved (Artifacts). It talks to the
// host through the two functions of mizzen:host/v1 (docs/host-api.md) and
// needs nothing but Go's standard library.
//
//	func main() {
//		brigadier.Events.On("brigade.sh/cli", "exec", func(e brigadier.Event) error {
//			job := brigadier.NewJob("hello", "debian:latest")
//			job.PrimaryContainer.Command = []string{"echo", "Hello, World!"}
//			return job.Run()
//		})
//		brigadier.Events.Process()
//	}
//
// Errors are values: the host's refusals are *Error (with the host's Code),
// jobs that fail are *JobError. A handler's error, or a panic, fails the
// worker with its message; os.Exit(n) ends it with code n. Everything that
// waits (Job.Run, Job.Wait, Job.Logs, Service.Start, Sleep, Artifacts.List,
// Artifacts.ReadFile, groups) lets the goroutines of a Concurrent group run
// meanwhile.
package brigadier
