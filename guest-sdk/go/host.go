package brigadier

import (
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
)

// The operation numbers of host-api/src/op_codes.rs.
const (
	opEventGet        = 1
	opLog             = 2
	opSummarySet      = 3
	opExit            = 4 // unused: os.Exit reaches the host as WASI's proc_exit
	opScriptError     = 5
	opSecretGet       = 6
	opJobStart        = 10
	opJobWait         = 11
	opJobCancel       = 12
	opJobLogs         = 13
	opServiceStart    = 14
	opSleep           = 20
	opTicketCancel    = 21 // unused: no Go API forgets a ticket
	opWaitAny         = 30
	opWorkspaceRead   = 40
	opWorkspaceWrite  = 41
	opWorkspaceList   = 42
	opWorkspaceRemove = 43
	opArtifactList    = 50
	opArtifactRead    = 51
)

const (
	statusNotConfigured = 2
	statusInternal      = 10
)

// The error codes of host-api/src/error.rs, by status.
var codeNames = [...]string{
	1:  "invalid_request",
	2:  "not_configured",
	3:  "not_found",
	4:  "conflict",
	5:  "permission_denied",
	6:  "limit_exceeded",
	7:  "unavailable",
	8:  "cancelled",
	9:  "unknown_operation",
	10: "internal",
	11: "not_ready",
}

// hostMu keeps each call and its take_reply together.
var hostMu sync.Mutex

// Error is an error the host answered an operation with. Code is one of the
// host's error codes (invalid_request, not_configured, not_found, conflict,
// permission_denied, limit_exceeded, unavailable, cancelled,
// unknown_operation, internal, not_ready) and Message says what was wrong,
// for people.
//
//	err := brigadier.SetSummary(text)
//	var hostErr *brigadier.Error
//	if errors.As(err, &hostErr) && hostErr.Code == "limit_exceeded" { ... }
//	if errors.Is(err, brigadier.ErrLimitExceeded) { ... } // the same test
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error returns the host's message (its code when there is none).
func (e *Error) Error() string {
	if e.Message == "" {
		return e.Code
	}
	return e.Message
}

// Is makes errors.Is(err, ErrNotFound) and the like true for any host error
// with that code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code && (t.Message == "" || t.Message == e.Message)
}

// Sentinels for errors.Is, one per host error code.
var (
	ErrInvalidRequest   = &Error{Code: "invalid_request"}
	ErrNotConfigured    = &Error{Code: "not_configured"}
	ErrNotFound         = &Error{Code: "not_found"}
	ErrConflict         = &Error{Code: "conflict"}
	ErrPermissionDenied = &Error{Code: "permission_denied"}
	ErrLimitExceeded    = &Error{Code: "limit_exceeded"}
	ErrUnavailable      = &Error{Code: "unavailable"}
	ErrCancelled        = &Error{Code: "cancelled"}
	ErrUnknownOperation = &Error{Code: "unknown_operation"}
	ErrInternal         = &Error{Code: "internal"}
	ErrNotReady         = &Error{Code: "not_ready"}
)

// call performs operation op with request (nil for none) encoded as JSON and
// returns the reply's JSON (nil when there is none), or the host's *Error.
func call(op uint32, request any) (json.RawMessage, error) {
	var body []byte
	if request != nil {
		var err error
		if body, err = json.Marshal(request); err != nil {
			return nil, &Error{Code: "invalid_request", Message: "the request could not be encoded: " + err.Error()}
		}
	}
	status, reply := rawCall(op, body)
	if status == 0 {
		return reply, nil
	}
	return nil, hostError(status, reply)
}

// hostError decodes a failed call's reply. A status the contract does not
// list is a failure all the same (internal).
func hostError(status uint32, reply []byte) *Error {
	e := &Error{}
	if json.Unmarshal(reply, e) == nil && e.Code != "" {
		return e
	}
	code := "internal"
	if int(status) < len(codeNames) && codeNames[status] != "" {
		code = codeNames[status]
	}
	message := string(reply)
	if message == "" {
		message = "the host call failed with status " + strconv.FormatUint(uint64(status), 10)
	}
	return &Error{Code: code, Message: message}
}

// callInto performs op and decodes its reply into reply.
func callInto(op uint32, request, reply any) error {
	raw, err := call(op, request)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, reply); err != nil {
		return &Error{Code: "internal", Message: fmt.Sprintf("the reply to operation %d could not be decoded: %v", op, err)}
	}
	return nil
}
