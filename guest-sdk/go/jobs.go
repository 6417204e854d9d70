package brigadier

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
)

// ImagePullPolicy says when a container's image is pulled.
type ImagePullPolicy string

const (
	// IfNotPresent pulls the image only when it is missing (the default).
	IfNotPresent ImagePullPolicy = "IfNotPresent"
	// Always pulls the image every time.
	Always ImagePullPolicy = "Always"
)

// Container is one container of a job, or a Service's.
type Container struct {
	// Image is the OCI image reference — or, for a job's primary container,
	// a WASI preview 1 module that runs in the sandbox instead of a
	// container (a Wasm job): "wasm:PATH" (a file of the project's source),
	// "wasm:workspace:PATH" (a file in the event's workspace) or
	// "wasm:https://HOST/PATH@sha256:HEX" (fetched once, pinned by its
	// digest). Its Command + Arguments are its argv, Environment its
	// environment, and the workspace and source mounts the only directories
	// it may open (see the README's "Wasm jobs").
	Image string
	// ImagePullPolicy is IfNotPresent (the default) or Always.
	ImagePullPolicy ImagePullPolicy
	// WorkingDirectory is the process's working directory; empty for the
	// image's default.
	WorkingDirectory string
	// Command overrides the image's entrypoint.
	Command []string
	// Arguments are the command's arguments.
	Arguments []string
	// Environment holds environment variables. A value that is exactly
	// "${{ secrets.NAME }}" becomes the project's secret NAME.
	Environment map[string]string
	// EnvironmentFile names a file of VAR=value lines (as .env tools write
	// them) whose variables the container gets too, Environment winning over
	// it: PATH in the project's source, "workspace:PATH" in the event's
	// workspace; empty for none. An error names the file and line.
	EnvironmentFile string
	// WorkspaceMountPath is where to mount the event's shared workspace
	// (needs the project's useWorkspace); empty for nowhere.
	WorkspaceMountPath string
	// SourceMountPath is where to mount a checkout of the project's source
	// (needs the project's git settings); empty for nowhere.
	SourceMountPath string
	// User is who the process runs as: "root", "nobody", "UID" or
	// "UID:GID"; empty for the default, nobody on every executor ("root"
	// needs the project's allowRoot policy).
	User string
	// Privileged runs the container privileged (needs the project's
	// allowPrivileged policy).
	Privileged bool
	// UseHostDockerSocket mounts the host's Docker socket (needs the
	// project's allowDockerSocketMount policy).
	UseHostDockerSocket bool
	// Readiness, for a sidecar or a service, says when it counts as ready:
	// the primary container starts once every sidecar that declares
	// readiness is ready, and a service's Start returns once it is.
	Readiness *Readiness
	// After names the containers this one starts after: a sidecar's (or the
	// primary's) among the job's sidecars, a service's among the event's
	// services started before it. It starts once each is ready (its
	// Readiness, or else up for 3 s without exiting), and is not started
	// (the job or service fails, naming it) when one is not.
	After []string
	// Ports are a service's or a sidecar's ports: "5432" declares a
	// container port (the event's jobs reach it by name without more);
	// "8080:80" publishes it on the host's loopback, "0.0.0.0:8080:80" on an
	// address, "0:6379" on a free host port (a service's only), which Start
	// returns and later jobs get as MIZZEN_SERVICE_<NAME>_PORT_6379. Host
	// ports need the project's allowHostPorts policy.
	Ports []string
	// Volumes, as Docker Compose writes them: "/path" (the container's own,
	// fresh each time), "name:/path" (shared by the event's jobs and
	// services and removed when the event ends, or kept between events when
	// the project declares the name in spec.workerTemplate.volumes),
	// "/host/path:/path" (a host directory under the project's
	// allowedHostPaths policy); ":ro" after any for read-only.
	Volumes []string
}

// NewContainer returns a container that runs image, with Brigade's defaults.
func NewContainer(image string) *Container {
	return &Container{Image: image, ImagePullPolicy: IfNotPresent}
}

