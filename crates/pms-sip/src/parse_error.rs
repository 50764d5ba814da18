//! The one error type of SIP parsing ([`ParseError`]), shared by the URI, header and
//! message parsers, and the reason phrase a server puts in its `400` answer.
//!
//! Invariants:
//! - Invariant: every variant carries only bounded snippets of the offending input
//!   ([`crate::text::snippet`]), never an unbounded copy.
//! - Invariant: [`ParseError::reason`] is printable, one line and at most
//!   [`REASON_PHRASE_BYTES_MAX`] bytes, so it can go into a status line as is.

use crate::text::{header_safe, snippet, truncate_to};

/// Longest reason phrase produced by [`ParseError::reason`].
pub const REASON_PHRASE_BYTES_MAX: usize = 120;

/// Why a message or header could not be parsed. [`ParseError::reason`] gives a reason phrase
/// suitable for a `400` response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message has no end of header block (CRLFCRLF)")]
    MissingHeadEnd,
    #[error("header block is not UTF-8 (valid up to byte {valid_up_to})")]
    HeadNotUtf8 { valid_up_to: usize },
    #[error("invalid start line {line:?}")]
    InvalidStartLine { line: String },
    #[error("unsupported SIP version {version:?}")]
    UnsupportedVersion { version: String },
    #[error("invalid status code {text:?}")]
    InvalidStatusCode { text: String },
    #[error("invalid header line {line_number}: {line:?}")]
    InvalidHeaderLine { line_number: usize, line: String },
    #[error("more than {max} headers")]
    TooManyHeaders { max: usize },
    #[error("missing {name} header")]
    MissingHeader { name: &'static str },
    #[error("more than one {name} header")]
    DuplicateHeader { name: &'static str },
    #[error("invalid {name} header {value:?}: {detail}")]
    InvalidHeaderValue {
        name: &'static str,
        value: String,
        detail: &'static str,
    },
    #[error("CSeq method {cseq_method} does not match request method {request_method}")]
    CSeqMethodMismatch {
        request_method: String,
        cseq_method: String,
    },
    #[error("Content-Length {declared} does not match the {actual}-byte body")]
    ContentLengthMismatch { declared: u64, actual: usize },
    #[error("invalid URI {uri:?}: {detail}")]
    InvalidUri { uri: String, detail: &'static str },
}

impl ParseError {
    /// A short human reason for a `400` status line: printable, one line, at most
    /// [`REASON_PHRASE_BYTES_MAX`] bytes.
    pub fn reason(&self) -> String {
        let text = match self {
            ParseError::MissingHeadEnd => "Incomplete header block".to_string(),
            ParseError::HeadNotUtf8 { .. } => "Header block is not valid UTF-8".to_string(),
            ParseError::InvalidStartLine { .. } => "Malformed start line".to_string(),
            ParseError::UnsupportedVersion { .. } => "Unsupported SIP version".to_string(),
            ParseError::InvalidStatusCode { .. } => "Malformed status code".to_string(),
            ParseError::InvalidHeaderLine { line_number, .. } => {
                format!("Malformed header line {line_number}")
            }
            ParseError::TooManyHeaders { max } => format!("More than {max} headers"),
            ParseError::MissingHeader { name } => format!("Missing {name} header"),
            ParseError::DuplicateHeader { name } => format!("Duplicate {name} header"),
            ParseError::InvalidHeaderValue { name, detail, .. } => {
                format!("Bad {name} header: {detail}")
            }
            ParseError::CSeqMethodMismatch { .. } => {
                "CSeq method does not match request method".to_string()
            }
            ParseError::ContentLengthMismatch { .. } => {
                "Content-Length does not match body".to_string()
            }
            ParseError::InvalidUri { detail, .. } => format!("Bad URI: {detail}"),
        };
        truncate_to(&header_safe(&text), REASON_PHRASE_BYTES_MAX).to_string()
    }
}

/// A [`ParseError::InvalidHeaderValue`] with a bounded snippet of `value`.
pub(crate) fn invalid_value(name: &'static str, value: &str, detail: &'static str) -> ParseError {
    ParseError::InvalidHeaderValue {
        name,
        value: snippet(value),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_is_one_bounded_line() {
        let error = ParseError::InvalidHeaderLine {
            line_number: 3,
            line: "x".repeat(500),
        };
        assert_eq!(error.reason(), "Malformed header line 3");
        assert_eq!(
            ParseError::MissingHeader { name: "Call-ID" }.reason(),
            "Missing Call-ID header"
        );
    }
}
