//go:build !wasip1

package brigadier

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// A fake host: jobs take a scripted number of ticks of a fake clock, timers
// as many milliseconds, and wait_any completes the outstanding ticket that
// ends first.
type fake struct {
	mu       sync.Mutex
	event    map[string]any
	now      int
	duration map[string]int    // a job's run time, a service's time to be ready, by name (default 10)
	exit     map[string]int    // a job's exit code, by name (default 0)
	ends     map[string]int    // when each started job or service ends
	notReady map[string]string // the not_ready message of a service that will not be ready
	aborted  map[string]bool   // jobs and services job.cancel stopped
	requests map[uint32][]string
	tickets  map[uint64]fakeTicket
	next     uint64
	ops      []string // what the guest did, in order
	logs     []string
	summary  string
	errors   []string
	running  int // jobs running now
	maxRun   int // most jobs running at once
	waitAnys int
	// artifacts holds the event's artifacts: by name, their files' contents
	// by path ("" for an artifact that is one file).
	artifacts map[string]map[string]string
	// artifactsRefused fails artifact.list and artifact.read's tickets
	// with invalid_request and this message, as Kubernetes does.
	artifactsRefused string
}

type fakeTicket struct {
	end    int
	result string
	err    string // the error JSON of a ticket that fails, instead of result
}

func newFake(t *testing.T, source, eventType string) *fake {
	f := &fake{
		event: map[string]any{
			"id": "e1", "project": map[string]any{"id": "p", "kubernetes": map[string]any{"namespace": ""}, "secrets": map[string]any{"token": "s3cr3t"}},
			"source": source, "type": eventType, "qualifiers": nil, "labels": map[string]any{"team": "ci"},
			"shortTitle": "short", "longTitle": "", "payload": `{"name":"Mizzen","count":3}`,
			"worker": map[string]any{"apiAddress": "", "apiToken": "", "logLevel": "INFO", "configFilesDirectory": ".brigade", "defaultConfigFiles": nil, "git": nil},
		},
		duration: map[string]int{}, exit: map[string]int{}, ends: map[string]int{}, tickets: map[uint64]fakeTicket{},
		notReady: map[string]string{}, aborted: map[string]bool{}, requests: map[uint32][]string{},
		artifacts: map[string]map[string]string{},
	}
	fakeHost = f.handle
	sched.mu.Lock()
	sched.tickets = map[uint64]*future{}
	sched.active = 1
	sched.mu.Unlock()
	cachedEvent.event = nil
	threshold.set = false
	Events = &EventRegistry{}
	t.Cleanup(func() {
		// Let goroutines that were woken finish before the next test.
		for i := 0; i < 1000; i++ {
			sched.mu.Lock()
			settled := sched.active == 1 && !sched.driving
			sched.mu.Unlock()
			if settled {
				break
			}
			time.Sleep(time.Millisecond)
		}
		sched.mu.Lock()
		defer sched.mu.Unlock()
		fakeHost = nil
		if sched.active != 1 || sched.driving {
			t.Errorf("scheduler left unbalanced: active=%d driving=%v", sched.active, sched.driving)
		}
	})
	return f
}

func (f *fake) ticket(end int, result string) []byte {
	f.next++
	f.tickets[f.next] = fakeTicket{end: end, result: result}
	return []byte(fmt.Sprintf(`{"ticket":%d}`, f.next))
}

// failingTicket is a ticket that fails at end with the host's error.
func (f *fake) failingTicket(end int, code, message string) []byte {
	b, _ := json.Marshal(map[string]string{"code": code, "message": message})
	f.next++
	f.tickets[f.next] = fakeTicket{end: end, err: string(b)}
	return []byte(fmt.Sprintf(`{"ticket":%d}`, f.next))
}

func fail(status uint32, code, message string) (uint32, []byte) {
	b, _ := json.Marshal(map[string]string{"code": code, "message": message})
	return status, b
}