// Readiness says when a sidecar or a service is ready: set exactly one of
// TCPPort and Exited.
type Readiness struct {
	// TCPPort: ready once something accepts TCP connections on this port of
	// the job's localhost (a sidecar such as a database), or of the
	// service's own container.
	TCPPort int `json:"tcpPort,omitempty"`
	// Exited: ready once the container has exited with 0 (a one-shot setup
	// container); a non-zero exit fails the job (a service's Start, with
	// not_ready).
	Exited bool `json:"exited,omitempty"`
	// TimeoutSeconds is how long to wait before the job fails (0 for the
	// default, 60).
	TimeoutSeconds float64 `json:"timeoutSeconds,omitempty"`
}

// JobHost says where a job must run.
type JobHost struct {
	// OS is "linux" (the default when empty) or "windows".
	OS string
	// NodeSelector holds labels the node must carry.
	NodeSelector map[string]string
}

// JobArtifacts are a job's artifacts: files its primary container produces,
// kept with the event for its later jobs (and for people: `mizzen event
// artifacts`), and files earlier jobs of the event produced, brought back
// before it starts.
//
//	build.Artifacts.Save = []brigadier.SaveArtifact{
//		{Name: "dist", Path: "dist"},
//		{Name: "reports", Path: "reports/*.xml", OnFailure: true},
//	}
//	deploy.Artifacts.Restore = []brigadier.RestoreArtifact{{Name: "dist"}}
type JobArtifacts struct {
	// Save lists the artifacts saved from the primary container when the
	// job ends: when it succeeds, or also when it fails for those
	// OnFailure. At most 16.
	Save []SaveArtifact `json:"save,omitempty"`
	// Restore lists the artifacts restored into the primary container
	// before it starts; each must be saved by a job of the event started
	// before this one (else the host refuses the job, not_found). At most
	// 16.
	Restore []RestoreArtifact `json:"restore,omitempty"`
}

// SaveArtifact is an artifact a job saves.
type SaveArtifact struct {
	// Name is unique within the event (another job saving the same name is
	// refused, conflict): letters, digits, '-', '_' and '.', not starting
	// with '.', at most 63 characters.
	Name string `json:"name"`
	// Path is a file or directory in the primary container, absolute or
	// relative to its WorkingDirectory; its last components may be a
	// pattern ("reports/*.xml", "out/**/*.json").
	Path string `json:"path"`
	// OnFailure: saved when the job fails too (test reports), not only when
	// it succeeds.
	OnFailure bool `json:"onFailure,omitempty"`
}

// RestoreArtifact is an artifact a job restores.
type RestoreArtifact struct {
	// Name is the name a job of the event started before this one saves it
	// under.
	Name string `json:"name"`
	// Path is where it goes in the primary container, absolute or relative
	// to its WorkingDirectory (not a pattern); empty for where it was saved
	// from.
	Path string `json:"path,omitempty"`
}

// JobCache is a directory kept between the project's events, by key: a
// package manager's or a compiler's cache. Before the job starts it is
// restored from the entry of Key, or, when Key has none, from the newest
// entry whose key starts with the first of RestoreKeys that has one (on a
// miss it starts empty); after the job succeeds it is saved under Key when
// Key had no entry (entries are never replaced). The project's caches are
// held to its cacheSize limit (default 10 GiB), the least recently used
// entries evicted.
//
//	build.Caches = []brigadier.JobCache{
//		{Key: "npm-" + lockHash, RestoreKeys: []string{"npm-"}, Path: "/root/.npm"},
//	}
type JobCache struct {
	// Key is what the directory's content depends on ("npm-<hash of
	// package-lock.json>"): 1 to 512 bytes without control characters.
	Key string `json:"key"`
	// RestoreKeys are key prefixes tried in order when Key has no entry (at
	// most 10, each as a key).
	RestoreKeys []string `json:"restoreKeys,omitempty"`
	// Path is the directory in the primary container, absolute or relative
	// to its WorkingDirectory (not a pattern).
	Path string `json:"path"`
}

// DefaultTimeoutSeconds is a job's timeout unless it sets one: 15 minutes.
const DefaultTimeoutSeconds = 900

