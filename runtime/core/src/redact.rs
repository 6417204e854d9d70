//! Secret redaction: the values of a project's secrets never leave the
//! host in a log line or a summary, and the secrets a script may not read
//! never reach it in its jobs' output; each value is replaced by `***`.
//!
//! A log is a stream of lines, and a value may be split across them (a
//! script printing it in pieces, output cut into chunks): [`LineRedactor`]
//! reads each stream's lines as one text, and holds back a line that ends
//! with the beginning of a value until the next line shows whether the value
//! goes on.

use std::borrow::Cow;

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::nfa::noncontiguous;
use aho_corasick::{AhoCorasick, AhoCorasickKind, Anchored, MatchKind};

use crate::log::{LogRecord, LogSource};

/// What replaces a secret's value.
pub const MASK: &str = "***";

/// Replaces the values of a project's secrets in text.
///
/// Building one takes time and memory linear in the values' total length
/// (a value of 64 KiB of one repeated byte took 13 s when the matcher was
/// left to choose a DFA, whose construction walks failure links once per
/// state and byte class); a server builds one per version of a project's
/// secrets, off its runtime threads.
#[derive(Debug, Default)]
pub struct Redactor {
    values: Values,
}

#[derive(Debug, Default)]
enum Values {
    /// The project has no secrets.
    #[default]
    None,
    /// Every value at once.
    Matcher {
        /// Finds whole values, the longest where several start at one place.
        whole: AhoCorasick,
        /// Finds the longest end of a text that begins a value (boxed: the
        /// automaton is large beside the other variants).
        beginnings: Box<Beginnings>,
    },
    /// The values could not be compiled into a matcher (beyond its size
    /// limits): every line is hidden whole rather than shown unmasked.
    Unmatchable,
}

/// The values' trie with the failure links of Aho-Corasick's classic
/// (overlapping) automaton: after reading a text, its state is the longest
/// end of the text that is the beginning of a value, and `depth` says how
/// long that end is. One pass over a text answers what comparing every end
/// with every value answered in time quadratic in the line.
#[derive(Debug)]
struct Beginnings {
    automaton: noncontiguous::NFA,
    /// The length of the beginning each state stands for, by state.
    depth: Vec<u32>,
}

impl Beginnings {
    fn new(values: &[&str]) -> Result<Self, aho_corasick::BuildError> {
        let automaton = noncontiguous::Builder::new()
            .match_kind(MatchKind::Standard)
            .prefilter(false)
            .build(values)?;
        let start = Self::start(&automaton);
        let mut depth = Vec::new();
        for value in values {
            // Each beginning of a value is the state its bytes lead to from
            // the start (the trie's own transitions, no failure taken).
            let mut state = start;
            for (length, &byte) in value.as_bytes().iter().enumerate() {
                state = automaton.next_state(Anchored::No, state, byte);
                let at = state.as_usize();
                if depth.len() <= at {
                    depth.resize(at + 1, 0);
                }
                // At most a value's length, and values are capped far below
                // u32::MAX (`project::MAX_SECRET_VALUE_BYTES`).
                depth[at] = u32::try_from(length + 1).unwrap_or(u32::MAX);
            }
        }
        Ok(Self { automaton, depth })
    }

    fn start(automaton: &noncontiguous::NFA) -> StateID {
        automaton
            .start_state(Anchored::No)
            .unwrap_or_else(|_| unreachable!("the automaton is built for unanchored searches"))
    }

    /// The length of the longest end of `text` that is the beginning of a
    /// value (0 when none is).
    fn open_end(&self, text: &str) -> usize {
        let mut state = Self::start(&self.automaton);
        for &byte in text.as_bytes() {
            state = self.automaton.next_state(Anchored::No, state, byte);
        }
        self.depth.get(state.as_usize()).map_or(0, |&d| d as usize)
    }
}

