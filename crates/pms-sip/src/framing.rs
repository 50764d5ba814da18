//! Message framing: cutting a TCP/TLS byte stream into SIP messages by `Content-Length`
//! (RFC 3261 §18.3), recognising RFC 5626 CRLF keep-alives, and checking UDP datagrams.
//!
//! Invariants:
//! - Invariant: frames come out in stream order; a byte is never part of two frames.
//! - Invariant: as long as the caller drains [`StreamFramer::next_frame`] until it returns
//!   `None` after each [`StreamFramer::push`], the framer holds at most
//!   `header_bytes_max + body_bytes_max` bytes plus the last pushed chunk.
//! - Invariant: after a [`FramingError`] the framer is poisoned: every later call returns the
//!   same kind of error (the stream cannot be resynchronised; the caller answers 400 and
//!   closes).
//! - Invariant: the framer only looks at the header block to find `Content-Length`; full
//!   validation is [`crate::message::parse`]'s job.

use pms_types::limits::SIP_UDP_DATAGRAM_BYTES_MAX;

use crate::text::{find_bytes, snippet};

/// A declared body above `BODY_HARD_LIMIT_FACTOR × body_bytes_max` is treated as an attack or
/// a desynchronised stream: the framer refuses to skip that many bytes.
pub const BODY_HARD_LIMIT_FACTOR: usize = 16;

/// One unit cut from a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// One complete SIP message, head and body.
    Message(Vec<u8>),
    /// RFC 5626 §4.4.1 ping (CRLFCRLF); the caller answers with a single CRLF pong.
    KeepAlivePing,
    /// RFC 5626 pong (a lone CRLF).
    KeepAlivePong,
    /// A head whose `Content-Length` exceeds `body_bytes_max`. The framer discards the body
    /// itself so the connection can continue; the caller answers 413 using `head`.
    Oversized {
        head: Vec<u8>,
        declared_body_len: usize,
    },
}

/// Unrecoverable stream errors. The caller answers 400 (using [`FramingError::head`] if it is
/// available) and closes the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("SIP header block exceeds {header_bytes_max} bytes")]
    HeaderTooLarge {
        header_bytes_max: usize,
        /// The complete header lines that fit in the limit (so a 400 can still be addressed).
        head: Vec<u8>,
    },
    #[error("message on a stream transport has no Content-Length")]
    MissingContentLength { head: Vec<u8> },
    #[error("invalid Content-Length {value:?}")]
    InvalidContentLength { head: Vec<u8>, value: String },
    #[error(
        "declared body of {declared_body_len} bytes exceeds the hard limit of {hard_limit_bytes}"
    )]
    BodyHardLimit {
        head: Vec<u8>,
        declared_body_len: usize,
        hard_limit_bytes: usize,
    },
    #[error("datagram of {len} bytes exceeds {max} bytes")]
    DatagramTooLarge { len: usize, max: usize },
    #[error("datagram has no complete header block")]
    IncompleteHead,
    #[error(
        "Content-Length {declared_body_len} exceeds the {available} body bytes in the datagram"
    )]
    ContentLengthBeyondDatagram {
        declared_body_len: usize,
        available: usize,
    },
}