func (f *fake) handle(op uint32, req []byte) (uint32, []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var r map[string]any
	if len(req) > 0 {
		if err := json.Unmarshal(req, &r); err != nil {
			return fail(1, "invalid_request", err.Error())
		}
	}
	name, _ := r["name"].(string)
	f.requests[op] = append(f.requests[op], string(req))
	switch op {
	case opEventGet:
		b, _ := json.Marshal(f.event)
		return 0, b
	case opLog:
		job := ""
		if j, ok := r["job"].(string); ok {
			job = "[job: " + j + "] "
		}
		f.logs = append(f.logs, fmt.Sprintf("%s %s%s", r["level"], job, r["message"]))
		return 0, nil
	case opSummarySet:
		text := r["text"].(string)
		if len([]rune(text)) > 4096 {
			return fail(6, "limit_exceeded", "the summary is longer than 4096 characters (summaryLength)")
		}
		f.summary = text
		return 0, nil
	case opScriptError:
		f.errors = append(f.errors, r["message"].(string))
		return 0, nil
	case opSecretGet:
		if r["key"] == "token" {
			return 0, []byte(`{"value":"s3cr3t"}`)
		}
		return fail(3, "not_found", "no secret")
	case opJobStart:
		if _, ok := f.ends[name]; ok {
			return fail(4, "conflict", "job name used twice")
		}
		f.settle()
		d, ok := f.duration[name]
		if !ok {
			d = 10
		}
		f.ends[name] = f.now + d
		f.running++
		f.maxRun = max(f.maxRun, f.running)
		f.ops = append(f.ops, fmt.Sprintf("start %s @%d", name, f.now))
		return 0, nil
	case opJobWait:
		end, ok := f.ends[name]
		if !ok {
			return fail(3, "not_found", "no job "+name)
		}
		phase, exitCode := "SUCCEEDED", fmt.Sprint(f.exit[name])
		if f.exit[name] != 0 {
			phase = "FAILED"
		}
		if f.aborted[name] {
			phase, exitCode = "ABORTED", "null"
		}
		f.ops = append(f.ops, "wait "+name)
		return 0, f.ticket(end, fmt.Sprintf(`{"phase":%q,"exitCode":%s,"reason":null}`, phase, exitCode))
	case opJobCancel:
		if _, ok := f.ends[name]; !ok {
			return fail(3, "not_found", "no job "+name)
		}
		if f.ends[name] > f.now {
			f.ends[name], f.aborted[name] = f.now, true
		}
		f.settle()
		f.ops = append(f.ops, fmt.Sprintf("cancel %s @%d", name, f.now))
		return 0, nil
	case opServiceStart:
		if _, ok := f.ends[name]; ok {
			return fail(4, "conflict", "job name used twice")
		}
		f.settle()
		d, ok := f.duration[name]
		if !ok {
			d = 10
		}
		f.ends[name] = 1 << 30 // until job.cancel stops it
		f.ops = append(f.ops, fmt.Sprintf("service %s @%d", name, f.now))
		if message, ok := f.notReady[name]; ok {
			return 0, f.failingTicket(f.now+d, "not_ready", message)
		}
		// "0:PORT" gets 49153, 49154...; "HOST:PORT" and "IP:HOST:PORT"
		// get HOST; "PORT" is not published.
		ports := map[string]int{}
		container, _ := r["container"].(map[string]any)
		list, _ := container["ports"].([]any)
		for _, p := range list {
			parts := strings.Split(p.(string), ":")
			if len(parts) < 2 {
				continue
			}
			host := 0
			fmt.Sscan(parts[len(parts)-2], &host)
			if host == 0 {
				host = 49153 + len(ports)
			}
			ports[parts[len(parts)-1]] = host
		}
		b, _ := json.Marshal(map[string]any{"ports": ports})
		return 0, f.ticket(f.now+d, string(b))
	case opJobLogs:
		return 0, f.ticket(f.now, `{"lines":["one","two"]}`)
	case opSleep:
		return 0, f.ticket(f.now+int(r["ms"].(float64)), "null")
	case opWaitAny:
		f.waitAnys++
		if len(f.tickets) == 0 {
			return 0, []byte(`{"status":"idle"}`)
		}
		var ids []uint64
		for id := range f.tickets {
			ids = append(ids, id)
		}
		sort.Slice(ids, func(a, b int) bool {
			ta, tb := f.tickets[ids[a]], f.tickets[ids[b]]
			return ta.end < tb.end || ta.end == tb.end && ids[a] < ids[b]
		})
		t := f.tickets[ids[0]]
		delete(f.tickets, ids[0])
		f.now = max(f.now, t.end)
		f.settle()
		if t.err != "" {
			return 0, []byte(fmt.Sprintf(`{"status":"failed","ticket":%d,"error":%s}`, ids[0], t.err))
		}
		return 0, []byte(fmt.Sprintf(`{"status":"completed","ticket":%d,"result":%s}`, ids[0], t.result))
	case opWorkspaceRead:
		return fail(2, "not_configured", `project "p" has no workspace (set spec.workerTemplate.useWorkspace: true)`)
	case opArtifactList:
		if f.artifactsRefused != "" {
			return 0, f.failingTicket(f.now, "invalid_request", f.artifactsRefused)
		}
		// By name, each saved by "build" from /src/<name>.
		list := []map[string]any{}
		var names []string
		for n := range f.artifacts {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			size := 0
			for _, contents := range f.artifacts[n] {
				size += len(contents)
			}
			list = append(list, map[string]any{"name": n, "job": "build", "path": "/src/" + n, "sizeBytes": size, "files": len(f.artifacts[n])})
		}
		b, _ := json.Marshal(map[string]any{"artifacts": list})
		return 0, f.ticket(f.now, string(b))
	case opArtifactRead:
		if f.artifactsRefused != "" {
			return 0, f.failingTicket(f.now, "invalid_request", f.artifactsRefused)
		}
		path, _ := r["path"].(string)
		contents, ok := f.artifacts[name][path]
		if !ok {
			return 0, f.failingTicket(f.now, "not_found", fmt.Sprintf("artifact %q has no file %q", name, path))
		}
		file := map[string]string{"path": path, "contents": contents, "encoding": "utf8"}
		if !utf8.ValidString(contents) {
			file["contents"], file["encoding"] = base64.StdEncoding.EncodeToString([]byte(contents)), "base64"
		}
		b, _ := json.Marshal(file)
		return 0, f.ticket(f.now, string(b))
	}
	return fail(9, "unknown_operation", fmt.Sprint("no operation ", op))
}

