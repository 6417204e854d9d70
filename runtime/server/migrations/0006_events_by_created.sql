-- The event list's time filters (createdAfter, createdBefore): a time range
-- is found through this index, not by reading every event after it.
CREATE INDEX events_by_created ON events (created);
