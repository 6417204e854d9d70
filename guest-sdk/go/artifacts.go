package brigadier

import "encoding/json"

// EventArtifacts are the artifacts the event's jobs saved so far
// (JobArtifacts.Save), as each job ends: listed, and their files read, as
// brigadier.js's `artifacts` does. On an executor that keeps no artifacts
// (Kubernetes, for now) every method fails with Code "invalid_request",
// saying so.
type EventArtifacts struct{}

// Artifacts are the event's artifacts (brigadier.js's `artifacts`).
var Artifacts EventArtifacts

// ArtifactInfo is an artifact of the event, as Artifacts.List returns it.
type ArtifactInfo struct {
	// Name is the name it was saved under.
	Name string `json:"name"`
	// Job is the job that saved it.
	Job string `json:"job"`
	// Path is the path in that job's container it was saved from.
	Path string `json:"path"`
	// SizeBytes is the bytes its files hold.
	SizeBytes int64 `json:"sizeBytes"`
	// Files is how many files it holds.
	Files int64 `json:"files"`
}

// List returns the artifacts the event's jobs saved so far, by name
// (artifact.list). It waits for the host as Job.Wait does: the goroutines of
// a Concurrent group run meanwhile.
func (EventArtifacts) List() ([]ArtifactInfo, error) {
	f, err := submit(opArtifactList, struct{}{})
	if err != nil {
		return nil, err
	}
	out := f.await()
	if out.err != nil {
		return nil, out.err
	}
	var list struct {
		Artifacts []ArtifactInfo `json:"artifacts"`
	}
	if err := json.Unmarshal(out.result, &list); err != nil {
		return nil, &Error{Code: "internal", Message: "the event's artifacts could not be decoded: " + err.Error()}
	}
	return list.Artifacts, nil
}

// ReadFile returns the contents of a file of the artifact name
// (artifact.read), text or not, checked against its SHA-256 as the host reads
// it: path is the file's path within the artifact, "" for an artifact that is
// a single file. At most 8 MiB (a larger file is refused, Code
// "invalid_request"); an artifact or file that is not there is Code
// "not_found". It waits for the host as List does.
func (EventArtifacts) ReadFile(name, path string) ([]byte, error) {
	f, err := submit(opArtifactRead, struct {
		Name string `json:"name"`
		Path string `json:"path"`
	}{name, path})
	if err != nil {
		return nil, err
	}
	out := f.await()
	if out.err != nil {
		return nil, out.err
	}
	var file workspaceFile
	if err := json.Unmarshal(out.result, &file); err != nil {
		return nil, &Error{Code: "internal", Message: "a file of artifact \"" + name + "\" could not be decoded: " + err.Error()}
	}
	return file.bytes()
}
