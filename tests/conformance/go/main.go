// The Go conformance script: every row of tests/conformance/BEHAVIOURS.md,
// by event type. Built with
//
//	guest-sdk/go/build.sh tests/conformance/go tests/conformance/go/brigade.wasm
package main

import (
	"errors"
	"os"
	"strings"
	"time"

	"mizzen.dev/brigadier"
)

const image = "localhost/busybox:latest"

var log = brigadier.Log

// shJob is a job running `sh -c script` in busybox.
func shJob(name, script string) *brigadier.Job {
	job := brigadier.NewJob(name, image)
	job.PrimaryContainer.Command = []string{"sh", "-c"}
	job.PrimaryContainer.Arguments = []string{script}
	return job
}

// workspaceJob is shJob with the workspace mounted at /workspace.
func workspaceJob(name, script string) *brigadier.Job {
	job := shJob(name, script)
	job.PrimaryContainer.WorkspaceMountPath = "/workspace"
	return job
}

// errorCode is the host's code of err ("" when err is not the host's).
func errorCode(err error) string {
	var hostErr *brigadier.Error
	if errors.As(err, &hostErr) {
		return hostErr.Code
	}
	return ""
}

// on registers a handler for the source conformance.
func on(eventType string, handler brigadier.Handler) {
	brigadier.Events.On("conformance", eventType, handler)
}

// sink keeps the cpu row's loop from being optimised away.
var sink uint64

