package brigadier

import (
	"encoding/base64"
	"unicode/utf8"
)

// EventWorkspace is the event's workspace: the directory its jobs mount at
// WorkspaceMountPath, for projects with spec.workerTemplate.useWorkspace.
// Paths are relative to it and "/"-separated; absolute paths, ".." and links
// that lead out of it are refused (an *Error with Code "invalid_request" or
// "permission_denied"). Without a workspace every method fails with Code
// "not_configured".
type EventWorkspace struct{}

// Workspace is the event's workspace (brigadier.js's `workspace`).
var Workspace EventWorkspace

// WorkspaceEntry is an entry of a workspace directory.
type WorkspaceEntry struct {
	// Name is the entry's name (not its path).
	Name string `json:"name"`
	// Directory says whether it is a directory.
	Directory bool `json:"directory"`
	// Size in bytes; 0 for a directory.
	Size int64 `json:"size"`
}

type workspaceFile struct {
	Path     string `json:"path"`
	Contents string `json:"contents"`
	Encoding string `json:"encoding,omitempty"`
}

// ReadFile returns a file's contents (at most 8 MiB).
func (EventWorkspace) ReadFile(path string) ([]byte, error) {
	var file workspaceFile
	err := callInto(opWorkspaceRead, struct {
		Path string `json:"path"`
	}{path}, &file)
	if err != nil {
		return nil, err
	}
	return file.bytes()
}

// bytes returns a file's contents as the host sent them: UTF-8 text, or
// base64.
func (file workspaceFile) bytes() ([]byte, error) {
	if file.Encoding == "base64" {
		contents, err := base64.StdEncoding.DecodeString(file.Contents)
		if err != nil {
			return nil, &Error{Code: "internal", Message: "a file's base64 contents could not be decoded: " + err.Error()}
		}
		return contents, nil
	}
	return []byte(file.Contents), nil
}

// WriteFile creates or replaces a file, and the directories above it; the
// workspace's size limit refuses it with Code "limit_exceeded".
func (EventWorkspace) WriteFile(path string, contents []byte) error {
	file := workspaceFile{Path: path, Contents: string(contents), Encoding: "utf8"}
	if !utf8.Valid(contents) {
		file.Contents, file.Encoding = base64.StdEncoding.EncodeToString(contents), "base64"
	}
	_, err := call(opWorkspaceWrite, file)
	return err
}

// List returns a directory's entries, sorted by name; "" (or ".") is the
// workspace itself.
func (EventWorkspace) List(path string) ([]WorkspaceEntry, error) {
	var listing struct {
		Entries []WorkspaceEntry `json:"entries"`
	}
	err := callInto(opWorkspaceList, struct {
		Path string `json:"path"`
	}{path}, &listing)
	return listing.Entries, err
}

// Remove removes a file, or a directory with everything in it.
func (EventWorkspace) Remove(path string) error {
	_, err := call(opWorkspaceRemove, struct {
		Path string `json:"path"`
	}{path})
	return err
}
