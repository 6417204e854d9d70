// The project's script, built into .brigade/brigade.wasm by ../build.sh.
// `mizzen run .` sends it a brigade.sh/cli exec event. The script API is in
// ../brigadier (its README.md).
package main

import "mizzen.dev/brigadier"

func shell(name, script string) *brigadier.Job {
	job := brigadier.NewJob(name, "debian:latest")
	job.PrimaryContainer.Command = []string{"sh", "-c"}
	job.PrimaryContainer.Arguments = []string{script}
	return job
}

func exec(event brigadier.Event) error {
	brigadier.Log.Infof("handling event %s", event.ID)
	// Both jobs run at the same time; the first failure fails the event.
	if err := brigadier.Concurrent(shell("build", "echo building"), shell("test", "echo testing")).Run(); err != nil {
		return err
	}
	return brigadier.SetSummary("build and test succeeded")
}

func main() {
	brigadier.Events.On("brigade.sh/cli", "exec", exec)
	brigadier.Events.Process()
}
