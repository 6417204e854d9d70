//! What read commands print: aligned tables like brig's, or the API's
//! object as JSON or YAML (`-o json|yaml`).

use std::borrow::Cow;
use std::io::Write;
use std::time::{Duration, SystemTime};

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

/// A worker's or job's phase, coloured for a person at a terminal (green
/// when it succeeded, red when it did not, yellow on its way), never when
/// stdout is piped or `NO_COLOR` is set (no-color.org).
pub fn phase(phase: &str) -> String {
    use std::io::IsTerminal;
    let colour = crate::colour_on(std::io::stdout().is_terminal());
    let code = match phase {
        "SUCCEEDED" => "32",
        "FAILED" | "ABORTED" | "TIMED_OUT" | "SCHEDULING_FAILED" | "CANCELED" => "31",
        "PENDING" | "STARTING" | "RUNNING" => "33",
        _ => return phase.to_string(),
    };
    if colour {
        format!("\x1b[{code}m{phase}\x1b[0m")
    } else {
        phase.to_string()
    }
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
    // RFC 3339 allows any number of fractional digits; jiff reads nine
    // (nanoseconds) at most, and those past them could not change an age.
    let fraction = text.find('.').map(|dot| {
        let digits = text[dot + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        (dot + 1, digits)
    });
    let text = match fraction {
        Some((start, digits)) if digits > 9 => {
            Cow::Owned(format!("{}{}", &text[..start + 9], &text[start + digits..]))
        }
        _ => Cow::Borrowed(text),
    };
    text.parse::<jiff::Timestamp>().ok().map(SystemTime::from)
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
    use std::time::UNIX_EPOCH;

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
