-- Mizzen's store, for SQLite and PostgreSQL alike. Times are microseconds
-- since the Unix epoch; documents are JSON text. The one difference between
-- the two databases, the auto-increment key, is written SQLite's way;
-- store.rs rewrites it for PostgreSQL (SERIAL_KEY there).
CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    created BIGINT NOT NULL,
    document TEXT NOT NULL
);
CREATE TABLE secrets (
    project_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (project_id, key)
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    project_id TEXT NOT NULL,
    created BIGINT NOT NULL,
    source TEXT NOT NULL,
    event_type TEXT NOT NULL,
    document TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '',
    phase TEXT NOT NULL,
    started BIGINT,
    ended BIGINT,
    lease_owner TEXT,
    lease_until BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    cancel_requested BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX events_by_phase ON events (phase, seq);
CREATE INDEX events_by_project ON events (project_id, seq);
CREATE TABLE jobs (
    event_id TEXT NOT NULL,
    name TEXT NOT NULL,
    created BIGINT NOT NULL,
    spec TEXT NOT NULL,
    phase TEXT NOT NULL,
    started BIGINT,
    ended BIGINT,
    logs_event_id TEXT NOT NULL DEFAULT '',
    uses_workspace BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (event_id, name)
);
CREATE TABLE logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    job TEXT NOT NULL,
    container TEXT NOT NULL,
    time BIGINT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX logs_by_stream ON logs (event_id, job, container, seq);
CREATE TABLE service_accounts (
    id TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    created BIGINT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    locked BIGINT
);
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    principal_type TEXT NOT NULL,
    principal_id TEXT NOT NULL,
    created BIGINT NOT NULL,
    expires BIGINT NOT NULL
);
CREATE TABLE role_assignments (
    role TEXT NOT NULL,
    principal_type TEXT NOT NULL,
    principal_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    PRIMARY KEY (role, principal_type, principal_id, scope)
);
CREATE TABLE deliveries (
    gateway TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (gateway, delivery_id)
);
-- One row; claimers update it first so that claims are serialised (a row
-- lock in PostgreSQL, the write lock in SQLite).
CREATE TABLE scheduler_lock (
    id BIGINT PRIMARY KEY,
    holder TEXT NOT NULL
);
INSERT INTO scheduler_lock (id, holder) VALUES (1, '');
