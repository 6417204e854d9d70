//! Go's duration syntax, which Brigade's project schema uses for
//! `timeoutDuration`: `^([0-9]+(\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$`.

use std::time::Duration;

/// Parses a Go duration such as `10s`, `1h30m` or `1.5m`. `None` when the
/// text does not match the schema's pattern or overflows.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        // One or more digits, then optionally a dot and more digits.
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty()
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !fraction.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        rest = &rest[number_len..];
        let (unit_seconds, unit_len) = [
            ("ns", 1e-9),
            ("us", 1e-6),
            ("µs", 1e-6),
            ("ms", 1e-3),
            ("s", 1.0),
            ("m", 60.0),
            ("h", 3600.0),
        ]
        .iter()
        .find(|(unit, _)| rest.starts_with(unit))
        .map(|(unit, seconds)| (*seconds, unit.len()))?;
        total += value * unit_seconds;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1.5m"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("3µs"), Some(Duration::from_micros(3)));
        assert_eq!(parse_go_duration("2.s"), Some(Duration::from_secs(2)));
    }

    #[test]
    fn malformed_durations_are_rejected() {
        for bad in ["", "10", "s", "1d", ".5s", "-1s", "1 s", "1s2", "abc"] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }
}