// Job is a primary container, whose exit code decides the job, and sidecars
// that run beside it.
type Job struct {
	// Name is unique within the event: ^[a-z][a-z\d-]*[a-z\d]$, at most 63
	// characters.
	Name string
	// PrimaryContainer is the container whose exit code decides the job.
	PrimaryContainer Container
	// SidecarContainers run beside the primary container, by name, and are
	// stopped when it exits.
	SidecarContainers map[string]*Container
	// TimeoutSeconds: after this long the job ends TIMED_OUT (default 900).
	TimeoutSeconds float64
	// Host says where the job must run.
	Host JobHost
	// Fallible: when true, the job's failure does not make Run fail.
	Fallible bool
	// Artifacts are what the job keeps for later jobs of its event (Save),
	// and what it brings back from earlier ones (Restore). (Mizzen's
	// addition; not for a Wasm job, nor yet on the Kubernetes executor.)
	Artifacts JobArtifacts
	// Caches are directories of the primary container kept between the
	// project's events, by key: at most 8, each a different directory.
	// (Mizzen's addition; not for a Wasm job, nor yet on the Kubernetes
	// executor.)
	Caches []JobCache

	started bool
	wait    *future // the job.wait ticket's
}

// NewJob returns a job named name whose primary container runs image, with
// Brigade's defaults (brigadier.js's `new Job(name, image, event)`).
func NewJob(name, image string) *Job {
	return &Job{
		Name:              name,
		PrimaryContainer:  *NewContainer(image),
		SidecarContainers: map[string]*Container{},
		TimeoutSeconds:    DefaultTimeoutSeconds,
	}
}

// Logger returns a logger whose lines carry `[job: <name>]`.
func (j *Job) Logger() *Logger {
	return Log.WithJob(j.Name)
}

// Phase is how a job ended.
type Phase string

// The phases a job ends in.
const (
	PhaseSucceeded        Phase = "SUCCEEDED"
	PhaseFailed           Phase = "FAILED"
	PhaseAborted          Phase = "ABORTED"
	PhaseCanceled         Phase = "CANCELED"
	PhaseTimedOut         Phase = "TIMED_OUT"
	PhaseSchedulingFailed Phase = "SCHEDULING_FAILED"
)

// phaseErrors are brigadier.js's PHASE_ERRORS.
var phaseErrors = map[Phase]string{
	PhaseAborted:          "was aborted",
	PhaseCanceled:         "was canceled before starting",
	PhaseFailed:           "failed",
	PhaseSchedulingFailed: "scheduling failed",
	PhaseTimedOut:         "timed out",
}

// JobError is how Run and Wait report a job that did not succeed.
type JobError struct {
	// Job is the job's name.
	Job string
	// Phase is how it ended: FAILED, TIMED_OUT, ABORTED...
	Phase Phase
	// ExitCode is the primary container's exit code, or -1 when it did not
	// exit (the job timed out, was never started...).
	ExitCode int
	// Reason says why when the phase does not (a failed pull, the timeout);
	// may be empty.
	Reason string
}

// Error is brigadier.js's message: `Job "<name>" failed`, `... timed out`...
func (e *JobError) Error() string {
	what, ok := phaseErrors[e.Phase]
	if !ok {
		what = "ended " + string(e.Phase)
	}
	return `Job "` + e.Job + `" ` + what
}

// Start starts the job and returns once the host has accepted it; the job
// runs while the script goes on, until Wait. An error (a *Error from the host
// with its Code: a name used twice, a policy...) means the job did not start.
func (j *Job) Start() error {
	j.Logger().Info("Creating job " + j.Name)
	if _, err := call(opJobStart, j.request()); err != nil {
		return &StartError{Job: j.Name, Err: err}
	}
	sched.mu.Lock()
	j.started, j.wait = true, nil
	sched.mu.Unlock()
	return nil
}

// StartError is a job the host did not start; it unwraps to the host's *Error.
type StartError struct {
	Job string
	Err error
}

// Error is brigadier.js's message: `Error creating job "<name>": <why>`.
func (e *StartError) Error() string {
	return `Error creating job "` + e.Job + `": ` + e.Err.Error()
}

func (e *StartError) Unwrap() error { return e.Err }