impl Redactor {
    /// A redactor for these secret values (empty ones are ignored: they
    /// would match everywhere and hide nothing).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a String>) -> Self {
        let plain: Vec<&str> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .map(String::as_str)
            .collect();
        if plain.is_empty() {
            return Self::default();
        }
        // One pass over the text, the longest value winning where several
        // start at the same place: masking value by value re-read the masks
        // already written, so values such as "*" and "**" grew a line
        // exponentially (found by the `redactor` fuzz target). A contiguous
        // NFA, not a DFA: the DFA the builder picks for up to 100 values
        // took time quadratic in a value of one repeated byte to build.
        let whole = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .build(&plain);
        let values = match whole.and_then(|whole| Ok((whole, Beginnings::new(&plain)?))) {
            Ok((whole, beginnings)) => Values::Matcher {
                whole,
                beginnings: Box::new(beginnings),
            },
            Err(e) => {
                tracing::error!(error = %e, "secret values cannot be matched; every log line of the project is hidden");
                Values::Unmatchable
            }
        };
        Self { values }
    }

    /// `text` with every secret value replaced by [`MASK`].
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let values = match &self.values {
            Values::None => return Cow::Borrowed(text),
            Values::Unmatchable => return Cow::Borrowed(MASK),
            Values::Matcher { whole, .. } => whole,
        };
        if !values.is_match(text) {
            return Cow::Borrowed(text);
        }
        let mut masked = String::with_capacity(text.len());
        values.replace_all_with(text, &mut masked, |_, _, masked| {
            masked.push_str(MASK);
            true
        });
        Cow::Owned(masked)
    }
}