// settle counts the jobs that have ended by now.
func (f *fake) settle() {
	f.running = 0
	for _, end := range f.ends {
		if end > f.now {
			f.running++
		}
	}
}

func job(name, script string) *Job {
	j := NewJob(name, "localhost/busybox:latest")
	j.PrimaryContainer.Command = []string{"sh", "-c"}
	j.PrimaryContainer.Arguments = []string{script}
	return j
}

func TestMain(m *testing.M) {
	runtime.GOMAXPROCS(1) // as in the sandbox
	os.Exit(m.Run())
}

func TestConcurrentSequencesOverlap(t *testing.T) {
	f := newFake(t, "brigade.sh/cli", "exec")
	f.duration = map[string]int{"a": 10, "b": 10, "c": 5, "d": 10}
	err := Concurrent(Sequence(job("a", ""), job("b", "")), Sequence(job("c", ""), job("d", ""))).Run()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"start a @0", "start c @0"}
	if got := f.ops[:2]; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("jobs started %v, want %v first (ops %v)", got, want, f.ops)
	}
	if f.now != 20 || f.maxRun != 2 {
		t.Fatalf("took %d ticks with at most %d jobs at once, want 20 and 2 (ops %v)", f.now, f.maxRun, f.ops)
	}
	var creating []string
	for _, l := range f.logs {
		if strings.Contains(l, "Creating job") {
			creating = append(creating, l)
		}
	}
	if strings.Join(creating, "\n") != "INFO [job: a] Creating job a\nINFO [job: c] Creating job c\nINFO [job: d] Creating job d\nINFO [job: b] Creating job b" {
		t.Fatalf("creation lines %q", creating)
	}
}

func TestSequenceStopsAtTheFirstFailure(t *testing.T) {
	f := newFake(t, "brigade.sh/cli", "exec")
	f.exit["fails"] = 1
	err := Sequence(job("fails", "exit 1"), job("never", "echo never")).Run()
	var je *JobError
	if !errors.As(err, &je) || err.Error() != `Job "fails" failed` || je.Phase != PhaseFailed || je.ExitCode != 1 {
		t.Fatalf("err = %#v", err)
	}
	if _, ok := f.ends["never"]; ok {
		t.Fatal("never ran")
	}
}