// Wait waits until the started job ends: nil when it succeeded (or whatever
// happened when it is Fallible), else a *JobError. It may be called more than
// once, from several goroutines.
func (j *Job) Wait() error {
	sched.mu.Lock()
	if !j.started {
		sched.mu.Unlock()
		return errors.New(`Job "` + j.Name + `" has not been started`)
	}
	if j.wait == nil {
		f, err := submitLocked(opJobWait, jobRef{j.Name})
		if err != nil {
			sched.mu.Unlock()
			return err
		}
		j.wait = f
	}
	f := j.wait
	sched.mu.Unlock()

	out := f.await()
	if out.err != nil {
		return out.err
	}
	result, err := decodeJobResult(out.result)
	if err != nil {
		return err
	}
	// The host logs how the job ended (with its exit code), once.
	if j.Fallible || result.Phase == PhaseSucceeded {
		return nil
	}
	return &JobError{Job: j.Name, Phase: result.Phase, ExitCode: result.ExitCode, Reason: result.Reason}
}

// JobResult is how a job or a service ended: what job.wait answers.
type JobResult struct {
	// Phase is how it ended: SUCCEEDED, FAILED, ABORTED (stopped while it
	// ran), CANCELED, TIMED_OUT or SCHEDULING_FAILED.
	Phase Phase
	// ExitCode is the (primary) container's exit code, or -1 when it did
	// not exit.
	ExitCode int
	// Reason says why when the phase does not (a failed pull, the timeout);
	// may be empty.
	Reason string
}

// decodeJobResult reads a job.wait ticket's result.
func decodeJobResult(raw json.RawMessage) (JobResult, error) {
	var result struct {
		Phase    Phase  `json:"phase"`
		ExitCode *int   `json:"exitCode"`
		Reason   string `json:"reason"`
	}
	if err := json.Unmarshal(raw, &result); err != nil {
		return JobResult{}, &Error{Code: "internal", Message: "a job result could not be decoded: " + err.Error()}
	}
	r := JobResult{Phase: result.Phase, ExitCode: -1, Reason: result.Reason}
	if result.ExitCode != nil {
		r.ExitCode = *result.ExitCode
	}
	return r, nil
}

// Run starts the job and waits for it to end: nil when it succeeded (or
// whatever happened when it is Fallible), else a *JobError whose message is
// `Job "<name>" failed` (`timed out`, `was aborted`...), or the *StartError
// of a job that could not start.
func (j *Job) Run() error {
	if err := j.Start(); err != nil {
		return err
	}
	return j.Wait()
}

// start is Run split at its first wait, for groups.
func (j *Job) start() func() error {
	if err := j.Start(); err != nil {
		return func() error { return err }
	}
	return j.Wait
}

// Cancel stops the job: a running job ends ABORTED, one not started yet
// CANCELED; a job that has ended is left as it is.
func (j *Job) Cancel() error {
	_, err := call(opJobCancel, jobRef{j.Name})
	return err
}

// Logs returns what the primary container has printed so far, lines joined
// with "\n" (wait for the job first to have all of it).
func (j *Job) Logs() (string, error) {
	return j.ContainerLogs("")
}

// ContainerLogs is Logs for the sidecar named container ("" for the primary).
func (j *Job) ContainerLogs(container string) (string, error) {
	return readLogs(j.Name, container)
}

// readLogs asks job.logs for the output of the job or service name (of its
// sidecar container, unless that is "").
func readLogs(name, container string) (string, error) {
	request := struct {
		Name      string  `json:"name"`
		Container *string `json:"container,omitempty"`
	}{Name: name}
	if container != "" {
		request.Container = &container
	}
	f, err := submit(opJobLogs, request)
	if err != nil {
		return "", err
	}
	out := f.await()
	if out.err != nil {
		return "", out.err
	}
	var logs struct {
		Lines []string `json:"lines"`
	}
	if err := json.Unmarshal(out.result, &logs); err != nil {
		return "", &Error{Code: "internal", Message: "the logs of \"" + name + "\" could not be decoded: " + err.Error()}
	}
	return strings.Join(logs.Lines, "\n"), nil
}

type jobRef struct {
	Name string `json:"name"`
}