impl FramingError {
    /// The message head, when the error was found after the head was complete (so the caller
    /// can build a 400 response with the right Via/Call-ID).
    pub fn head(&self) -> Option<&[u8]> {
        match self {
            FramingError::MissingContentLength { head }
            | FramingError::HeaderTooLarge { head, .. }
            | FramingError::InvalidContentLength { head, .. }
            | FramingError::BodyHardLimit { head, .. } => Some(head),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for a complete head; `scanned` bytes of the buffer are known to hold no
    /// CRLFCRLF start (so the search resumes there: byte-at-a-time input stays linear).
    Head {
        scanned: usize,
    },
    /// Head of `head_len` bytes complete; waiting for `body_len` more.
    Body {
        head_len: usize,
        body_len: usize,
    },
    /// Skipping the body of an oversized message.
    Discard {
        remaining: usize,
    },
    Failed(FramingError),
}

/// Content-Length framer for one stream connection.
#[derive(Debug)]
pub struct StreamFramer {
    header_bytes_max: usize,
    body_bytes_max: usize,
    buffer: Vec<u8>,
    state: State,
}

impl StreamFramer {
    pub fn new(header_bytes_max: usize, body_bytes_max: usize) -> Self {
        StreamFramer {
            header_bytes_max,
            body_bytes_max,
            buffer: Vec::new(),
            state: State::Head { scanned: 0 },
        }
    }

    /// Appends bytes read from the connection. Call [`Self::next_frame`] until it returns
    /// `None` afterwards.
    pub fn push(&mut self, bytes: &[u8]) {
        if let State::Discard { remaining } = &mut self.state {
            let skipped = bytes.len().min(*remaining);
            *remaining -= skipped;
            let rest = bytes.get(skipped..).unwrap_or_default();
            if *remaining == 0 {
                self.state = State::Head { scanned: 0 };
            }
            self.buffer.extend_from_slice(rest);
            return;
        }
        if matches!(self.state, State::Failed(_)) {
            return;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes held but not yet returned in a frame.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len()
    }

    /// A client waiting for a pong may find a lone CRLF held back (it could be the start of a
    /// ping); this consumes it and returns `true` if the buffer is exactly CRLF.
    pub fn take_lone_crlf(&mut self) -> bool {
        if matches!(self.state, State::Head { .. }) && self.buffer == b"\r\n" {
            self.buffer.clear();
            self.state = State::Head { scanned: 0 };
            return true;
        }
        false
    }

    /// The next complete frame, `None` if more bytes are needed.
    /// The buffered header lines that end within `header_bytes_max`, up to the last CRLF.
    fn complete_lines_within_limit(&self) -> Vec<u8> {
        let window = self
            .buffer
            .get(..self.header_bytes_max)
            .unwrap_or(&self.buffer);
        let end = window
            .windows(2)
            .rposition(|pair| pair == b"\r\n")
            .map_or(0, |at| at + 2);
        window.get(..end).unwrap_or_default().to_vec()
    }

    pub fn next_frame(&mut self) -> Option<Result<Frame, FramingError>> {
        loop {
            match self.state.clone() {
                State::Failed(error) => return Some(Err(error)),
                State::Discard { remaining } => {
                    let skipped = self.buffer.len().min(remaining);
                    self.buffer.drain(..skipped);
                    if skipped < remaining {
                        self.state = State::Discard {
                            remaining: remaining - skipped,
                        };
                        return None;
                    }
                    self.state = State::Head { scanned: 0 };
                }
                State::Body { head_len, body_len } => {
                    let total = head_len.saturating_add(body_len);
                    if self.buffer.len() < total {
                        return None;
                    }
                    let rest = self.buffer.split_off(total);
                    let message = std::mem::replace(&mut self.buffer, rest);
                    self.state = State::Head { scanned: 0 };
                    return Some(Ok(Frame::Message(message)));
                }
                State::Head { scanned } => return self.next_from_head(scanned),
            }
        }
    }

    fn fail(&mut self, error: FramingError) -> Option<Result<Frame, FramingError>> {
        self.buffer = Vec::new();
        self.state = State::Failed(error.clone());
        Some(Err(error))
    }

    fn next_from_head(&mut self, scanned: usize) -> Option<Result<Frame, FramingError>> {
        // Keep-alives are only recognised between messages (scanned == 0 means nothing of a
        // message head has been seen yet).
        if scanned == 0 {
            if self.buffer.starts_with(b"\r\n\r\n") {
                self.buffer.drain(..4);
                return Some(Ok(Frame::KeepAlivePing));
            }
            if self.buffer.starts_with(b"\r\n") {
                match self.buffer.get(2..4) {
                    // Could still become a ping: wait for more bytes.
                    None => return None,
                    Some(b"\r\n") => {}
                    Some(_) => {
                        self.buffer.drain(..2);
                        return Some(Ok(Frame::KeepAlivePong));
                    }
                }
            }
            if self.buffer == b"\r" {
                return None;
            }
        }
        let Some(end) = find_bytes(&self.buffer, b"\r\n\r\n", scanned) else {
            if self.buffer.len() > self.header_bytes_max {
                let head = self.complete_lines_within_limit();
                return self.fail(FramingError::HeaderTooLarge {
                    header_bytes_max: self.header_bytes_max,
                    head,
                });
            }
            self.state = State::Head {
                scanned: self.buffer.len().saturating_sub(3),
            };
            return None;
        };
        let head_len = end + 4;
        if head_len > self.header_bytes_max {
            let head = self.complete_lines_within_limit();
            return self.fail(FramingError::HeaderTooLarge {
                header_bytes_max: self.header_bytes_max,
                head,
            });
        }
        let head = self.buffer.get(..head_len).unwrap_or_default().to_vec();
        let body_len = match content_length(&head) {
            Ok(Some(body_len)) => body_len,
            Ok(None) => return self.fail(FramingError::MissingContentLength { head }),
            Err(value) => return self.fail(FramingError::InvalidContentLength { head, value }),
        };
        let hard_limit_bytes = self.body_bytes_max.saturating_mul(BODY_HARD_LIMIT_FACTOR);
        if body_len > hard_limit_bytes {
            return self.fail(FramingError::BodyHardLimit {
                head,
                declared_body_len: body_len,
                hard_limit_bytes,
            });
        }
        if body_len > self.body_bytes_max {
            self.buffer.drain(..head_len);
            self.state = State::Discard {
                remaining: body_len,
            };
            // Drop what is already buffered of the body now, so the buffer bound holds.
            let skipped = self.buffer.len().min(body_len);
            self.buffer.drain(..skipped);
            self.state = if skipped == body_len {
                State::Head { scanned: 0 }
            } else {
                State::Discard {
                    remaining: body_len - skipped,
                }
            };
            return Some(Ok(Frame::Oversized {
                head,
                declared_body_len: body_len,
            }));
        }
        self.state = State::Body { head_len, body_len };
        self.next_frame()
    }
}

/// The value of `Content-Length` (or compact `l`) in a head.
/// `Ok(None)`: absent. `Err(value)`: unparsable, or two headers that disagree.
pub fn content_length(head: &[u8]) -> Result<Option<usize>, String> {
    let mut found: Option<usize> = None;
    // Lines are split on LF; a CR before it is trimmed with the rest of the whitespace.
    // Continuation lines (folding) of Content-Length are not supported: a folded value is
    // rejected as invalid by the digit check below.
    for line in head.split(|byte| *byte == b'\n') {
        let Some(colon) = line.iter().position(|byte| *byte == b':') else {
            continue;
        };
        let name = line.get(..colon).unwrap_or_default().trim_ascii();
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        if line
            .first()
            .is_some_and(|byte| *byte == b' ' || *byte == b'\t')
        {
            continue; // a continuation line that happens to contain "l:"
        }
        let value = line.get(colon + 1..).unwrap_or_default().trim_ascii();
        let text = String::from_utf8_lossy(value);
        if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
            return Err(snippet(&text));
        }
        let parsed: usize = text.parse().map_err(|_| snippet(&text))?;
        match found {
            Some(previous) if previous != parsed => return Err(snippet(&text)),
            _ => found = Some(parsed),
        }
    }
    Ok(found)
}

/// One UDP datagram, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatagramFrame {
    /// A SIP message; the body is cut to `Content-Length` when present.
    Message(Vec<u8>),
    /// A datagram of only CR/LF bytes (some clients keep NAT bindings open this way).
    KeepAlive,
    /// A message whose body exceeds `body_bytes_max`: answer 413.
    Oversized {
        head: Vec<u8>,
        declared_body_len: usize,
    },
}

/// Checks one UDP datagram (RFC 3261 §18.3): `Content-Length` is optional; when present it must
/// not exceed the bytes in the datagram, and extra bytes after it are dropped.
pub fn datagram(bytes: &[u8], body_bytes_max: usize) -> Result<DatagramFrame, FramingError> {
    if bytes.len() > SIP_UDP_DATAGRAM_BYTES_MAX {
        return Err(FramingError::DatagramTooLarge {
            len: bytes.len(),
            max: SIP_UDP_DATAGRAM_BYTES_MAX,
        });
    }
    if !bytes.is_empty() && bytes.iter().all(|byte| *byte == b'\r' || *byte == b'\n') {
        return Ok(DatagramFrame::KeepAlive);
    }
    let end = find_bytes(bytes, b"\r\n\r\n", 0).ok_or(FramingError::IncompleteHead)?;
    let head_len = end + 4;
    let head = bytes.get(..head_len).unwrap_or_default();
    let available = bytes.len() - head_len;
    let body_len = match content_length(head) {
        Ok(Some(declared)) => {
            if declared > available {
                return Err(FramingError::ContentLengthBeyondDatagram {
                    declared_body_len: declared,
                    available,
                });
            }
            declared
        }
        Ok(None) => available,
        Err(value) => {
            return Err(FramingError::InvalidContentLength {
                head: head.to_vec(),
                value,
            });
        }
    };
    if body_len > body_bytes_max {
        return Ok(DatagramFrame::Oversized {
            head: head.to_vec(),
            declared_body_len: body_len,
        });
    }
    Ok(DatagramFrame::Message(
        bytes
            .get(..head_len + body_len)
            .unwrap_or_default()
            .to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &[u8] = b"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TCP a;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n";
    const MESSAGE: &[u8] = "MESSAGE sip:bob@example.com SIP/2.0\r\nl: 9\r\n\r\nhi 😀 !".as_bytes();

    fn drain(framer: &mut StreamFramer) -> Vec<Result<Frame, FramingError>> {
        let mut frames = Vec::new();
        while let Some(frame) = framer.next_frame() {
            let failed = frame.is_err();
            frames.push(frame);
            if failed {
                break;
            }
        }
        frames
    }

    #[test]
    fn pipelined_messages_split_in_order() {
        let mut framer = StreamFramer::new(1024, 1024);
        let mut stream = MESSAGE.to_vec();
        stream.extend_from_slice(REGISTER);
        stream.extend_from_slice(b"\r\n\r\n");
        stream.extend_from_slice(MESSAGE);
        framer.push(&stream);
        assert_eq!(
            drain(&mut framer),
            vec![
                Ok(Frame::Message(MESSAGE.to_vec())),
                Ok(Frame::Message(REGISTER.to_vec())),
                Ok(Frame::KeepAlivePing),
                Ok(Frame::Message(MESSAGE.to_vec())),
            ]
        );
        assert_eq!(framer.buffered_len(), 0);
    }

    #[test]
    fn byte_by_byte_gives_the_same_frames() {
        let mut stream = b"\r\n\r\n".to_vec();
        stream.extend_from_slice(MESSAGE);
        stream.extend_from_slice(b"\r\n");
        stream.extend_from_slice(REGISTER);
        let mut framer = StreamFramer::new(1024, 1024);
        let mut frames = Vec::new();
        for byte in &stream {
            framer.push(std::slice::from_ref(byte));
            frames.extend(drain(&mut framer));
        }
        assert_eq!(
            frames,
            vec![
                Ok(Frame::KeepAlivePing),
                Ok(Frame::Message(MESSAGE.to_vec())),
                Ok(Frame::KeepAlivePong),
                Ok(Frame::Message(REGISTER.to_vec())),
            ]
        );
    }

    #[test]
    fn lone_crlf_is_held_until_disambiguated_or_taken() {
        let mut framer = StreamFramer::new(1024, 1024);
        framer.push(b"\r\n");
        assert_eq!(framer.next_frame(), None);
        assert!(framer.take_lone_crlf());
        assert_eq!(framer.buffered_len(), 0);
    }

    #[test]
    fn oversized_body_is_skipped_and_stream_continues() {
        let mut framer = StreamFramer::new(1024, 4);
        let oversized_head = b"MESSAGE sip:a SIP/2.0\r\nContent-Length: 10\r\n\r\n".to_vec();
        framer.push(&oversized_head);
        framer.push(b"0123");
        assert_eq!(
            framer.next_frame(),
            Some(Ok(Frame::Oversized {
                head: oversized_head,
                declared_body_len: 10
            }))
        );
        assert_eq!(framer.next_frame(), None);
        framer.push(b"456789");
        framer.push(REGISTER);
        assert_eq!(
            drain(&mut framer),
            vec![Ok(Frame::Message(REGISTER.to_vec()))]
        );
    }

    #[test]
    fn absurd_body_is_fatal_and_keeps_the_head() {
        let mut framer = StreamFramer::new(1024, 4);
        let head = b"MESSAGE sip:a SIP/2.0\r\nContent-Length: 65\r\n\r\n".to_vec();
        framer.push(&head);
        let error = framer.next_frame();
        assert_eq!(
            error,
            Some(Err(FramingError::BodyHardLimit {
                head: head.clone(),
                declared_body_len: 65,
                hard_limit_bytes: 64
            }))
        );
        framer.push(REGISTER);
        assert!(matches!(
            framer.next_frame(),
            Some(Err(FramingError::BodyHardLimit { .. }))
        ));
    }

    #[test]
    fn header_too_large_without_terminator() {
        let mut framer = StreamFramer::new(16, 16);
        framer.push(b"MESSAGE sip:a SIP/2.0\r\n");
        assert_eq!(
            framer.next_frame(),
            Some(Err(FramingError::HeaderTooLarge {
                header_bytes_max: 16,
                head: Vec::new(),
            }))
        );
    }

    #[test]
    fn header_too_large_keeps_the_complete_lines_for_a_response() {
        let mut framer = StreamFramer::new(40, 16);
        framer.push(b"MESSAGE sip:a SIP/2.0\r\nVia: x\r\nSubject: aaaaaaaaaaaaaaaaaaaaaaaaa");
        let Some(Err(error)) = framer.next_frame() else {
            panic!("expected an error")
        };
        assert_eq!(
            error.head(),
            Some(&b"MESSAGE sip:a SIP/2.0\r\nVia: x\r\n"[..])
        );
    }

    #[test]
    fn missing_and_invalid_content_length() {
        let mut framer = StreamFramer::new(1024, 16);
        framer.push(b"OPTIONS sip:a SIP/2.0\r\n\r\n");
        assert!(matches!(
            framer.next_frame(),
            Some(Err(FramingError::MissingContentLength { .. }))
        ));
        for bad in ["-1", "1 2", "abc", "", "99999999999999999999999"] {
            let mut framer = StreamFramer::new(1024, 16);
            framer
                .push(format!("OPTIONS sip:a SIP/2.0\r\nContent-Length: {bad}\r\n\r\n").as_bytes());
            let result = framer.next_frame();
            assert!(
                matches!(result, Some(Err(FramingError::InvalidContentLength { .. }))),
                "{bad:?} gave {result:?}"
            );
        }
        let mut framer = StreamFramer::new(1024, 16);
        framer.push(b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\n");
        assert!(matches!(
            framer.next_frame(),
            Some(Err(FramingError::InvalidContentLength { .. }))
        ));
    }

    #[test]
    fn compact_and_spaced_content_length_names() {
        let mut framer = StreamFramer::new(1024, 16);
        framer.push(b"OPTIONS sip:a SIP/2.0\r\ncontent-length : 2\r\n\r\nokREST");
        assert_eq!(
            framer.next_frame(),
            Some(Ok(Frame::Message(
                b"OPTIONS sip:a SIP/2.0\r\ncontent-length : 2\r\n\r\nok".to_vec()
            )))
        );
        assert_eq!(framer.buffered_len(), 4);
    }

    #[test]
    fn datagram_rules() {
        let with_extra = [MESSAGE, b"garbage"].concat();
        assert_eq!(
            datagram(&with_extra, 64),
            Ok(DatagramFrame::Message(MESSAGE.to_vec()))
        );
        let no_length = b"OPTIONS sip:a SIP/2.0\r\n\r\nbody";
        assert_eq!(
            datagram(no_length, 64),
            Ok(DatagramFrame::Message(no_length.to_vec()))
        );
        assert_eq!(
            datagram(b"OPTIONS sip:a SIP/2.0\r\nl: 9\r\n\r\nshort", 64),
            Err(FramingError::ContentLengthBeyondDatagram {
                declared_body_len: 9,
                available: 5
            })
        );
        assert!(matches!(
            datagram(MESSAGE, 4),
            Ok(DatagramFrame::Oversized {
                declared_body_len: 9,
                ..
            })
        ));
        assert_eq!(datagram(b"\r\n\r\n", 64), Ok(DatagramFrame::KeepAlive));
        assert_eq!(datagram(b"OPTIONS", 64), Err(FramingError::IncompleteHead));
        assert!(matches!(
            datagram(&vec![b'a'; SIP_UDP_DATAGRAM_BYTES_MAX + 1], 64),
            Err(FramingError::DatagramTooLarge { .. })
        ));
    }
}