func TestConcurrentFailsAsSoonAsOneFails(t *testing.T) {
	f := newFake(t, "brigade.sh/cli", "exec")
	f.duration = map[string]int{"quick": 1, "slow": 100}
	f.exit["quick"] = 2
	err := Concurrent(job("slow", ""), job("quick", "")).Run()
	if err == nil || err.Error() != `Job "quick" failed` || f.now != 1 {
		t.Fatalf("err = %v at %d", err, f.now)
	}
	// The slow job's goroutine still waits; the rest of the script may go on
	// and wait for other things, which delivers its end too.
	if err := Sleep(200 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
}

func TestFallibleAndStartErrors(t *testing.T) {
	f := newFake(t, "brigade.sh/cli", "exec")
	f.exit["fails"] = 3
	j := job("fails", "exit 3")
	j.Fallible = true
	if err := j.Run(); err != nil {
		t.Fatal(err)
	}
	err := job("fails", "").Run()
	if err == nil || err.Error() != `Error creating job "fails": job name used twice` || !errors.Is(err, ErrConflict) {
		t.Fatalf("err = %v", err)
	}
}

func TestSleepAndLogsInConcurrentFuncs(t *testing.T) {
	f := newFake(t, "brigade.sh/cli", "exec")
	var order []string
	var mu sync.Mutex
	note := func(s string) { mu.Lock(); order = append(order, s); mu.Unlock() }
	talker := job("talker", "echo one; echo two")
	err := Concurrent(
		RunnableFunc(func() error {
			if err := Sleep(30 * time.Millisecond); err != nil {
				return err
			}
			note("slept 30")
			return nil
		}),
		RunnableFunc(func() error {
			if err := talker.Run(); err != nil {
				return err
			}
			logs, err := talker.Logs()
			note("logs " + strings.ReplaceAll(logs, "\n", "|"))
			return err
		}),
	).Run()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(order, ",") != "logs one|two,slept 30" || f.now != 30 {
		t.Fatalf("order %v at %d", order, f.now)
	}
}

func TestProcessPicksTheHandler(t *testing.T) {
	for _, c := range []struct{ source, eventType, want string }{
		{"s", "exact", "exact"},
		{"s", "other", "wild other"},
		{"t", "x", ""},
	} {
		t.Run(c.source+"/"+c.eventType, func(t *testing.T) {
			f := newFake(t, c.source, c.eventType)
			Events.On("s", "exact", func(Event) error { Log.Info("first"); return nil })
			Events.On("s", "exact", func(Event) error { Log.Info("exact"); return nil })
			Events.On("s", "*", func(e Event) error { Log.Info("wild " + e.Type); return nil })
			Events.Process()
			got := strings.Join(f.logs, "\n")
			if c.want == "" && got != "" || c.want != "" && got != "INFO "+c.want {
				t.Fatalf("logs %q", got)
			}
			if len(f.errors) != 0 {
				t.Fatal(f.errors)
			}
		})
	}
}

func TestNoHandlerLogsAtDebug(t *testing.T) {
	f := newFake(t, "src", "typ")
	f.event["worker"].(map[string]any)["logLevel"] = "DEBUG"
	Events.Process()
	if strings.Join(f.logs, "\n") != `DEBUG no handler for events of source "src" and type "typ"` {
		t.Fatalf("logs %q", f.logs)
	}
}

func TestHandlerErrorsAndPanicsFailTheWorker(t *testing.T) {
	f := newFake(t, "s", "throw")
	Events.On("s", "throw", func(Event) error { return errors.New("boom from conformance") })
	Events.Process()
	if strings.Join(f.errors, "|") != "boom from conformance" {
		t.Fatal(f.errors)
	}

	f = newFake(t, "s", "panic")
	Events.On("s", "panic", func(Event) error { panic("panic from conformance") })
	Events.Process()
	if strings.Join(f.errors, "|") != "panic: panic from conformance" {
		t.Fatal(f.errors)
	}

	f = newFake(t, "s", "panic")
	Events.On("s", "panic", func(Event) error {
		return Concurrent(RunnableFunc(func() error { return nil }), RunnableFunc(func() error { panic(fmt.Errorf("in a group")) })).Run()
	})
	Events.Process()
	if strings.Join(f.errors, "|") != "panic: in a group" {
		t.Fatal(f.errors)
	}
}

func TestLevelsSummarySecretsWorkspace(t *testing.T) {
	f := newFake(t, "s", "x")
	Log.Debug("level", "debug")
	Log.Info("level", "info", 3)
	Log.WithJob("j").Warnf("level %s", "warn")
	Log.Error("level error")
	if err := SetLogLevel("debug"); err != nil {
		t.Fatal(err)
	}
	Log.Debug("now debug")
	if got := strings.Join(f.logs, "|"); got != "INFO level info 3|WARN [job: j] level warn|ERROR level error|DEBUG now debug" {
		t.Fatalf("logs %q", got)
	}
	err := SetSummary(strings.Repeat("x", 4097))
	var he *Error
	if !errors.As(err, &he) || he.Code != "limit_exceeded" || !errors.Is(err, ErrLimitExceeded) {
		t.Fatalf("err = %#v", err)
	}
	if err := SetSummary("short"); err != nil || f.summary != "short" {
		t.Fatal(err, f.summary)
	}
	if v, err := Secret("token"); err != nil || v != "s3cr3t" {
		t.Fatal(v, err)
	}
	if _, err := Secret("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	if _, err := Workspace.ReadFile("a.txt"); !errors.Is(err, ErrNotConfigured) {
		t.Fatal(err)
	}
	e, _ := CurrentEvent()
	var p struct {
		Name  string
		Count int
	}
	if err := e.DecodePayload(&p); err != nil || p.Name != "Mizzen" || p.Count != 3 || e.Labels["team"] != "ci" {
		t.Fatal(p, err, e)
	}
}

func TestJobRequestShape(t *testing.T) {
	j := job("x", "true")
	j.SidecarContainers["db"] = &Container{Image: "redis", EnvironmentFile: "workspace:db.env", User: "999", Readiness: &Readiness{TCPPort: 6379}}
	b, _ := json.Marshal(j.request())
	want := `{"name":"x","spec":{"primaryContainer":{"image":"localhost/busybox:latest","imagePullPolicy":"IfNotPresent","command":["sh","-c"],"arguments":["true"]},"sidecarContainers":{"db":{"image":"redis","environmentFile":"workspace:db.env","user":"999","readiness":{"tcpPort":6379}}},"timeoutSeconds":900,"host":{},"fallible":false}}`
	if string(b) != want {
		t.Fatalf("%s", b)
	}
}

// Artifacts and Caches are sent in the host's shape (camelCase, what has a
// default left out), and left out when empty.
func TestArtifactsAndCachesRequestShape(t *testing.T) {
	j := job("x", "true")
	j.Artifacts.Save = []SaveArtifact{{Name: "dist", Path: "dist"}, {Name: "reports", Path: "reports/*.xml", OnFailure: true}}
	j.Artifacts.Restore = []RestoreArtifact{{Name: "deps"}, {Name: "tools", Path: "/opt/tools"}}
	j.Caches = []JobCache{{Key: "npm-abc", RestoreKeys: []string{"npm-"}, Path: "/root/.npm"}, {Key: "apt", Path: "/var/cache/apt"}}
	b, _ := json.Marshal(j.request().Spec)
	want := `{"primaryContainer":{"image":"localhost/busybox:latest","imagePullPolicy":"IfNotPresent","command":["sh","-c"],"arguments":["true"]},"timeoutSeconds":900,"host":{},"fallible":false,` +
		`"artifacts":{"save":[{"name":"dist","path":"dist"},{"name":"reports","path":"reports/*.xml","onFailure":true}],"restore":[{"name":"deps"},{"name":"tools","path":"/opt/tools"}]},` +
		`"caches":[{"key":"npm-abc","restoreKeys":["npm-"],"path":"/root/.npm"},{"key":"apt","path":"/var/cache/apt"}]}`
	if string(b) != want {
		t.Fatalf("%s\nwant\n%s", b, want)
	}
	j = job("y", "true")
	j.Artifacts.Save = []SaveArtifact{}
	b, _ = json.Marshal(j.request().Spec)
	if strings.Contains(string(b), "artifacts") || strings.Contains(string(b), "caches") {
		t.Fatalf("%s", b)
	}
}

func TestServiceStartSendsItsContainerAndReturnsItsPorts(t *testing.T) {
	f := newFake(t, "s", "x")
	f.duration["db"] = 5
	db := NewService("db", "postgres:16")
	db.Environment = map[string]string{"POSTGRES_PASSWORD": "test"}
	db.Readiness = &Readiness{TCPPort: 5432}
	db.After = []string{"net"}
	db.Ports = []string{"0:5432", "127.0.0.1:8080:80", "9000"}
	ready, err := db.Start()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"name":"db","container":{"image":"postgres:16","imagePullPolicy":"IfNotPresent","environment":{"POSTGRES_PASSWORD":"test"},"readiness":{"tcpPort":5432},"after":["net"],"ports":["0:5432","127.0.0.1:8080:80","9000"]}}`
	if got := strings.Join(f.requests[opServiceStart], "\n"); got != want {
		t.Fatalf("service.start request\n%s\nwant\n%s", got, want)
	}
	if len(ready.Ports) != 2 || ready.Ports["5432"] != 49153 || ready.Ports["80"] != 8080 {
		t.Fatalf("ports %v", ready.Ports)
	}
	if port, ok := ready.Port(5432); !ok || port != 49153 {
		t.Fatalf("Port(5432) = %d, %v", port, ok)
	}
	if _, ok := ready.Port(9000); ok {
		t.Fatal("an unpublished port has a host port")
	}
	// Start returned once the ticket completed, not when the call did.
	if f.now != 5 || strings.Join(f.logs, "|") != "INFO [job: db] Starting service db" {
		t.Fatalf("at %d, logs %q", f.now, f.logs)
	}
}

// After and Ports are left out when empty (the host's shape skips them),
// and sent for a sidecar as for a service.
func TestAfterAndPortsOfSidecarsAndABareService(t *testing.T) {
	f := newFake(t, "s", "x")
	if _, err := NewService("cache", "redis:7").Start(); err != nil {
		t.Fatal(err)
	}
	want := `{"name":"cache","container":{"image":"redis:7","imagePullPolicy":"IfNotPresent"}}`
	if got := strings.Join(f.requests[opServiceStart], "\n"); got != want {
		t.Fatalf("service.start request %s", got)
	}
	j := job("x", "true")
	j.SidecarContainers["app"] = &Container{Image: "app", After: []string{"db"}, Ports: []string{"8080"}}
	b, _ := json.Marshal(j.request().Spec.SidecarContainers)
	if string(b) != `{"app":{"image":"app","after":["db"],"ports":["8080"]}}` {
		t.Fatalf("%s", b)
	}
}

func TestServiceNotReadySurfacesWithItsCode(t *testing.T) {
	f := newFake(t, "s", "x")
	message := `service "migrate" was not started: "db", which it comes after, was not ready`
	f.notReady["migrate"] = message
	migrate := NewService("migrate", "flyway")
	migrate.After = []string{"db"}
	migrate.Readiness = &Readiness{Exited: true}
	ready, err := migrate.Start()
	var hostErr *Error
	if !errors.As(err, &hostErr) || hostErr.Code != "not_ready" || hostErr.Message != message || !errors.Is(err, ErrNotReady) {
		t.Fatalf("err = %#v", err)
	}
	var startErr *ServiceStartError
	if !errors.As(err, &startErr) || startErr.Service != "migrate" || err.Error() != `Error starting service "migrate": `+message {
		t.Fatalf("err = %v", err)
	}
	if ready.Ports != nil {
		t.Fatalf("a service that is not ready has ports %v", ready.Ports)
	}

	// A refusal of the call itself (not of the ticket) is wrapped the same way.
	if err := job("taken", "true").Run(); err != nil {
		t.Fatal(err)
	}
	_, err = NewService("taken", "redis:7").Start()
	if !errors.Is(err, ErrConflict) || err.Error() != `Error starting service "taken": job name used twice` {
		t.Fatalf("err = %v", err)
	}
}

func TestServiceStopWaitAndLogs(t *testing.T) {
	f := newFake(t, "s", "x")
	db := NewService("db", "postgres:16")
	if _, err := db.Start(); err != nil {
		t.Fatal(err)
	}
	if logs, err := db.Logs(); err != nil || logs != "one\ntwo" {
		t.Fatalf("logs %q, %v", logs, err)
	}
	if err := db.Stop(); err != nil {
		t.Fatal(err)
	}
	result, err := db.Wait()
	if err != nil || result != (JobResult{Phase: PhaseAborted, ExitCode: -1}) {
		t.Fatalf("result %+v, %v", result, err)
	}
	if got := strings.Join(f.ops, ","); got != "service db @0,cancel db @10,wait db" {
		t.Fatalf("ops %s", got)
	}
	for _, op := range []uint32{opJobCancel, opJobWait, opJobLogs} {
		if got := strings.Join(f.requests[op], ","); got != `{"name":"db"}` {
			t.Fatalf("op %d sent %s", op, got)
		}
	}
	if _, err := NewService("never", "redis:7").Wait(); !errors.Is(err, ErrNotFound) {
		t.Fatalf("waiting for a service never started: %v", err)
	}
}

// A goroutine waiting for its service to be ready lets the others run: the
// job beside it runs meanwhile, the one after it starts once the service is
// ready.
func TestServiceStartWaitsWithoutBlockingAGroup(t *testing.T) {
	f := newFake(t, "s", "x")
	f.duration = map[string]int{"db": 5, "lint": 20, "test": 10}
	err := Concurrent(
		RunnableFunc(func() error {
			if _, err := NewService("db", "postgres:16").Start(); err != nil {
				return err
			}
			return job("test", "").Run()
		}),
		job("lint", ""),
	).Run()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.ops, ","); got != "start lint @0,wait lint,service db @0,start test @5,wait test" || f.now != 20 {
		t.Fatalf("ops %s, done at %d", got, f.now)
	}
}

func TestAnUnreadableNotReadyReplyKeepsItsCode(t *testing.T) {
	if e := hostError(11, []byte("the service exited")); e.Code != "not_ready" || e.Message != "the service exited" {
		t.Fatalf("%#v", e)
	}
}

// Artifacts.List and Artifacts.ReadFile send the host's requests, wait for
// their tickets, and decode the artifacts and the files (text or base64).
func TestArtifactsListAndReadFiles(t *testing.T) {
	f := newFake(t, "s", "x")
	f.artifacts["dist"] = map[string]string{"app.js": "console.log(1)\n", "app.bin": "\x00\xff\x01"}
	f.artifacts["build-report"] = map[string]string{"": "built dist/app\n"}
	list, err := Artifacts.List()
	if err != nil {
		t.Fatal(err)
	}
	want := []ArtifactInfo{
		{Name: "build-report", Job: "build", Path: "/src/build-report", SizeBytes: 15, Files: 1},
		{Name: "dist", Job: "build", Path: "/src/dist", SizeBytes: 18, Files: 2},
	}
	if fmt.Sprint(list) != fmt.Sprint(want) {
		t.Fatalf("artifacts %+v\nwant %+v", list, want)
	}
	if got := strings.Join(f.requests[opArtifactList], "\n"); got != `{}` {
		t.Fatalf("artifact.list request %s", got)
	}
	// List returned once its ticket completed, not when the call did.
	if f.waitAnys != 1 {
		t.Fatalf("%d wait_any calls", f.waitAnys)
	}

	text, err := Artifacts.ReadFile("dist", "app.js")
	if err != nil || string(text) != "console.log(1)\n" {
		t.Fatalf("app.js %q, %v", text, err)
	}
	binary, err := Artifacts.ReadFile("dist", "app.bin")
	if err != nil || string(binary) != "\x00\xff\x01" {
		t.Fatalf("app.bin %q, %v", binary, err)
	}
	single, err := Artifacts.ReadFile("build-report", "")
	if err != nil || string(single) != "built dist/app\n" {
		t.Fatalf("build-report %q, %v", single, err)
	}
	_, err = Artifacts.ReadFile("dist", "missing.txt")
	var hostErr *Error
	if !errors.As(err, &hostErr) || !errors.Is(err, ErrNotFound) || hostErr.Message != `artifact "dist" has no file "missing.txt"` {
		t.Fatalf("err = %#v", err)
	}
	want2 := `{"name":"dist","path":"app.js"}` + "\n" + `{"name":"dist","path":"app.bin"}` + "\n" +
		`{"name":"build-report","path":""}` + "\n" + `{"name":"dist","path":"missing.txt"}`
	if got := strings.Join(f.requests[opArtifactRead], "\n"); got != want2 {
		t.Fatalf("artifact.read requests\n%s\nwant\n%s", got, want2)
	}
}

// With no artifacts the list is empty, not an error; an executor that keeps
// none fails the tickets, and that error is returned as it is.
func TestArtifactsEmptyAndRefused(t *testing.T) {
	f := newFake(t, "s", "x")
	list, err := Artifacts.List()
	if err != nil || list == nil || len(list) != 0 {
		t.Fatalf("artifacts %#v, %v", list, err)
	}
	message := "artifacts are not kept on Kubernetes (yet)"
	f.artifactsRefused = message
	if _, err := Artifacts.List(); !errors.Is(err, ErrInvalidRequest) || err.Error() != message {
		t.Fatalf("err = %v", err)
	}
	if _, err := Artifacts.ReadFile("dist", ""); !errors.Is(err, ErrInvalidRequest) || err.Error() != message {
		t.Fatalf("err = %v", err)
	}
}
