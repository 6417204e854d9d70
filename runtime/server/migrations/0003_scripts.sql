-- Compiled scripts (an inline brigade.wasm, as its base64 text) by the
-- SHA-256 of that text. An event keeps its project's definition as it was
-- when the event was created; a module is megabytes, so the event's copy
-- names it by its hash (sha256:<hex>) and the module is stored once.
CREATE TABLE scripts (
    hash TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