// The job.start request.
type wireContainer struct {
	Image               string            `json:"image"`
	ImagePullPolicy     ImagePullPolicy   `json:"imagePullPolicy,omitempty"`
	WorkingDirectory    string            `json:"workingDirectory,omitempty"`
	Command             []string          `json:"command,omitempty"`
	Arguments           []string          `json:"arguments,omitempty"`
	Environment         map[string]string `json:"environment,omitempty"`
	EnvironmentFile     string            `json:"environmentFile,omitempty"`
	WorkspaceMountPath  string            `json:"workspaceMountPath,omitempty"`
	SourceMountPath     string            `json:"sourceMountPath,omitempty"`
	User                string            `json:"user,omitempty"`
	Privileged          bool              `json:"privileged,omitempty"`
	UseHostDockerSocket bool              `json:"useHostDockerSocket,omitempty"`
	Readiness           *Readiness        `json:"readiness,omitempty"`
	After               []string          `json:"after,omitempty"`
	Ports               []string          `json:"ports,omitempty"`
	Volumes             []string          `json:"volumes,omitempty"`
}

type wireHost struct {
	OS           string            `json:"os,omitempty"`
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
}

type wireSpec struct {
	PrimaryContainer  wireContainer            `json:"primaryContainer"`
	SidecarContainers map[string]wireContainer `json:"sidecarContainers,omitempty"`
	TimeoutSeconds    float64                  `json:"timeoutSeconds"`
	Host              wireHost                 `json:"host"`
	Fallible          bool                     `json:"fallible"`
	Artifacts         *JobArtifacts            `json:"artifacts,omitempty"`
	Caches            []JobCache               `json:"caches,omitempty"`
}

type wireJob struct {
	Name string   `json:"name"`
	Spec wireSpec `json:"spec"`
}

func wire(c *Container) wireContainer {
	return wireContainer{
		Image:               c.Image,
		ImagePullPolicy:     c.ImagePullPolicy,
		WorkingDirectory:    c.WorkingDirectory,
		Command:             c.Command,
		Arguments:           c.Arguments,
		Environment:         c.Environment,
		EnvironmentFile:     c.EnvironmentFile,
		WorkspaceMountPath:  c.WorkspaceMountPath,
		SourceMountPath:     c.SourceMountPath,
		User:                c.User,
		Privileged:          c.Privileged,
		UseHostDockerSocket: c.UseHostDockerSocket,
		Readiness:           c.Readiness,
		After:               c.After,
		Ports:               c.Ports,
		Volumes:             c.Volumes,
	}
}

func (j *Job) request() wireJob {
	spec := wireSpec{
		PrimaryContainer: wire(&j.PrimaryContainer),
		TimeoutSeconds:   j.TimeoutSeconds,
		Host:             wireHost{OS: j.Host.OS, NodeSelector: j.Host.NodeSelector},
		Fallible:         j.Fallible,
		Caches:           j.Caches,
	}
	if len(j.Artifacts.Save) > 0 || len(j.Artifacts.Restore) > 0 {
		spec.Artifacts = &j.Artifacts
	}
	if len(j.SidecarContainers) > 0 {
		spec.SidecarContainers = map[string]wireContainer{}
		for name, c := range j.SidecarContainers {
			if c != nil {
				spec.SidecarContainers[name] = wire(c)
			}
		}
	}
	return wireJob{Name: j.Name, Spec: spec}
}

// Service is a container that lives as long as the event (or until Stop),
// started once and reached by its Name from every job of the event, on the
// event's own network, where no other event's containers reach it: one
// database for a sequence of jobs instead of a sidecar in each. Its fields
// are its Container's (Image, Environment, Readiness, After, Ports...); an
// image may not be a Wasm module. (Mizzen's addition, brigadier.js's
// `Service`.)
//
//	db := brigadier.NewService("db", "postgres:16")
//	db.Environment = map[string]string{"POSTGRES_PASSWORD": "test"}
//	db.Readiness = &brigadier.Readiness{TCPPort: 5432}
//	if _, err := db.Start(); err != nil {
//		return err
//	}
//	err := brigadier.NewJob("test", "python:3").Run() // reaches db:5432
type Service struct {
	// Name is unique among the event's jobs and services (the two share the
	// event's names, and job.wait, job.cancel and job.logs take either), and
	// the host name the event's jobs reach it by: ^[a-z][a-z\d-]*[a-z\d]$,
	// at most 63 characters.
	Name string
	Container
}

