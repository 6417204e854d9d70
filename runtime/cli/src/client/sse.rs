//! Server-sent events as the API sends them (`sse=true`): frames of
//! `event:`, `data:` and `id:` lines ended by a blank line. Status watches
//! and log streams send `event: message` frames whose data is JSON, then
//! `event: done`.

/// One dispatched frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The `event:` field; `message` when the frame has none.
    pub event: String,
    /// The `data:` lines, joined with newlines.
    pub data: String,
    /// The `id:` field, if the frame had one.
    pub id: Option<String>,
}

/// A frame's data is capped so that a server that never ends a line cannot
/// make the client buffer without bound.
const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;

/// Turns chunks of a byte stream into frames; frames and lines (even UTF-8
/// sequences) may be split anywhere between chunks.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes of a line not yet ended.
    line: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one chunk; returns the frames it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Frame>, String> {
        let mut frames = Vec::new();
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if let Some(frame) = self.line_done(&String::from_utf8_lossy(&line)) {
                frames.push(frame);
            }
        }
        self.line.extend_from_slice(rest);
        let pending = self.line.len() + self.data.as_ref().map_or(0, String::len);
        if pending > MAX_PENDING_BYTES {
            return Err(format!(
                "a server-sent event is larger than {MAX_PENDING_BYTES} bytes"
            ));
        }
        Ok(frames)
    }

    /// The stream ended: a frame whose blank line never came is dispatched
    /// anyway (a server that closes right after `data: done` still ends the
    /// stream cleanly).
    pub fn finish(&mut self) -> Option<Frame> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            let line = String::from_utf8_lossy(&line).into_owned();
            if let Some(frame) = self.line_done(&line) {
                return Some(frame);
            }
        }
        self.dispatch()
    }

    fn line_done(&mut self, line: &str) -> Option<Frame> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None; // a comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            _ => {} // `retry` and unknown fields
        }
        None
    }

    fn dispatch(&mut self) -> Option<Frame> {
        let event = self.event.take();
        let data = self.data.take();
        let id = self.id.take();
        if event.is_none() && data.is_none() {
            return None;
        }
        Some(Frame {
            event: event
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "message".into()),
            data: data.unwrap_or_default(),
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(event: &str, data: &str, id: Option<&str>) -> Frame {
        Frame {
            event: event.into(),
            data: data.into(),
            id: id.map(String::from),
        }
    }

    const STREAM: &str = "event: message\ndata: {\"message\":\"héllo\",\"time\":\"2024-01-01T00:00:00Z\"}\nid: 1\n\n\
        : keep-alive\n\n\
        event: message\r\ndata: {\"message\":\"two\"}\r\nid: 2\r\n\r\n\
        event: done\ndata: done\n\n";

    fn expected() -> Vec<Frame> {
        vec![
            frame(
                "message",
                "{\"message\":\"héllo\",\"time\":\"2024-01-01T00:00:00Z\"}",
                Some("1"),
            ),
            frame("message", "{\"message\":\"two\"}", Some("2")),
            frame("done", "done", None),
        ]
    }

    #[test]
    fn whole_stream_in_one_chunk() {
        let mut parser = Parser::new();
        assert_eq!(parser.push(STREAM.as_bytes()).unwrap(), expected());
        assert_eq!(parser.finish(), None);
    }

    #[test]
    fn frames_split_at_every_byte() {
        let bytes = STREAM.as_bytes();
        for size in 1..bytes.len() {
            let mut parser = Parser::new();
            let mut frames = Vec::new();
            for chunk in bytes.chunks(size) {
                frames.extend(parser.push(chunk).unwrap());
            }
            frames.extend(parser.finish());
            assert_eq!(frames, expected(), "chunks of {size} bytes");
        }
    }

    #[test]
    fn split_at_each_position_into_two_chunks() {
        let bytes = STREAM.as_bytes();
        for at in 0..=bytes.len() {
            let mut parser = Parser::new();
            let mut frames = parser.push(&bytes[..at]).unwrap();
            frames.extend(parser.push(&bytes[at..]).unwrap());
            assert_eq!(frames, expected(), "split at {at}");
        }
    }

    #[test]
    fn multi_line_data_default_event_and_fields_without_space() {
        let mut parser = Parser::new();
        let frames = parser
            .push(b"data:first\ndata: second\nretry: 10\nunknown: x\n\n")
            .unwrap();
        assert_eq!(frames, vec![frame("message", "first\nsecond", None)]);
    }

    #[test]
    fn a_last_frame_without_blank_line_is_dispatched_at_the_end() {
        let mut parser = Parser::new();
        assert!(parser.push(b"event: done\ndata: done").unwrap().is_empty());
        assert_eq!(parser.finish(), Some(frame("done", "done", None)));
        assert_eq!(parser.finish(), None);
    }

    #[test]
    fn blank_lines_alone_dispatch_nothing() {
        let mut parser = Parser::new();
        assert!(parser.push(b"\n\n\r\n: comment\n\n").unwrap().is_empty());
    }
}
