-- Projects' cron schedules (`brigade.sh/cron` subscriptions with a
-- `schedule`): one row per scheduled type, written with the project's
-- definition. `since` is when this schedule (expression and zone) appeared:
-- no tick before it fires. `next_tick` is the first tick not yet fired,
-- which the replicas' tickers look for (`schedules_by_next`).
CREATE TABLE schedules (
    project_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    expression TEXT NOT NULL,
    time_zone TEXT NOT NULL,
    since BIGINT NOT NULL,
    next_tick BIGINT NOT NULL,
    last_tick BIGINT,
    last_event TEXT,
    PRIMARY KEY (project_id, event_type)
);
CREATE INDEX schedules_by_next ON schedules (next_tick);

-- The ticks fired: the key decides which replica fires a tick (the one
-- whose insert does not conflict), in the transaction that stores its
-- event. Older ticks of a schedule are pruned as newer ones fire.
CREATE TABLE schedule_ticks (
    project_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    tick BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    fired BIGINT NOT NULL,
    PRIMARY KEY (project_id, event_type, tick)
);