// NewService returns a service named name that runs image, with Brigade's
// defaults for its container.
func NewService(name, image string) *Service {
	return &Service{Name: name, Container: *NewContainer(image)}
}

// Logger returns a logger whose lines carry `[job: <name>]`, as a job's do:
// the host lists a service among the event's jobs.
func (s *Service) Logger() *Logger {
	return Log.WithJob(s.Name)
}

// ServiceReady is what Start returns once a service is ready.
type ServiceReady struct {
	// Ports holds the host port each published container port got, by
	// container port as text ("5432": 49153), as the host sends it.
	Ports map[string]int `json:"ports"`
}

// Port returns the host port containerPort was published on, and whether it
// was published.
func (r ServiceReady) Port(containerPort int) (int, bool) {
	port, ok := r.Ports[strconv.Itoa(containerPort)]
	return port, ok
}

// Start starts the service and waits until it is ready: once the services
// it comes After are ready, its Readiness (or, without one, up for 3 s
// without exiting; with Exited, once it has exited 0). It returns the host
// ports it got; jobs started from then on get each as
// MIZZEN_SERVICE_<NAME>_PORT_<PORT>. Other goroutines of a Concurrent group
// go on meanwhile.
//
// A service that ends, fails or times out first, or one whose After service
// was not ready, is a *ServiceStartError that unwraps to the host's *Error
// with Code "not_ready" (errors.Is(err, ErrNotReady)); one the host would not
// start (a policy, a name used twice) unwraps to that refusal.
func (s *Service) Start() (ServiceReady, error) {
	s.Logger().Info("Starting service " + s.Name)
	f, err := submit(opServiceStart, wireService{Name: s.Name, Container: wire(&s.Container)})
	if err != nil {
		return ServiceReady{}, &ServiceStartError{Service: s.Name, Err: err}
	}
	out := f.await()
	if out.err != nil {
		return ServiceReady{}, &ServiceStartError{Service: s.Name, Err: out.err}
	}
	var ready ServiceReady
	if err := json.Unmarshal(out.result, &ready); err != nil {
		return ServiceReady{}, &Error{Code: "internal", Message: `the readiness of service "` + s.Name + `" could not be decoded: ` + err.Error()}
	}
	return ready, nil
}

// ServiceStartError is a service that was not started or not ready; it
// unwraps to the host's *Error.
type ServiceStartError struct {
	Service string
	Err     error
}

// Error is brigadier.js's message: `Error starting service "<name>": <why>`.
func (e *ServiceStartError) Error() string {
	return `Error starting service "` + e.Service + `": ` + e.Err.Error()
}

func (e *ServiceStartError) Unwrap() error { return e.Err }

// Stop stops the service (job.cancel); it would otherwise run until the
// event ends. It then ends ABORTED (CANCELED when it had not started yet).
func (s *Service) Stop() error {
	_, err := call(opJobCancel, jobRef{s.Name})
	return err
}

// Wait waits until the service ends and returns how (job.wait): ABORTED
// once stopped. A service that did not succeed is not an error here, only a
// host's refusal is (not_found for a service never started).
func (s *Service) Wait() (JobResult, error) {
	f, err := submit(opJobWait, jobRef{s.Name})
	if err != nil {
		return JobResult{}, err
	}
	out := f.await()
	if out.err != nil {
		return JobResult{}, out.err
	}
	return decodeJobResult(out.result)
}

// Logs returns what the service has printed so far, lines joined with "\n".
func (s *Service) Logs() (string, error) {
	return readLogs(s.Name, "")
}

// The service.start request.
type wireService struct {
	Name      string        `json:"name"`
	Container wireContainer `json:"container"`
}

// Runnable is anything a group can run: a *Job, a group, or a RunnableFunc.
type Runnable interface {
	Run() error
}

