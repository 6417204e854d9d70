package brigadier

import (
	"encoding/json"
	"fmt"
	"runtime/debug"
	"strings"
	"sync"
	"time"
)

// Event is the event a worker handles: the contents of Brigade's event.json.
type Event struct {
	// ID is the event's id (a UUID).
	ID string `json:"id"`
	// Project is the project whose worker handles this copy of the event.
	Project Project `json:"project"`
	// Source is who created the event, e.g. "brigade.sh/cli".
	Source string `json:"source"`
	// Type is what happened, e.g. "exec"; its meaning depends on the source.
	Type string `json:"type"`
	// Qualifiers the project's subscription matched exactly (may be nil).
	Qualifiers map[string]string `json:"qualifiers"`
	// Labels the project's subscription matched (may be nil). Some sources
	// set their own: "job" (GitHub's ci:job_requested), "release"
	// (cd:pipeline_requested), "appID" (GitHub App), "teamID", "channelID"
	// and "userID" (Slack), "tick" (brigade.sh/cron: the tick, RFC 3339).
	Labels map[string]string `json:"labels"`
	// ShortTitle is a short title for lists; may be empty.
	ShortTitle string `json:"shortTitle"`
	// LongTitle is a longer title; may be empty.
	LongTitle string `json:"longTitle"`
	// Payload is an opaque string; see DecodePayload for a JSON one.
	Payload string `json:"payload"`
	// Worker holds the worker's settings for this event.
	Worker Worker `json:"worker"`
}

// DecodePayload parses the payload as JSON into v.
func (e Event) DecodePayload(v any) error {
	return json.Unmarshal([]byte(e.Payload), v)
}

// Project is the project part of an Event.
type Project struct {
	// ID is the project's id.
	ID string `json:"id"`
	// Kubernetes says where the project's jobs run in a cluster.
	Kubernetes Kubernetes `json:"kubernetes"`
	// Secrets are the project's secrets (only those the script may read
	// when the project restricts them with scriptSecrets).
	Secrets map[string]string `json:"secrets"`
}

// Kubernetes holds a project's Kubernetes settings.
type Kubernetes struct {
	// Namespace of the project's jobs; empty without a cluster.
	Namespace string `json:"namespace"`
}

// Worker is the worker part of an Event.
type Worker struct {
	// APIAddress is the API server's address; empty in a local run.
	APIAddress string `json:"apiAddress"`
	// APIToken is the worker's API token; empty in a local run.
	APIToken string `json:"apiToken"`
	// LogLevel is the least severe level the loggers print: ERROR, WARN,
	// INFO or DEBUG.
	LogLevel string `json:"logLevel"`
	// ConfigFilesDirectory is where config files live, relative to the
	// project's source.
	ConfigFilesDirectory string `json:"configFilesDirectory"`
	// DefaultConfigFiles are config files given inline in the project.
	DefaultConfigFiles map[string]string `json:"defaultConfigFiles"`
	// Git holds the project's git settings, nil when it has none.
	Git *GitConfig `json:"git"`
}

// GitConfig says where a project's source lives.
type GitConfig struct {
	// CloneURL is the repository's URL.
	CloneURL string `json:"cloneURL"`
	// Commit to check out; wins over Ref.
	Commit string `json:"commit"`
	// Ref is a branch or tag.
	Ref string `json:"ref"`
	// InitSubmodules says whether to check out submodules too.
	InitSubmodules bool `json:"initSubmodules"`
}

var cachedEvent struct {
	sync.Mutex
	event *Event
}

// CurrentEvent is the event this worker handles (read from the host once).
func CurrentEvent() (Event, error) {
	cachedEvent.Lock()
	defer cachedEvent.Unlock()
	if cachedEvent.event == nil {
		var event Event
		if err := callInto(opEventGet, nil, &event); err != nil {
			return Event{}, err
		}
		cachedEvent.event = &event
	}
	return *cachedEvent.event, nil
}

// Handler handles an event. An error it returns fails the worker, with the
// error's message; nil succeeds.
type Handler func(event Event) error

// EventRegistry maps event sources and types to handlers.
type EventRegistry struct {
	mu       sync.Mutex
	handlers map[handlerKey]Handler
}

type handlerKey struct{ source, eventType string }

// Events is the script's event registry (brigadier.js's `events`).
var Events = &EventRegistry{}

