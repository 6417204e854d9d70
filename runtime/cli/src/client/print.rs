//! What read commands print: aligned tables like brig's, or the API's
//! object as JSON or YAML (`-o json|yaml`).

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::{Failure, failed};

/// How a read command prints its result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns
    #[default]
    Table,
    /// The API's object as JSON
    Json,
    /// The API's object as YAML
    Yaml,
}

/// `-o/--output` of a read command.
#[derive(clap::Args)]
pub struct OutputArg {
    /// How to print the result
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

/// Writes to stdout; a closed pipe (`mizzen event list | head`) is not an
/// error worth reporting.
pub fn out(text: impl std::fmt::Display) {
    let _ = writeln!(std::io::stdout(), "{text}");
}

/// Prints `value` as JSON or YAML, or the table `table` makes of it.
pub fn emit(
    output: Output,
    value: &Value,
    table: impl FnOnce(&Value) -> String,
) -> Result<(), Failure> {
    let text = match output {
        Output::Table => table(value),
        Output::Json => serde_json::to_string_pretty(value)
            .map_err(|e| failed(anyhow::Error::new(e).context("cannot print JSON")))?,
        Output::Yaml => serde_norway::to_string(value)
            .map_err(|e| failed(anyhow::Error::new(e).context("cannot print YAML")))?,
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = stdout.write_all(b"\n");
    }
    Ok(())
}

/// Columns padded to their widest cell, three spaces apart, as brig and
/// kubectl print them.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table's text, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut text = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths[i] - cell.chars().count() + 3;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// A string field at `path` (`["metadata", "id"]`), or "".
pub fn field(value: &Value, path: &[&str]) -> String {
    let mut current = value;
    for key in path {
        match current.get(key) {
            Some(next) => current = next,
            None => return String::new(),
        }
    }
    match current {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// How long ago the RFC 3339 time at `path` was, as `age` prints it; "" when
/// there is no such time.
pub fn age_of(value: &Value, path: &[&str]) -> String {
    let text = field(value, path);
    if text.is_empty() {
        return String::new();
    }
    match parse_rfc3339(&text) {
        Some(time) => age(SystemTime::now(), time),
        None => text,
    }
}

/// Kubernetes' short human duration (brig's AGE): `45s`, `3m`, `5h`, `12d`,
/// `2y`.
pub fn age(now: SystemTime, then: SystemTime) -> String {
    let seconds = match now.duration_since(then) {
        Ok(elapsed) => elapsed.as_secs(),
        // Clocks a little apart: "0s", as Kubernetes prints.
        Err(e) if e.duration() <= Duration::from_secs(1) => 0,
        Err(_) => return "<invalid>".into(),
    };
    let minutes = seconds / 60;
    let hours = minutes / 60;
    if seconds < 60 {
        format!("{seconds}s")
    } else if minutes < 60 {
        format!("{minutes}m")
    } else if hours < 24 {
        format!("{hours}h")
    } else if hours < 24 * 365 {
        format!("{}d", hours / 24)
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

/// Parses an RFC 3339 time (`2024-05-01T12:00:00Z`,
/// `2024-05-01T12:00:00.123456789+02:00`).
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't' | b' ')
        || bytes[13] != b':'
        || bytes[16] != b':'
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut nanos: u32 = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let mut scaled = String::from(&fraction[..digits.min(9)]);
        while scaled.len() < 9 {
            scaled.push('0');
        }
        nanos = scaled.parse().ok()?;
        rest = &fraction[digits..];
    }
    let offset_seconds: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = rest[1..].split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    let seconds = u64::try_from(seconds).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// After a page of a list: how to fetch the next one.
pub fn more_results(list: &Value) -> Option<String> {
    let token = field(list, &["metadata", "continue"]);
    if token.is_empty() {
        return None;
    }
    let remaining = list
        .get("metadata")
        .and_then(|m| m.get("remainingItemCount"))
        .and_then(Value::as_u64);
    Some(match remaining {
        Some(n) => format!("\n{n} more results; fetch them with --continue {token}"),
        None => format!("\nMore results; fetch them with --continue {token}"),
    })
}

/// The `items` of a list.
pub fn items(list: &Value) -> &[Value] {
    list.get("items")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// A list's table, followed by how to get the next page, or `empty` when
/// there are no items.
pub fn list_table(list: &Value, empty: &str, table: impl FnOnce(&[Value]) -> Table) -> String {
    let items = items(list);
    let mut text = if items.is_empty() {
        format!("{empty}\n")
    } else {
        table(items).render()
    };
    if let Some(more) = more_results(list) {
        text.push_str(&more);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let mut table = Table::new(&["ID", "DESCRIPTION", "AGE"]);
        table.row(vec![
            "hello-world".into(),
            "Hello, wörld".into(),
            "3m".into(),
        ]);
        table.row(vec!["x".into(), "".into(), "12d".into()]);
        assert_eq!(
            table.render(),
            "ID            DESCRIPTION    AGE\n\
             hello-world   Hello, wörld   3m\n\
             x                            12d\n"
        );
    }

    #[test]
    fn a_trailing_empty_cell_leaves_no_trailing_spaces() {
        let mut table = Table::new(&["NAME", "PHASE"]);
        table.row(vec!["job".into(), "".into()]);
        assert_eq!(table.render(), "NAME   PHASE\njob\n");
    }

    #[test]
    fn rfc3339_times() {
        let t = |s| {
            parse_rfc3339(s)
                .map(|t| t.duration_since(UNIX_EPOCH).unwrap())
                .unwrap_or_else(|| panic!("{s} parses"))
        };
        assert_eq!(t("1970-01-01T00:00:00Z"), Duration::ZERO);
        assert_eq!(t("2024-02-29T12:30:15Z").as_secs(), 1_709_209_815);
        assert_eq!(
            t("2024-02-29T14:30:15.5+02:00"),
            Duration::new(1_709_209_815, 500_000_000)
        );
        assert_eq!(
            t("2024-02-29T12:30:15.123456789123Z").subsec_nanos(),
            123_456_789
        );
        for bad in [
            "",
            "2024-02-29",
            "2024-02-29T12:30:15",
            "2024-13-01T00:00:00Z",
            "yesterday at noon",
        ] {
            assert!(parse_rfc3339(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn ages() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let ago = |s: u64| age(now, now - Duration::from_secs(s));
        assert_eq!(ago(0), "0s");
        assert_eq!(ago(59), "59s");
        assert_eq!(ago(60 * 5), "5m");
        assert_eq!(ago(3600 * 23), "23h");
        assert_eq!(ago(86_400 * 40), "40d");
        assert_eq!(ago(86_400 * 800), "2y");
        assert_eq!(age(now, now + Duration::from_millis(500)), "0s");
        assert_eq!(age(now, now + Duration::from_secs(60)), "<invalid>");
    }

    #[test]
    fn list_tables_say_how_to_continue() {
        let list = serde_json::json!({
            "metadata": {"continue": "abc", "remainingItemCount": 7},
            "items": [{"metadata": {"id": "p1"}}],
        });
        let text = list_table(&list, "No projects found.", |items| {
            let mut table = Table::new(&["ID"]);
            for item in items {
                table.row(vec![field(item, &["metadata", "id"])]);
            }
            table
        });
        assert_eq!(
            text,
            "ID\np1\n\n7 more results; fetch them with --continue abc\n"
        );
        let empty = serde_json::json!({"metadata": {}, "items": []});
        assert_eq!(list_table(&empty, "None.", |_| Table::new(&[])), "None.\n");
    }
}