impl Redactor {
    /// `bytes` (a file's, text or not) with every secret value replaced by
    /// [`MASK`].
    pub fn redact_bytes<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let values = match &self.values {
            Values::None => return Cow::Borrowed(bytes),
            Values::Unmatchable => return Cow::Borrowed(MASK.as_bytes()),
            Values::Matcher { whole, .. } => whole,
        };
        if !values.is_match(bytes) {
            return Cow::Borrowed(bytes);
        }
        let mut masked = Vec::with_capacity(bytes.len());
        values.replace_all_with_bytes(bytes, &mut masked, |_, _, masked| {
            masked.extend_from_slice(MASK.as_bytes());
            true
        });
        Cow::Owned(masked)
    }

    /// `value` with every secret value masked in its strings and its
    /// objects' keys.
    pub fn redact_json(&self, value: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::String(text) => Value::String(self.redact(text).into_owned()),
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| self.redact_json(v)).collect())
            }
            Value::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(key, v)| (self.redact(key).into_owned(), self.redact_json(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// Redacts the lines of one stream (the worker's log, or one container's
/// output) where a secret value may continue from one line to the next.
///
/// Consecutive lines are matched as one text without their line breaks: a
/// value printed in pieces is masked in every line that holds a piece. A line
/// whose end could be the start of a value is held until the next line (or
/// [`LineRedactor::finish`]) decides; at most as many lines as a value is
/// long are ever held.
#[derive(Debug)]
pub struct LineRedactor<T> {
    redactor: std::sync::Arc<Redactor>,
    /// Lines held back, unmasked, with what travels with them.
    held: Vec<(String, T)>,
}

impl<T> LineRedactor<T> {
    /// A stream redacted with `redactor`'s values.
    pub fn new(redactor: std::sync::Arc<Redactor>) -> Self {
        Self {
            redactor,
            held: Vec::new(),
        }
    }

    /// Takes the stream's next line (and whatever travels with it, such as
    /// its time); returns the lines now safe to pass on, masked, in order.
    pub fn push(&mut self, line: String, with: T) -> Vec<(String, T)> {
        let (whole, beginnings) = match &self.redactor.values {
            Values::None => return vec![(line, with)],
            Values::Unmatchable => return vec![(MASK.to_string(), with)],
            Values::Matcher { whole, beginnings } => (whole, beginnings),
        };
        self.held.push((line, with));
        // The held lines come after the beginning of a value, so together
        // they are shorter than the longest value: the text is the new line
        // and at most that much.
        let text = joined(&self.held);
        let matches = spans(whole, &text);
        // Where a value may have begun and not yet ended: the earliest
        // start, after the last whole value, of an end of the text that is
        // the beginning of some value. (It is a proper beginning: a whole
        // value there would have been found.)
        let searched_from = matches.last().map_or(0, |&(_, end)| end);
        let open = match beginnings.open_end(&text[searched_from..]) {
            0 => None,
            length => Some(text.len() - length),
        };
        let lines = std::mem::take(&mut self.held);
        let mut released = Vec::with_capacity(lines.len());
        let mut start = 0;
        for (line, with) in lines {
            let end = start + joined_len(&line);
            if open.is_some_and(|open| open < end) {
                // This line holds the open beginning (or comes after it).
                self.held.push((line, with));
            } else {
                released.push((mask_line(&line, start, &matches), with));
            }
            start = end;
        }
        released
    }

    /// The lines still held when the stream ends, masked.
    pub fn finish(&mut self) -> Vec<(String, T)> {
        let matches = match &self.redactor.values {
            Values::Matcher { whole, .. } => spans(whole, &joined(&self.held)),
            _ => Vec::new(),
        };
        let mut start = 0;
        std::mem::take(&mut self.held)
            .into_iter()
            .map(|(line, with)| {
                let masked = mask_line(&line, start, &matches);
                start += joined_len(&line);
                (masked, with)
            })
            .collect()
    }
}

/// The container name of the worker's own stream (its `console` and
/// `logger` lines), beside each job container's.
pub const WORKER_STREAM: &str = "worker";

/// A stream of an event's log: the job (empty for the worker) and the
/// container ([`WORKER_STREAM`] for the worker).
pub type StreamId = (String, String);

/// The stream `record` belongs to and its text as it is kept: the worker's
/// line as Brigade printed it, or the container's line as it printed it.
pub fn stream_of(record: &LogRecord) -> (StreamId, String) {
    let text = match record.source {
        LogSource::Container(_) => record.message.clone(),
        LogSource::Console | LogSource::Logger => record.to_line(),
    };
    (stream_id(record), text)
}

/// The stream `record` belongs to.
pub fn stream_id(record: &LogRecord) -> StreamId {
    match &record.source {
        LogSource::Container(sidecar) => {
            let job = record.job.clone().unwrap_or_default();
            let container = sidecar.clone().unwrap_or_else(|| job.clone());
            (job, container)
        }
        LogSource::Console | LogSource::Logger => (String::new(), WORKER_STREAM.to_string()),
    }
}

/// Every stream of one event's log, each read as one text by its own
/// [`LineRedactor`]: what the server stores and what `mizzen run` prints and
/// keeps are masked by this one implementation.
#[derive(Debug)]
pub struct StreamRedactor<T> {
    redactor: std::sync::Arc<Redactor>,
    streams: std::collections::HashMap<StreamId, LineRedactor<T>>,
}

impl<T> StreamRedactor<T> {
    /// An event's streams, redacted with `redactor`'s values.
    pub fn new(redactor: std::sync::Arc<Redactor>) -> Self {
        Self {
            redactor,
            streams: std::collections::HashMap::new(),
        }
    }

    /// The values this redacts.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Takes a stream's next line; returns that stream's lines now safe to
    /// pass on, masked, in order (see [`LineRedactor::push`]).
    pub fn push(&mut self, stream: &StreamId, line: String, with: T) -> Vec<(String, T)> {
        if !self.streams.contains_key(stream) {
            let lines = LineRedactor::new(self.redactor.clone());
            self.streams.insert(stream.clone(), lines);
        }
        self.streams
            .get_mut(stream)
            .map(|lines| lines.push(line, with))
            .unwrap_or_default()
    }

    /// The lines every stream still holds, masked: the log has ended.
    pub fn finish(&mut self) -> Vec<(StreamId, String, T)> {
        std::mem::take(&mut self.streams)
            .into_iter()
            .flat_map(|(stream, mut lines)| {
                lines
                    .finish()
                    .into_iter()
                    .map(move |(line, with)| (stream.clone(), line, with))
            })
            .collect()
    }
}

/// The lines as one text without their line breaks, those inside a line
/// (one message of several lines) included.
fn joined<T>(lines: &[(String, T)]) -> String {
    lines
        .iter()
        .flat_map(|(line, _)| line.split('\n'))
        .collect()
}

/// A line's length in the [`joined`] text.
fn joined_len(line: &str) -> usize {
    line.len() - line.matches('\n').count()
}

/// Where `matcher` finds values in `text`: start and end of each.
fn spans(matcher: &AhoCorasick, text: &str) -> Vec<(usize, usize)> {
    matcher
        .find_iter(text)
        .map(|m| (m.start(), m.end()))
        .collect()
}

/// `line`, which starts at `offset` of the [`joined`] text with `matches`,
/// with each part of a match inside it replaced by [`MASK`]; its own line
/// breaks stay.
fn mask_line(line: &str, offset: usize, matches: &[(usize, usize)]) -> String {
    let mut start = offset;
    let pieces: Vec<String> = line
        .split('\n')
        .map(|piece| {
            let masked = mask_segment(piece, start, matches);
            start += piece.len();
            masked
        })
        .collect();
    pieces.join("\n")
}

/// `piece`, which starts at `offset` of a text with `matches`, with each part
/// of a match inside it replaced by [`MASK`].
fn mask_segment(piece: &str, offset: usize, matches: &[(usize, usize)]) -> String {
    let end = offset + piece.len();
    let mut masked = String::with_capacity(piece.len());
    let mut at = offset;
    for &(match_start, match_end) in matches {
        if match_end <= offset || match_start >= end {
            continue;
        }
        let (from, to) = (match_start.max(offset), match_end.min(end));
        masked.push_str(&piece[at - offset..from - offset]);
        masked.push_str(MASK);
        at = to;
    }
    masked.push_str(&piece[at - offset..]);
    masked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_value_is_masked() {
        let secrets = [
            "hunter2".to_string(),
            "hunter2-extended".to_string(),
            String::new(),
        ];
        let redactor = Redactor::new(&secrets);
        assert_eq!(
            redactor.redact("token hunter2-extended and hunter2 and hunter"),
            "token *** and *** and hunter"
        );
        assert!(matches!(redactor.redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_strings_and_keys_are_masked() {
        let redactor = Redactor::new(&["hunter2".to_string()]);
        let spec = serde_json::json!({"image": "registry/hunter2:1", "command": ["echo", "hunter2"],
            "sidecars": {"hunter2": {"timeout": 3}}});
        assert_eq!(
            redactor.redact_json(&spec),
            serde_json::json!({"image": "registry/***:1", "command": ["echo", "***"],
                "sidecars": {"***": {"timeout": 3}}})
        );
    }

    #[test]
    fn values_that_spell_the_mask_do_not_grow_the_line() {
        // The `redactor` fuzz target's finding: each of these values used
        // to be masked in turn over the previous masks, tripling the line.
        let secrets: Vec<String> = (0..40).map(|i| "*".repeat(1 + i % 3)).collect();
        let redactor = Redactor::new(&secrets);
        assert_eq!(redactor.redact("a*b**c"), "a***b***c");
    }

    fn stream(secrets: &[&str], lines: &[&str]) -> Vec<String> {
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        let mut stream = LineRedactor::new(std::sync::Arc::new(Redactor::new(&secrets)));
        let mut out = Vec::new();
        for line in lines {
            out.extend(
                stream
                    .push(line.to_string(), ())
                    .into_iter()
                    .map(|(l, ())| l),
            );
        }
        out.extend(stream.finish().into_iter().map(|(l, ())| l));
        out
    }

    #[test]
    fn a_value_split_across_lines_is_masked_in_every_piece() {
        assert_eq!(
            stream(&["hunter2"], &["token: hun", "ter", "2 done", "next"]),
            ["token: ***", "***", "*** done", "next"]
        );
        // Lines of one message.
        assert_eq!(
            stream(&["hunter2"], &["token: hun\nter2 done"]),
            ["token: ***\n*** done"]
        );
        // One character per line.
        assert_eq!(
            stream(&["abc"], &["a", "b", "c", "d"]),
            ["***", "***", "***", "d"]
        );
    }

    #[test]
    fn a_line_that_only_looks_like_a_beginning_is_released_unchanged() {
        assert_eq!(
            stream(&["hunter2"], &["on the hun", "t for food"]),
            ["on the hun", "t for food"]
        );
        // Held until the stream ends, then passed on as it was.
        assert_eq!(stream(&["hunter2"], &["a hunt"]), ["a hunt"]);
    }

    #[test]
    fn a_line_is_held_only_while_a_value_may_continue() {
        let secrets = vec!["hunter2".to_string()];
        let mut lines = LineRedactor::new(std::sync::Arc::new(Redactor::new(&secrets)));
        assert_eq!(lines.push("plain".into(), 1).len(), 1);
        assert!(lines.push("x hunt".into(), 2).is_empty(), "held");
        let released = lines.push("er2!".into(), 3);
        assert_eq!(
            released,
            [("x ***".to_string(), 2), ("***!".to_string(), 3)]
        );
        // A whole value followed by the start of another.
        assert_eq!(stream(&["aa"], &["xa", "a", "b"]), ["x***", "***", "b"]);
    }

    #[test]
    fn the_open_end_is_the_longest_end_that_begins_a_value() {
        // Against the definition, over every text of up to 6 letters of
        // "ab" and values that overlap themselves and each other.
        let values = ["aab", "abab", "b", "bba", "aaaa"];
        let owned: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        let Values::Matcher { beginnings, .. } = Redactor::new(&owned).values else {
            panic!("a matcher");
        };
        for len in 0..=6 {
            for bits in 0..(1u32 << len) {
                let text: String = (0..len)
                    .map(|i| if bits & (1 << i) == 0 { 'a' } else { 'b' })
                    .collect();
                let expected = (0..=text.len())
                    .map(|at| &text[at..])
                    .find(|tail| values.iter().any(|v| v.starts_with(tail)))
                    .map_or(0, str::len);
                assert_eq!(beginnings.open_end(&text), expected, "{text:?}");
            }
        }
    }

    /// A value of one repeated byte at the largest size a secret may have:
    /// building the matcher took time quadratic in it (13 s of CPU for
    /// 64 KiB), and so did finding whether a line ends with its beginning
    /// (0.1 s for each line of 48 KiB).
    /// Four times the length must cost about four times as much, not
    /// sixteen; the best of a few runs keeps a busy machine's noise out.
    #[test]
    fn a_repetitive_value_costs_time_linear_in_its_length() {
        // The thread's CPU time: a loaded machine (CI runs the suites side
        // by side) slows the clock, not the work.
        let cpu_time = || {
            let time = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
            std::time::Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
        };
        let cost = |len: usize| {
            let value = "v".repeat(len);
            let line = "v".repeat(len - 1);
            (0..5)
                .map(|_| {
                    let started = cpu_time();
                    let redactor = std::sync::Arc::new(Redactor::new([&value]));
                    let mut lines = LineRedactor::new(redactor.clone());
                    assert!(lines.push(line.clone(), ()).is_empty(), "held");
                    assert_eq!(lines.push("v!".into(), ()).len(), 2);
                    // Every end of this line begins like the value and then
                    // differs: comparing each end with the value was
                    // quadratic in the line.
                    let almost = format!("{}y", &line[1..]);
                    assert_eq!(lines.push(almost, ()).len(), 1);
                    assert_eq!(redactor.redact(&value), MASK);
                    cpu_time() - started
                })
                .min()
                .unwrap_or_default()
        };
        let max = crate::project::MAX_SECRET_VALUE_BYTES;
        let (quarter, whole) = (cost(max / 4), cost(max));
        let ratio = whole.as_secs_f64() / quarter.as_secs_f64().max(1e-9);
        eprintln!(
            "{} KiB: {quarter:?}; {} KiB: {whole:?}; ratio {ratio:.1}",
            max / 4 / 1024,
            max / 1024
        );
        assert!(
            ratio < 10.0,
            "4x the value's length cost {ratio:.1}x the time ({quarter:?} -> {whole:?})"
        );
    }

    #[test]
    fn overlapping_values_are_masked_where_they_start_first() {
        let secrets = ["abc".to_string(), "bcd".to_string(), "cd".to_string()];
        let redactor = Redactor::new(&secrets);
        assert_eq!(redactor.redact("xabcdx bcd"), "x***dx ***");
    }
}