// On registers handler for events of source and eventType; eventType "*"
// matches every type of that source that has no handler of its own. The last
// registration for a source and type wins.
func (r *EventRegistry) On(source, eventType string, handler Handler) *EventRegistry {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.handlers == nil {
		r.handlers = map[handlerKey]Handler{}
	}
	r.handlers[handlerKey{source, eventType}] = handler
	return r
}

func (r *EventRegistry) lookup(source, eventType string) Handler {
	r.mu.Lock()
	defer r.mu.Unlock()
	if h := r.handlers[handlerKey{source, eventType}]; h != nil {
		return h
	}
	return r.handlers[handlerKey{source, "*"}]
}

// Process reads the worker's event, runs the handler registered for it and
// reports how it went: an error the handler returns, or a panic, fails the
// worker with its message (script.error); an event no handler matches
// succeeds, with a debug line saying so. Call it once, at the end of main.
func (r *EventRegistry) Process() {
	defer func() {
		if value := recover(); value != nil {
			reportPanic(value)
		}
	}()
	event, err := CurrentEvent()
	if err != nil {
		reportError("the event could not be read: " + err.Error())
		return
	}
	handler := r.lookup(event.Source, event.Type)
	if handler == nil {
		Log.Debug(`no handler for events of source "` + event.Source + `" and type "` + event.Type + `"`)
		return
	}
	if err := handler(event); err != nil {
		reportError(err.Error())
	}
}

// reportError fails the worker with message.
func reportError(message string) {
	reportScriptError(message, "")
}

func reportScriptError(message, stack string) {
	request := struct {
		Kind    string  `json:"kind"`
		Message string  `json:"message"`
		Stack   *string `json:"stack"`
	}{Kind: "uncaught", Message: message}
	if stack != "" {
		request.Stack = &stack
	}
	if _, err := call(opScriptError, request); err != nil {
		// The host did not take it: still fail the worker, the Go way.
		panic(fmt.Sprintf("%s (and reporting it failed: %v)", message, err))
	}
}

// panicError is a panic caught in a goroutine of a group, carried to the
// goroutine that waits for the group and panicked again there.
type panicError struct {
	value any
	stack string
}

func (p *panicError) Error() string { return panicMessage(p.value) }

func panicMessage(value any) string {
	switch v := value.(type) {
	case *panicError:
		return v.Error()
	case error:
		return "panic: " + v.Error()
	default:
		return fmt.Sprint("panic: ", v)
	}
}

func reportPanic(value any) {
	stack := ""
	if p, ok := value.(*panicError); ok {
		stack = p.stack
	} else {
		stack = panicStack()
	}
	reportScriptError(panicMessage(value), stack)
}

// panicStack is the stack of a panicking goroutine, from the frame that
// panicked on (called from a deferred function).
func panicStack() string {
	stack := string(debug.Stack())
	if i := strings.Index(stack, "\npanic("); i >= 0 {
		// Skip the runtime's panic frame: its function line and file line.
		rest := stack[i+1:]
		for n := 0; n < 2; n++ {
			if j := strings.IndexByte(rest, '\n'); j >= 0 {
				rest = rest[j+1:]
			}
		}
		return strings.TrimRight(rest, "\n")
	}
	return strings.TrimRight(stack, "\n")
}

// SetSummary sets the event's summary, shown by Brigade's clients; a later
// call replaces it. The host refuses more than 4096 characters with an
// *Error whose Code is "limit_exceeded".
func SetSummary(text string) error {
	_, err := call(opSummarySet, struct {
		Text string `json:"text"`
	}{text})
	return err
}

// Secret returns the project's secret key. A key the project does not have is
// an *Error with Code "not_found"; one the project keeps from its script
// (spec.workerTemplate.scriptSecrets) is "permission_denied" (a job can still
// have it in its environment as "${{ secrets.KEY }}").
func Secret(key string) (string, error) {
	var reply struct {
		Value string `json:"value"`
	}
	err := callInto(opSecretGet, struct {
		Key string `json:"key"`
	}{key}, &reply)
	return reply.Value, err
}

// Sleep pauses the calling goroutine for d through the host's timer, while
// the other goroutines of a Concurrent group go on. (time.Sleep works too, but
// while a goroutine sleeps that way the SDK does not hear from the host: the
// jobs other goroutines wait for are seen to end only after it wakes.)
func Sleep(d time.Duration) error {
	if d < 0 {
		d = 0
	}
	f, err := submit(opSleep, struct {
		Ms float64 `json:"ms"`
	}{float64(d) / float64(time.Millisecond)})
	if err != nil {
		return err
	}
	return f.await().err
}
