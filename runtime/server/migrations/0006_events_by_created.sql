-- The event list's time filters (createdAfter, createdBefore): a list
-- filtered by time is read in order of acceptance through this index, so an
-- old range is reached without reading every newer event.
CREATE INDEX events_by_created ON events (created, seq);
