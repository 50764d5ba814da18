//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the crash-regression corpus test
//! (`tests/corpus.rs`), so both always exercise the same code. Not part of the stable API.
//!
//! Invariant: each function feeds arbitrary bytes through every parser of one area and checks
//! the properties that must hold for any input (no panic; whatever parses re-parses to the same
//! value after building). A violated property panics, which is what a fuzzer reports.
//! Invariant: the stream framer yields the same frames however the stream is split into
//! reads, accounts for every byte it consumed, and holds no more than its documented bound.

use pms_types::UnixMillis;
use pms_types::limits::SIP_UDP_DATAGRAM_BYTES_MAX;

use crate::digest::{self, Algorithm, DigestServer};
use crate::encoding::{self, DECODED_BODY_BYTES_MAX};
use crate::framing::{self, Frame, FramingError, StreamFramer};
use crate::imdn;
use crate::message::{self, Method, Request, SipMessage};

/// Most frames taken from one fuzz input (bounds the loop).
const FUZZ_FRAMES_MAX: usize = 64;
/// Most read lengths one [`exercise_framing`] input chooses (they are used in a cycle).
const FUZZ_CHUNK_LENGTHS_MAX: usize = 16;
/// Decoded-size bound used to check that [`encoding::decode`] honours its limit.
const FUZZ_DECODED_BYTES_MAX: usize = 64;

/// Framing (stream, split at an input-chosen point, and datagram) then parse, accessors and
/// the build/re-parse property.
pub fn exercise_sip(bytes: &[u8]) {
    let split = bytes
        .first()
        .map_or(0, |first| usize::from(*first))
        .min(bytes.len());
    let (first, second) = bytes.split_at(split);
    let mut framer = StreamFramer::new(2048, 1024);
    framer.push(first);
    let mut messages = Vec::new();
    for round in 0..2 {
        if round == 1 {
            framer.push(second);
        }
        for _ in 0..FUZZ_FRAMES_MAX {
            match framer.next_frame() {
                Some(Ok(Frame::Message(message))) => messages.push(message),
                Some(Ok(Frame::Oversized { head, .. })) => messages.push(head),
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    if let Some(head) = error.head() {
                        messages.push(head.to_vec());
                    }
                    break;
                }
                None => break,
            }
        }
    }
    if let Ok(framing::DatagramFrame::Message(datagram)) = framing::datagram(bytes, 1024) {
        messages.push(datagram);
    }
    messages.push(bytes.to_vec());
    for raw in messages {
        exercise_message(&raw);
    }
}

fn exercise_message(raw: &[u8]) {
    let Ok(parsed) = message::parse(raw) else {
        return;
    };
    let headers = parsed.headers();
    let _ = (
        headers.from_header(),
        headers.to_header(),
        headers.call_id(),
        headers.cseq(),
    );
    let _ = (
        headers.contacts(),
        headers.expires(),
        headers.max_forwards(),
    );
    let _ = (headers.content_type(), headers.via_branch());
    let _ = headers.authorization("Authorization");
    if let SipMessage::Request(request) = &parsed {
        let _ = request.request_uri();
        let _ = message::response_to(request, 400, "Bad Request", "tag");
        let _ = imdn::imdn_fields(request);
    }
    let rebuilt = message::parse(&parsed.to_bytes());
    assert_eq!(
        rebuilt.as_ref(),
        Ok(&parsed),
        "parse(build(parse(x))) != parse(x)"
    );
}

/// Digest: credentials and challenge parsing, and a verification attempt.
pub fn exercise_digest(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let _ = digest::parse_challenge(&text);
    let _ = digest::select_challenge([text.as_ref()]);
    if let Ok(credentials) = digest::parse_credentials(&text) {
        let mut server = DigestServer::with_nonces_max(
            "pms.test".to_string(),
            [1; 32],
            vec![Algorithm::Sha256, Algorithm::Md5],
            4,
        );
        let _ = server.challenges(UnixMillis(1_000), false);
        let _ = server.verify(
            &credentials,
            "REGISTER",
            |algorithm| Some(digest::ha1(algorithm, "u", "pms.test", "p")),
            UnixMillis(2_000),
        );
    }
}

/// IMDN XML, CPIM and Disposition-Notification parsing, then the same bytes as the body of a
/// MESSAGE (see [`exercise_imdn_request`]).
pub fn exercise_imdn(bytes: &[u8]) {
    let _ = imdn::parse_imdn(bytes);
    if let Ok(cpim) = imdn::parse_cpim(bytes) {
        let _ = cpim.imdn_prefix();
        let _ = cpim.header("imdn.Message-ID");
        let _ = message::ContentType::parse(&cpim.content_type);
        let _ = imdn::parse_imdn(&cpim.content);
    }
    let _ = imdn::parse_disposition_notification(&String::from_utf8_lossy(bytes));
    exercise_imdn_request(bytes);
}

