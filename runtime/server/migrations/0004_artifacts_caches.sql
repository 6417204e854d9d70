-- What jobs keep: an event's artifacts by name and a project's caches by
-- key, each naming its saved tree (the SHA-256 of its manifest, an object
-- in the object storage). No foreign keys: `mizzen run` keeps them for
-- events and projects that are not in its store.
CREATE TABLE artifacts (
    event_id TEXT NOT NULL,
    name TEXT NOT NULL,
    project_id TEXT NOT NULL,
    job TEXT NOT NULL,
    path TEXT NOT NULL,
    tree TEXT NOT NULL,
    size BIGINT NOT NULL,
    files BIGINT NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (event_id, name)
);
CREATE INDEX artifacts_by_created ON artifacts (created);
CREATE INDEX artifacts_by_project ON artifacts (project_id);

CREATE TABLE caches (
    project_id TEXT NOT NULL,
    cache_key TEXT NOT NULL,
    tree TEXT NOT NULL,
    size BIGINT NOT NULL,
    files BIGINT NOT NULL,
    created BIGINT NOT NULL,
    last_used BIGINT NOT NULL,
    PRIMARY KEY (project_id, cache_key)
);
CREATE INDEX caches_by_use ON caches (project_id, last_used);
