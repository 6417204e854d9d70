package brigadier

import (
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"
)

// Levels, from most to least severe, as in the event's worker.logLevel.
const (
	LevelError = "ERROR"
	LevelWarn  = "WARN"
	LevelInfo  = "INFO"
	LevelDebug = "DEBUG"
)

var levelRanks = map[string]int{LevelError: 0, LevelWarn: 1, LevelInfo: 2, LevelDebug: 3}
var levelNames = [...]string{LevelError, LevelWarn, LevelInfo, LevelDebug}

// maxLineChars is brigadier.js's cut for a single log line.
const maxLineChars = 64 * 1024

var threshold struct {
	sync.Mutex
	set  bool
	rank int
}

func currentRank() int {
	threshold.Lock()
	defer threshold.Unlock()
	if !threshold.set {
		threshold.rank = levelRanks[LevelInfo]
		if event, err := CurrentEvent(); err == nil {
			if rank, ok := levelRanks[strings.ToUpper(event.Worker.LogLevel)]; ok {
				threshold.rank = rank
			}
		}
		threshold.set = true
	}
	return threshold.rank
}

// LogLevel is the least severe level the loggers print: the event's
// worker.logLevel until SetLogLevel changes it.
func LogLevel() string {
	return levelNames[currentRank()]
}

// SetLogLevel changes the least severe level the loggers print (error, warn,
// info or debug, in any case).
func SetLogLevel(level string) error {
	rank, ok := levelRanks[strings.ToUpper(level)]
	if !ok {
		return fmt.Errorf("unknown log level %q (use error, warn, info or debug)", level)
	}
	threshold.Lock()
	threshold.rank, threshold.set = rank, true
	threshold.Unlock()
	return nil
}

// Logger writes levelled lines to the worker's log, printed as
// `<time> LEVEL: message` (with `[job: name]` for a job's logger). Lines below
// the worker's log level are dropped. Its methods format as fmt.Sprintln does
// (operands separated by spaces, no newline) or, for the f variants, as
// fmt.Sprintf. The zero value is the worker's logger.
type Logger struct {
	job string
}

// Log is the worker's logger (brigadier.js's `logger`).
var Log = &Logger{}

// WithJob returns a logger whose lines are about the job named (brigadier.js's
// `logger.child({job})`).
func (l *Logger) WithJob(job string) *Logger {
	return &Logger{job: job}
}

// Job is the name of the job this logger's lines are about ("" for none).
func (l *Logger) Job() string { return l.job }

func (l *Logger) Debug(args ...any)                 { l.emit(3, sprint(args)) }
func (l *Logger) Info(args ...any)                  { l.emit(2, sprint(args)) }
func (l *Logger) Warn(args ...any)                  { l.emit(1, sprint(args)) }
func (l *Logger) Error(args ...any)                 { l.emit(0, sprint(args)) }
func (l *Logger) Debugf(format string, args ...any) { l.emit(3, fmt.Sprintf(format, args...)) }
func (l *Logger) Infof(format string, args ...any)  { l.emit(2, fmt.Sprintf(format, args...)) }
func (l *Logger) Warnf(format string, args ...any)  { l.emit(1, fmt.Sprintf(format, args...)) }
func (l *Logger) Errorf(format string, args ...any) { l.emit(0, fmt.Sprintf(format, args...)) }

func sprint(args []any) string {
	s := fmt.Sprintln(args...)
	return s[:len(s)-1]
}

func (l *Logger) emit(rank int, message string) {
	if rank > currentRank() {
		return
	}
	if utf8.RuneCountInString(message) > maxLineChars {
		runes := []rune(message)
		message = fmt.Sprintf("%s... [line truncated: %d more characters]",
			string(runes[:maxLineChars]), len(runes)-maxLineChars)
	}
	request := struct {
		Level   string  `json:"level"`
		Message string  `json:"message"`
		Job     *string `json:"job"`
		Console bool    `json:"console"`
	}{Level: levelNames[rank], Message: message}
	if l != nil && l.job != "" {
		request.Job = &l.job
	}
	// A line the host refuses is lost: logging does not fail a script.
	_, _ = call(opLog, request)
}