/// CPIM and IMDN as PMS reads them inside a MESSAGE: `bytes[0]` picks the `Content-Type`
/// (CPIM, IMDN XML, other) and the `Content-Encoding` (none, deflate, gzip, both), the rest is
/// the body, so compressed bodies reach the bounded decoder and the CPIM/IMDN parsers behind it.
fn exercise_imdn_request(bytes: &[u8]) {
    const CONTENT_TYPES: [&str; 4] = [
        "message/cpim",
        "message/imdn+xml",
        "Message/CPIM ; charset=utf-8",
        "text/plain",
    ];
    const CODINGS: [Option<&str>; 4] = [None, Some("deflate"), Some("gzip"), Some("deflate, gzip")];
    let Some((selector, body)) = bytes.split_first() else {
        return;
    };
    let mut request = Request::new(Method::Message, "sip:bob@pms.test");
    let content_type = CONTENT_TYPES
        .get(usize::from(selector & 3))
        .copied()
        .unwrap_or_default();
    request.headers.push("Content-Type", content_type);
    let coding = CODINGS
        .get(usize::from((selector >> 2) & 3))
        .copied()
        .flatten();
    if let Some(coding) = coding {
        request.headers.push("Content-Encoding", coding);
    }
    request.body = body.to_vec();
    let _ = imdn::imdn_fields(&request);
    let _ = imdn::imdn_report(&request);
    if let Ok(decoded) = encoding::decoded_body(&request) {
        assert!(decoded.len() <= DECODED_BODY_BYTES_MAX.max(body.len()));
    }
    let codings = encoding::parse_content_encoding(coding).unwrap_or_default();
    let identity = codings
        .iter()
        .all(|coding| *coding == encoding::ContentCoding::Identity);
    if let Ok(decoded) = encoding::decode(body, &codings, FUZZ_DECODED_BYTES_MAX)
        && !identity
    {
        assert!(
            decoded.len() <= FUZZ_DECODED_BYTES_MAX,
            "decode produced {} bytes over its limit",
            decoded.len()
        );
    }
}

/// Stream framing on its own. `bytes[0]` picks `header_bytes_max` (8..=1028), `bytes[1]`
/// `body_bytes_max` (0..=510), `bytes[2]` how many of the next bytes are read lengths (a zero
/// length reads one byte); the rest is the stream, pushed in those lengths in a cycle and, for
/// comparison, in one piece. Checks that both give the same frames and leave the same bytes
/// buffered, that every consumed byte is accounted for in stream order, that the buffer stays
/// within `header_bytes_max + body_bytes_max` plus the last read, and that each message frame
/// reads the same as a datagram and re-frames to itself after parse and build.
pub fn exercise_framing(bytes: &[u8]) {
    let [header_choice, body_choice, lengths_choice, rest @ ..] = bytes else {
        return;
    };
    let header_bytes_max = 8 + usize::from(*header_choice) * 4;
    let body_bytes_max = usize::from(*body_choice) * 2;
    let lengths_len = (usize::from(*lengths_choice) % (FUZZ_CHUNK_LENGTHS_MAX + 1)).min(rest.len());
    let (lengths, stream) = rest.split_at(lengths_len);
    let mut lengths: Vec<usize> = lengths
        .iter()
        .map(|length| usize::from(*length).max(1))
        .collect();
    if lengths.is_empty() {
        lengths.push(1);
    }
    let limits = (header_bytes_max, body_bytes_max);
    let chunked = frame_stream(stream, &lengths, limits);
    let whole = frame_stream(stream, &[stream.len().max(1)], limits);
    assert_eq!(
        chunked, whole,
        "frames depend on how the stream was split into reads"
    );
    check_accounting(stream, &whole, body_bytes_max);
    for frame in &whole.frames {
        match frame {
            Ok(Frame::Message(raw)) => check_message_frame(raw, limits),
            Ok(Frame::Oversized { head, .. }) => exercise_message(head),
            Err(error) => {
                if let Some(head) = error.head() {
                    exercise_message(head);
                }
            }
            Ok(Frame::KeepAlivePing | Frame::KeepAlivePong) => {}
        }
    }
    match framing::datagram(stream, body_bytes_max) {
        Ok(framing::DatagramFrame::Message(raw)) => {
            assert!(stream.starts_with(&raw), "datagram message is not a prefix");
            exercise_message(&raw);
        }
        Ok(framing::DatagramFrame::Oversized { head, .. }) => {
            assert!(stream.starts_with(&head), "datagram head is not a prefix");
        }
        Ok(framing::DatagramFrame::KeepAlive) | Err(_) => {}
    }
}