// RunnableFunc makes a function a Runnable, to run your own steps in a group
// (a Concurrent group runs it in a goroutine of its own).
type RunnableFunc func() error

// Run calls f.
func (f RunnableFunc) Run() error { return f() }

// starter is implemented by the SDK's runnables: start does the part of Run
// that does not wait (starting the first jobs) and returns the rest, so that
// a Concurrent group starts all of its jobs, in order, before it waits.
type starter interface {
	start() func() error
}

func startOf(r Runnable) func() error {
	if s, ok := r.(starter); ok {
		return s.start()
	}
	return r.Run
}

// SerialGroup runs runnables one after another (brigadier.js's
// `Job.sequence`).
type SerialGroup struct {
	runnables []Runnable
}

// Sequence returns a group that runs runnables one after another and stops at
// the first that fails, returning its error.
func Sequence(runnables ...Runnable) *SerialGroup {
	return &SerialGroup{runnables: runnables}
}

// Add appends runnables to the group.
func (g *SerialGroup) Add(runnables ...Runnable) { g.runnables = append(g.runnables, runnables...) }

// Len is the number of runnables in the group.
func (g *SerialGroup) Len() int { return len(g.runnables) }

// Run runs the group's runnables one after another, stopping at the first
// error, which it returns.
func (g *SerialGroup) Run() error { return g.start()() }

func (g *SerialGroup) start() func() error {
	runnables := append([]Runnable(nil), g.runnables...)
	if len(runnables) == 0 {
		return func() error { return nil }
	}
	first := startOf(runnables[0])
	return func() error {
		if err := first(); err != nil {
			return err
		}
		for _, r := range runnables[1:] {
			if err := startOf(r)(); err != nil {
				return err
			}
		}
		return nil
	}
}

// ConcurrentGroup runs runnables at the same time (brigadier.js's
// `Job.concurrent`).
type ConcurrentGroup struct {
	runnables []Runnable
}

// Concurrent returns a group that runs runnables at the same time.
func Concurrent(runnables ...Runnable) *ConcurrentGroup {
	return &ConcurrentGroup{runnables: runnables}
}

// Add appends runnables to the group.
func (g *ConcurrentGroup) Add(runnables ...Runnable) {
	g.runnables = append(g.runnables, runnables...)
}

// Len is the number of runnables in the group.
func (g *ConcurrentGroup) Len() int { return len(g.runnables) }

// Run starts every runnable (the jobs of each, in order), then waits: nil
// once all have succeeded, or the first error as soon as one fails, as
// Promise.all does (the others go on; jobs still running when the worker ends
// are stopped by the host). A panic in one is raised again in Run.
func (g *ConcurrentGroup) Run() error { return g.start()() }

func (g *ConcurrentGroup) start() func() error {
	waits := make([]func() error, len(g.runnables))
	for i, r := range g.runnables {
		waits[i] = startOf(r)
	}
	return func() error { return waitAll(waits) }
}

// waitAll runs each of waits in a goroutine of its own and returns the first
// error, as soon as there is one.
func waitAll(waits []func() error) error {
	if len(waits) == 0 {
		return nil
	}
	if len(waits) == 1 {
		return waits[0]()
	}
	var (
		mu        sync.Mutex
		remaining = len(waits)
		done      = &future{}
	)
	for _, wait := range waits {
		spawn(func() {
			panicked, err := protect(wait)
			mu.Lock()
			remaining--
			last := remaining == 0
			mu.Unlock()
			sched.mu.Lock()
			switch {
			case panicked != nil:
				done.resolveLocked(outcome{panic: panicked})
			case err != nil:
				done.resolveLocked(outcome{err: err})
			case last:
				done.resolveLocked(outcome{})
			}
			sched.mu.Unlock()
		})
	}
	out := done.await()
	if out.panic != nil {
		panic(out.panic)
	}
	return out.err
}

// protect calls fn, catching a panic with its stack.
func protect(fn func() error) (panicked *panicError, err error) {
	defer func() {
		if value := recover(); value != nil {
			if p, ok := value.(*panicError); ok {
				panicked = p
			} else {
				panicked = &panicError{value: value, stack: panicStack()}
			}
		}
	}()
	return nil, fn()
}