func main() {
	// 1
	on("match", func(brigadier.Event) error {
		log.Info("matched match")
		return nil
	})
	// 2, 3
	brigadier.Events.On("conformance-wild", "*", func(e brigadier.Event) error {
		log.Info("wildcard got " + e.Type)
		return nil
	})
	brigadier.Events.On("conformance-wild", "exact", func(brigadier.Event) error {
		log.Info("exact handler")
		return nil
	})
	// 4
	on("last-wins", func(brigadier.Event) error {
		log.Info("first registration")
		return nil
	})
	on("last-wins", func(brigadier.Event) error {
		log.Info("second registration")
		return nil
	})
	// 5: nothing is registered for "unsubscribed".
	// 6
	on("event-fields", func(e brigadier.Event) error {
		log.Info("id=" + e.ID + " project=" + e.Project.ID + " source=" + e.Source + " type=" + e.Type +
			" label=" + e.Labels["team"] + " title=" + e.ShortTitle)
		return nil
	})
	// 7
	on("payload", func(e brigadier.Event) error {
		var payload struct {
			Name  string `json:"name"`
			Count int    `json:"count"`
		}
		if err := e.DecodePayload(&payload); err != nil {
			return err
		}
		log.Infof("name=%s count=%d", payload.Name, payload.Count)
		return nil
	})
	// 8, 9
	on("log-levels", func(brigadier.Event) error {
		log.Debug("level debug")
		log.Info("level info")
		log.Warn("level warn")
		log.Error("level error")
		return nil
	})
	// 10
	on("summary", func(brigadier.Event) error {
		return brigadier.SetSummary("conformance summary")
	})
	// 11
	on("summary-limit", func(brigadier.Event) error {
		if err := brigadier.SetSummary(strings.Repeat("x", 4097)); err != nil {
			log.Info("summary refused: " + errorCode(err))
		}
		return brigadier.SetSummary("short")
	})
	// 12
	on("job-success", func(brigadier.Event) error {
		if err := shJob("hello", "echo hello from job").Run(); err != nil {
			return err
		}
		log.Info("job hello succeeded")
		return nil
	})
	// 13
	on("job-failure", func(brigadier.Event) error {
		return shJob("fails", "exit 3").Run()
	})
	// 14
	on("job-failure-caught", func(brigadier.Event) error {
		var jobErr *brigadier.JobError
		if err := shJob("fails", "exit 3").Run(); errors.As(err, &jobErr) {
			log.Infof("caught phase=%s exitCode=%d", jobErr.Phase, jobErr.ExitCode)
			return nil
		} else {
			return errors.New("job fails did not fail as a job: " + errString(err))
		}
	})
	// 15
	on("job-timeout", func(brigadier.Event) error {
		job := shJob("sleeper", "sleep 60")
		job.TimeoutSeconds = 1
		var jobErr *brigadier.JobError
		if err := job.Run(); errors.As(err, &jobErr) {
			log.Infof("caught phase=%s", jobErr.Phase)
			return nil
		} else {
			return errors.New("job sleeper did not fail as a job: " + errString(err))
		}
	})
	// 16
	on("job-fallible", func(brigadier.Event) error {
		job := shJob("fails", "exit 3")
		job.Fallible = true
		if err := job.Run(); err != nil {
			return err
		}
		log.Info("fallible job done")
		return nil
	})
	// 17
	on("concurrent", func(brigadier.Event) error {
		waiter := workspaceJob("waiter",
			"for i in $(seq 1 300); do [ -f /workspace/signal ] && exit 0; sleep 0.1; done; exit 1")
		signaller := workspaceJob("signaller", "touch /workspace/signal")
		if err := brigadier.Concurrent(waiter, signaller).Run(); err != nil {
			return err
		}
		log.Info("concurrent done")
		return nil
	})
	// 18
	on("sequence", func(brigadier.Event) error {
		one := workspaceJob("one", "echo 1 >> /workspace/order")
		two := workspaceJob("two", "echo 2 >> /workspace/order")
		if err := brigadier.Sequence(one, two).Run(); err != nil {
			return err
		}
		order, err := brigadier.Workspace.ReadFile("order")
		if err != nil {
			return err
		}
		lines := strings.Split(strings.TrimRight(string(order), "\n"), "\n")
		log.Info("order=" + strings.Join(lines, ","))
		return nil
	})
	// 19
	on("sequence-stops", func(brigadier.Event) error {
		err := brigadier.Sequence(shJob("fails", "exit 1"), shJob("never", "echo never")).Run()
		if err == nil {
			return errors.New("the sequence did not fail")
		}
		log.Info("sequence stopped: " + err.Error())
		return nil
	})
	// 20
	on("logs", func(brigadier.Event) error {
		talker := shJob("talker", "echo one; echo two")
		if err := talker.Run(); err != nil {
			return err
		}
		logs, err := talker.Logs()
		if err != nil {
			return err
		}
		log.Info("logs=" + strings.ReplaceAll(logs, "\n", "|"))
		return nil
	})
	// 21
	on("secrets", func(brigadier.Event) error {
		token, err := brigadier.Secret("token")
		if err != nil {
			return err
		}
		log.Infof("token length=%d", len(token))
		return nil
	})
	// 22
	on("script-secrets", func(e brigadier.Event) error {
		_, visible := e.Project.Secrets["visible"]
		_, hidden := e.Project.Secrets["hidden"]
		log.Infof("visible=%t hidden=%t", visible, hidden)
		return nil
	})
	// 23
	on("workspace", func(brigadier.Event) error {
		ws := brigadier.Workspace
		if err := ws.WriteFile("notes/a.txt", []byte("hello workspace")); err != nil {
			return err
		}
		contents, err := ws.ReadFile("notes/a.txt")
		if err != nil {
			return err
		}
		entries, err := ws.List("notes")
		if err != nil {
			return err
		}
		if err := ws.Remove("notes"); err != nil {
			return err
		}
		after, err := ws.List("")
		if err != nil {
			return err
		}
		log.Info("read=" + string(contents) + " entries=" + names(entries) + " after=" + names(after))
		return nil
	})
	// 24
	on("workspace-refused", func(brigadier.Event) error {
		_, err := brigadier.Workspace.ReadFile("../outside.txt")
		if err == nil {
			return errors.New("reading ../outside.txt was not refused")
		}
		log.Info("refused: " + errorCode(err))
		return nil
	})
	// 25
	on("workspace-not-configured", func(brigadier.Event) error {
		_, err := brigadier.Workspace.ReadFile("a.txt")
		if err == nil {
			return errors.New("reading a.txt without a workspace succeeded")
		}
		log.Info("workspace: " + errorCode(err))
		return nil
	})
	// 26
	on("throw", func(brigadier.Event) error {
		return errors.New("boom from conformance")
	})
	// 27
	on("panic", func(brigadier.Event) error {
		panic("panic from conformance")
	})
	// 28
	on("memory", func(brigadier.Event) error {
		var blocks [][]byte
		for i := 0; i < 256; i++ {
			block := make([]byte, 1<<20)
			for j := 0; j < len(block); j += 4096 {
				block[j] = byte(i)
			}
			blocks = append(blocks, block)
		}
		log.Infof("allocated %d MiB", len(blocks))
		return nil
	})
	// 29
	on("cpu", func(brigadier.Event) error {
		for {
			sink = sink*6364136223846793005 + 1442695040888963407
		}
	})
	// 30
	on("exit", func(brigadier.Event) error {
		os.Exit(3)
		return nil
	})
	// 31
	on("sleep", func(brigadier.Event) error {
		if err := brigadier.Sleep(50 * time.Millisecond); err != nil {
			return err
		}
		log.Info("slept")
		return nil
	})

	brigadier.Events.Process()
}

func names(entries []brigadier.WorkspaceEntry) string {
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name
	}
	return strings.Join(names, ",")
}

func errString(err error) string {
	if err == nil {
		return "it succeeded"
	}
	return err.Error()
}
