//! Cron schedules: a `brigade.sh/cron` subscription may carry `schedule`
//! (standard 5-field cron syntax, or 6 fields with seconds first) and
//! `timeZone` (an IANA name, UTC by default), and every type it lists is
//! then fired by `mizzen server` on that schedule.
//!
//! Parsing and the calendar are [croner]'s (Vixie cron's rules: a day of the
//! month or of the week, `L`, `W`, `#`, `@daily`), over [jiff]'s time zones,
//! so that "03:00 in Europe/Berlin" is 03:00 on both sides of a change of
//! daylight saving time. What a server does with the ticks (which fire, and
//! how often at most) is the server's; this module only says when they are.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// The event source a project's schedules fire as (Brigade's cron event
/// source used it).
pub const CRON_SOURCE: &str = "brigade.sh/cron";

/// The label each fired event carries: its tick, in UTC (RFC 3339, which a
/// label's characters allow; the title has the tick in the schedule's zone).
pub const TICK_LABEL: &str = "tick";

/// The most schedules (types with a schedule) one project may have. Each
/// is looked at by every replica's ticker and fires events its project
/// pays for; Brigade's own projects had one (the nightly clean-up), and
/// sixteen leave room for an hourly, a nightly and a weekly of several
/// kinds without letting one tenant fill the ticker.
pub const MAX_SCHEDULES_PER_PROJECT: usize = 16;

/// A cron expression's length at most: the longest useful one (lists in
/// every field) is under a hundred characters; it is stored and shown.
pub const MAX_EXPRESSION_LEN: usize = 200;

/// The ticks looked at to find a schedule's shortest interval. A cron
/// pattern is a product of its fields' sets, so its gaps repeat with the
/// larger fields: the shortest shows among the first matches of the
/// smallest field that varies, and a window of this many consecutive ticks
/// that spans less than this many minimum intervals holds a shorter gap.
/// Each tick costs microseconds, and only a project's save pays it.
const GAP_SCAN_TICKS: usize = 1_000;

/// Why a schedule is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The expression is not one the cron syntax allows.
    #[error("{expression:?} is not a cron expression: {reason}")]
    Expression {
        /// The expression.
        expression: String,
        /// Why, as the parser says it.
        reason: String,
    },
    /// The expression is valid but names no time that exists.
    #[error("{expression:?} never fires (no date matches it)")]
    Never {
        /// The expression.
        expression: String,
    },
    /// The time zone is not in the IANA database.
    #[error(
        "{name:?} is not a time zone of the IANA database (e.g. UTC, Europe/Berlin, America/New_York)"
    )]
    TimeZone {
        /// The name given.
        name: String,
    },
}

/// A parsed schedule: its expression and time zone as given, and what they
/// mean.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    time_zone: String,
    cron: Cron,
    zone: TimeZone,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression && self.time_zone == other.time_zone
    }
}

impl Eq for Schedule {}

impl Schedule {
    /// Parses `expression` in `time_zone` (UTC when `None`).
    pub fn parse(expression: &str, time_zone: Option<&str>) -> Result<Self, ScheduleError> {
        let refused = |reason: String| ScheduleError::Expression {
            expression: expression.to_string(),
            reason,
        };
        if expression.len() > MAX_EXPRESSION_LEN {
            return Err(refused(format!(
                "longer than {MAX_EXPRESSION_LEN} characters"
            )));
        }
        // Five fields, or six with seconds first; never the seventh (year)
        // some dialects add, which standard cron does not have.
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| refused(e.to_string()))?;
        let time_zone = time_zone.unwrap_or("UTC").to_string();
        let zone = TimeZone::get(&time_zone).map_err(|_| ScheduleError::TimeZone {
            name: time_zone.clone(),
        })?;
        let schedule = Self {
            expression: expression.to_string(),
            time_zone,
            cron,
            zone,
        };
        if schedule.next_after(Timestamp::now()).is_none() {
            return Err(ScheduleError::Never {
                expression: expression.to_string(),
            });
        }
        Ok(schedule)
    }

    /// The expression as given.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone's IANA name (`UTC` when none was given).
    pub fn time_zone(&self) -> &str {
        &self.time_zone
    }

    /// The first tick strictly after `time`, or `None` when there is none
    /// (before the calendar's end, year 5000).
    pub fn next_after(&self, time: Timestamp) -> Option<Zoned> {
        let start = time.to_zoned(self.zone.clone());
        self.cron.find_next_occurrence(&start, false).ok()
    }

    /// The last tick at or before `time`.
    pub fn latest_at_or_before(&self, time: Timestamp) -> Option<Zoned> {
        let start = time.to_zoned(self.zone.clone());
        self.cron.find_previous_occurrence(&start, true).ok()
    }

    /// The shortest interval between consecutive ticks after `from`, among
    /// the first [`GAP_SCAN_TICKS`]; `None` when it fires at most once.
    pub fn shortest_interval(&self, from: Timestamp) -> Option<Duration> {
        let mut previous = self.next_after(from)?;
        let mut shortest: Option<Duration> = None;
        for _ in 1..GAP_SCAN_TICKS {
            let Some(next) = self.next_after(previous.timestamp()) else {
                break;
            };
            let gap = next.timestamp().duration_since(previous.timestamp());
            let gap = Duration::try_from(gap).unwrap_or(Duration::ZERO);
            shortest = Some(shortest.map_or(gap, |s| s.min(gap)));
            if gap <= Duration::from_secs(1) {
                break; // no schedule ticks more often than every second
            }
            previous = next;
        }
        shortest
    }

    /// A fired event's title: `schedule "0 3 * * *" (Europe/Berlin) at
    /// 2026-12-07T03:00:00+01:00`.
    pub fn title(&self, tick: &Zoned) -> String {
        format!(
            "schedule {:?} ({}) at {}",
            self.expression,
            self.time_zone,
            tick.strftime("%Y-%m-%dT%H:%M:%S%:z")
        )
    }
}

