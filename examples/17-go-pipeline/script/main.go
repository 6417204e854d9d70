// A Brigade pipeline written in Go: two sequences of jobs that run at the
// same time, and a summary of how it went. Rebuild .brigade/brigade.wasm
// after changing it:
//
//	guest-sdk/go/build.sh examples/17-go-pipeline/script examples/17-go-pipeline/.brigade/brigade.wasm
package main

import (
	"fmt"
	"strings"
	"time"

	"mizzen.dev/brigadier"
)

const image = "debian:latest"

// step is a job that runs a shell command.
func step(name, script string) *brigadier.Job {
	job := brigadier.NewJob(name, image)
	job.PrimaryContainer.Command = []string{"sh", "-c"}
	job.PrimaryContainer.Arguments = []string{script}
	job.TimeoutSeconds = 120
	return job
}

func pipeline(event brigadier.Event) error {
	// `brig event create --payload '{"target":"staging"}'` picks a target.
	target := "production"
	var payload struct {
		Target string `json:"target"`
	}
	if event.DecodePayload(&payload) == nil && payload.Target != "" {
		target = payload.Target
	}
	brigadier.Log.Infof("event %s: building for %s", event.ID, target)

	build := step("build", "echo compiling; sleep 1; echo built")
	test := step("test", "echo 'ok   pipeline 0.8s'; echo 'ok   pipeline/steps 0.3s'")
	lint := step("lint", "echo linting; sleep 1; echo 'no problems'")
	docs := step("docs", "echo 'docs for "+target+"'")

	started := time.Now()
	// build then test, and lint then docs, both sequences at once: about two
	// seconds rather than four.
	if err := brigadier.Concurrent(
		brigadier.Sequence(build, test),
		brigadier.Sequence(lint, docs),
	).Run(); err != nil {
		_ = brigadier.SetSummary("pipeline failed: " + err.Error())
		return err
	}
	elapsed := time.Since(started).Round(100 * time.Millisecond)

	results, err := test.Logs()
	if err != nil {
		return err
	}
	passed := strings.Count(results, "ok ")
	brigadier.Log.Debugf("test output:\n%s", results)

	summary := fmt.Sprintf("4 jobs succeeded for %s in %s; %d test packages passed", target, elapsed, passed)
	brigadier.Log.Info(summary)
	return brigadier.SetSummary(summary)
}

func main() {
	brigadier.Events.On("brigade.sh/cli", "exec", pipeline)
	brigadier.Events.Process()
}