/// What one run of a [`StreamFramer`] over a stream gave.
#[derive(Debug, PartialEq, Eq)]
struct Framed {
    /// Frames in order, ending at the first error if there was one.
    frames: Vec<Result<Frame, FramingError>>,
    /// Bytes still held at the end.
    buffered: usize,
}

/// Pushes `stream` in reads of `lengths` (cycled), draining the framer after each one.
fn frame_stream(
    stream: &[u8],
    lengths: &[usize],
    (header_max, body_max): (usize, usize),
) -> Framed {
    let mut framer = StreamFramer::new(header_max, body_max);
    let mut frames = Vec::new();
    let mut offset = 0;
    let mut lengths = lengths.iter().cycle();
    'reads: while offset < stream.len() {
        let length = lengths.next().copied().unwrap_or(1);
        let end = offset.saturating_add(length).min(stream.len());
        let chunk = stream.get(offset..end).unwrap_or_default();
        offset = end;
        framer.push(chunk);
        // Each frame consumes at least one byte, so a stream has at most that many frames.
        while let Some(frame) = framer.next_frame() {
            assert!(
                frames.len() < stream.len(),
                "framer yields frames without consuming bytes"
            );
            let failed = frame.is_err();
            frames.push(frame);
            if failed {
                break 'reads;
            }
        }
        assert!(
            framer.buffered_len() <= header_max + body_max + chunk.len(),
            "framer holds {} bytes, over its bound",
            framer.buffered_len()
        );
    }
    let buffered = framer.buffered_len();
    if framer.take_lone_crlf() {
        assert_eq!(
            framer.buffered_len(),
            0,
            "a taken lone CRLF left bytes behind"
        );
    }
    Framed { frames, buffered }
}

/// Every frame is the next bytes of the stream (an oversized one its head, then the skipped
/// body), and what is left buffered is exactly the rest.
fn check_accounting(stream: &[u8], framed: &Framed, body_bytes_max: usize) {
    let mut at = 0usize;
    let rest = |at: usize| stream.get(at..).unwrap_or_default();
    for frame in &framed.frames {
        match frame {
            Ok(Frame::Message(raw)) => {
                assert!(
                    rest(at).starts_with(raw),
                    "message frame out of stream order"
                );
                at += raw.len();
            }
            Ok(Frame::KeepAlivePing) => {
                assert!(rest(at).starts_with(b"\r\n\r\n"), "ping not in the stream");
                at += 4;
            }
            Ok(Frame::KeepAlivePong) => {
                assert!(rest(at).starts_with(b"\r\n"), "pong not in the stream");
                at += 2;
            }
            Ok(Frame::Oversized {
                head,
                declared_body_len,
            }) => {
                assert!(
                    rest(at).starts_with(head),
                    "oversized head out of stream order"
                );
                assert!(*declared_body_len > body_bytes_max, "oversized body fits");
                at = at
                    .saturating_add(head.len())
                    .saturating_add(*declared_body_len);
            }
            Err(error) => {
                if let Some(head) = error.head() {
                    assert!(rest(at).starts_with(head), "error head not in the stream");
                }
                return;
            }
        }
    }
    assert_eq!(
        framed.buffered,
        stream.len().saturating_sub(at),
        "buffered bytes are not the unconsumed rest of the stream"
    );
}

/// A message frame is within the limits, says its own length, reads the same as a datagram,
/// and, if it parses, its rebuilt form frames to itself.
fn check_message_frame(raw: &[u8], (header_max, body_max): (usize, usize)) {
    let head_len = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map_or(raw.len(), |at| at + 4);
    let body_len = raw.len() - head_len;
    assert!(
        head_len <= header_max && body_len <= body_max,
        "frame over the limits"
    );
    let head = raw.get(..head_len).unwrap_or_default();
    assert_eq!(framing::content_length(head), Ok(Some(body_len)));
    if raw.len() <= SIP_UDP_DATAGRAM_BYTES_MAX {
        assert_eq!(
            framing::datagram(raw, body_max),
            Ok(framing::DatagramFrame::Message(raw.to_vec())),
            "a stream frame reads differently as a datagram"
        );
    }
    exercise_message(raw);
    if let Ok(parsed) = message::parse(raw) {
        let rebuilt = parsed.to_bytes();
        let mut framer = StreamFramer::new(rebuilt.len(), rebuilt.len());
        framer.push(&rebuilt);
        assert_eq!(
            framer.next_frame(),
            Some(Ok(Frame::Message(rebuilt.clone()))),
            "a rebuilt message does not frame to itself"
        );
        assert_eq!(framer.next_frame(), None);
        assert_eq!(framer.buffered_len(), 0);
    }
}
