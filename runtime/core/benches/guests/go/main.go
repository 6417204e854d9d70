// The sandbox benchmark's Go guest: what NO_OP_HANDLER is in JavaScript,
// one handler that does nothing. Built with
//
//	guest-sdk/go/build.sh runtime/core/benches/guests/go runtime/core/benches/guests/go-no-op.wasm
package main

import "mizzen.dev/brigadier"

func main() {
	brigadier.Events.On("brigade.sh/cli", "exec", func(brigadier.Event) error { return nil })
	brigadier.Events.Process()
}
