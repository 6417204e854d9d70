-- Values made once by the first server to start and shared by every
-- replica: `job_token_key`, the key (hex) that signs jobs' tokens and their
-- helpers' receipts.
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
