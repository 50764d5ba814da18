//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the crash-regression corpus test
//! (`tests/corpus.rs`), so both always exercise the same code. Not part of the stable API.
//!
//! Invariant: each function feeds arbitrary bytes through every parser of one area and checks
//! the properties that must hold for any input (no panic; whatever parses re-parses to the same
//! value after building). A violated property panics, which is what a fuzzer reports.

use pms_types::UnixMillis;

use crate::digest::{self, Algorithm, DigestServer};
use crate::framing::{self, Frame, StreamFramer};
use crate::imdn;
use crate::message::{self, SipMessage};

/// Most frames taken from one fuzz input (bounds the loop).
const FUZZ_FRAMES_MAX: usize = 64;

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

/// IMDN XML, CPIM and Disposition-Notification parsing.
pub fn exercise_imdn(bytes: &[u8]) {
    let _ = imdn::parse_imdn(bytes);
    if let Ok(cpim) = imdn::parse_cpim(bytes) {
        let _ = cpim.imdn_prefix();
        let _ = imdn::parse_imdn(&cpim.content);
    }
    let _ = imdn::parse_disposition_notification(&String::from_utf8_lossy(bytes));
}