/// A tick's value of [`TICK_LABEL`]: the instant in UTC, to the second.
pub fn tick_label(tick: &Zoned) -> String {
    tick.timestamp().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn ticks_follow_the_zones_daylight_saving_time() {
        let nightly = Schedule::parse("0 3 * * *", Some("Europe/Berlin")).unwrap();
        // Berlin moves from +01:00 to +02:00 on 29 March 2026.
        let before = nightly.next_after(at("2026-03-27T12:00:00Z")).unwrap();
        let after = nightly.next_after(before.timestamp()).unwrap();
        let then = nightly.next_after(after.timestamp()).unwrap();
        assert_eq!(
            before.to_string(),
            "2026-03-28T03:00:00+01:00[Europe/Berlin]"
        );
        assert_eq!(
            after.to_string(),
            "2026-03-29T03:00:00+02:00[Europe/Berlin]"
        );
        assert_eq!(then.to_string(), "2026-03-30T03:00:00+02:00[Europe/Berlin]");
        assert_eq!(
            after.timestamp().duration_since(before.timestamp()),
            jiff::SignedDuration::from_hours(23)
        );
        assert_eq!(
            nightly.title(&after),
            "schedule \"0 3 * * *\" (Europe/Berlin) at 2026-03-29T03:00:00+02:00"
        );
        assert_eq!(tick_label(&after), "2026-03-29T01:00:00Z");
        let latest = nightly
            .latest_at_or_before(at("2026-03-29T01:00:00Z"))
            .unwrap();
        assert_eq!(latest, after, "a tick is the latest at its own instant");
    }

    #[test]
    fn expressions_zones_and_intervals() {
        let utc = Schedule::parse("*/15 * * * *", None).unwrap();
        assert_eq!(utc.time_zone(), "UTC");
        assert_eq!(
            utc.shortest_interval(at("2026-01-01T00:07:00Z")),
            Some(Duration::from_secs(15 * 60))
        );
        let seconds = Schedule::parse("*/2 * * * * *", None).unwrap();
        assert_eq!(
            seconds.shortest_interval(Timestamp::now()),
            Some(Duration::from_secs(2))
        );
        // A short gap once a day is still the shortest interval.
        let burst = Schedule::parse("0,1 4 * * *", None).unwrap();
        assert_eq!(
            burst.shortest_interval(Timestamp::now()),
            Some(Duration::from_secs(60))
        );
        assert!(Schedule::parse("@daily", Some("America/New_York")).is_ok());
        for bad in ["", "0 3 * *", "61 * * * *", "0 3 * * * * 2030", "every day"] {
            let err = Schedule::parse(bad, None).unwrap_err();
            assert!(
                matches!(err, ScheduleError::Expression { .. }),
                "{bad}: {err}"
            );
        }
        assert!(matches!(
            Schedule::parse("0 0 30 2 *", None).unwrap_err(),
            ScheduleError::Never { .. }
        ));
        assert_eq!(
            Schedule::parse("0 3 * * *", Some("Mars/Olympus")).unwrap_err(),
            ScheduleError::TimeZone {
                name: "Mars/Olympus".into()
            }
        );
    }
}
