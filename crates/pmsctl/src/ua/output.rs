//! The JSON lines `send` and `listen` print, one per status change or received message.
//!
//! Scripts read these lines live, so every line is written whole and flushed at once.
//! Invariant: field order is fixed by the struct declarations (status first), absent values are
//! omitted rather than printed as `null`, and bodies are printed losslessly: UTF-8 text as a JSON
//! string, anything else as standard base64 in `body_base64`.

use std::io::Write;

use serde::Serialize;

/// One status change of the message `send` follows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatusLine {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imdn_message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl StatusLine {
    pub fn sending(to: &str, imdn_message_id: &str) -> Self {
        Self {
            status: "sending",
            to: Some(to.to_owned()),
            imdn_message_id: Some(imdn_message_id.to_owned()),
            ..Self::default()
        }
    }

    pub fn enqueued(message_id: &str, code: u16) -> Self {
        Self {
            status: "enqueued",
            message_id: Some(message_id.to_owned()),
            code: Some(code),
            ..Self::default()
        }
    }

    /// Delivered, known from a `200 OK` (`code`) or from an IMDN (`code` is `None`).
    pub fn delivered(message_id: &str, code: Option<u16>) -> Self {
        Self {
            status: "delivered",
            message_id: Some(message_id.to_owned()),
            code,
            ..Self::default()
        }
    }

    /// A final SIP error response to the MESSAGE (or to the REGISTER that `send` needs).
    pub fn error_response(code: u16, reason: &str) -> Self {
        Self {
            status: "error",
            code: Some(code),
            reason: Some(reason.to_owned()),
            ..Self::default()
        }
    }

    /// A negative IMDN for our message (`failed`, `forbidden`, `error`).
    pub fn error_report(message_id: &str, reason: &str) -> Self {
        Self {
            status: "error",
            message_id: Some(message_id.to_owned()),
            reason: Some(reason.to_owned()),
            ..Self::default()
        }
    }

    /// A transport or protocol failure that has no SIP status code.
    pub fn error(reason: &str) -> Self {
        Self {
            status: "error",
            reason: Some(reason.to_owned()),
            ..Self::default()
        }
    }

    pub fn timeout() -> Self {
        Self {
            status: "timeout",
            ..Self::default()
        }
    }
}

/// One MESSAGE received by `listen`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MessageLine {
    pub from: String,
    pub to: String,
    pub content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    pub message_id: Option<String>,
    pub date: Option<String>,
}

impl MessageLine {
    /// Puts `body` in `body` when it is UTF-8 and in `body_base64` otherwise: never lossy.
    pub fn set_body(&mut self, body: &[u8]) {
        match std::str::from_utf8(body) {
            Ok(text) => {
                self.body = Some(text.to_owned());
                self.body_base64 = None;
            }
            Err(_) => {
                self.body = None;
                self.body_base64 = Some(base64_encode(body));
            }
        }
    }
}

/// Writes `line` as one JSON line and flushes, so a reader of a pipe sees it at once.
pub fn print_line<T: Serialize>(out: &mut (dyn Write + Send), line: &T) -> std::io::Result<()> {
    let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
    text.push('\n');
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Standard base64 (RFC 4648 §4, with padding). Small enough not to need a dependency.
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b0 = u32::from(chunk[0]);
        let b1 = chunk.get(1).map_or(0, |&b| u32::from(b));
        let b2 = chunk.get(2).map_or(0, |&b| u32::from(b));
        let triple = (b0 << 16) | (b1 << 8) | b2;
        for (index, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if index <= chunk.len() {
                text.push(char::from(ALPHABET[((triple >> shift) & 0x3f) as usize]));
            } else {
                text.push('=');
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printed<T: Serialize>(line: &T) -> String {
        let mut out: Vec<u8> = Vec::new();
        print_line(&mut out, line).expect("write to a Vec");
        String::from_utf8(out).expect("JSON is UTF-8")
    }

    #[test]
    fn status_lines_have_fixed_field_order_and_omit_absent_fields() {
        assert_eq!(
            printed(&StatusLine::sending("sip:bob@localhost", "abc")),
            "{\"status\":\"sending\",\"to\":\"sip:bob@localhost\",\"imdn_message_id\":\"abc\"}\n"
        );
        assert_eq!(
            printed(&StatusLine::enqueued("m1", 202)),
            "{\"status\":\"enqueued\",\"message_id\":\"m1\",\"code\":202}\n"
        );
        assert_eq!(
            printed(&StatusLine::delivered("m1", Some(200))),
            "{\"status\":\"delivered\",\"message_id\":\"m1\",\"code\":200}\n"
        );
        assert_eq!(
            printed(&StatusLine::error_response(403, "Forbidden")),
            "{\"status\":\"error\",\"code\":403,\"reason\":\"Forbidden\"}\n"
        );
        assert_eq!(
            printed(&StatusLine::timeout()),
            "{\"status\":\"timeout\"}\n"
        );
    }

    #[test]
    fn message_line_keeps_utf8_bodies_exact_and_base64s_the_rest() {
        let mut line = MessageLine {
            from: "sip:alice@localhost".into(),
            to: "sip:bob@localhost".into(),
            content_type: Some("text/plain;charset=UTF-8".into()),
            ..MessageLine::default()
        };
        line.set_body("héllo 👋 \"quoted\"\n".as_bytes());
        let text = printed(&line);
        let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(value["body"], "héllo 👋 \"quoted\"\n");
        assert!(value.get("body_base64").is_none());
        assert_eq!(value["message_id"], serde_json::Value::Null);

        line.set_body(&[0xff, 0x00, 0x41]);
        let value: serde_json::Value = serde_json::from_str(&printed(&line)).expect("valid JSON");
        assert_eq!(value["body_base64"], "/wBB");
        assert!(value.get("body").is_none());
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in cases {
            assert_eq!(base64_encode(input.as_bytes()), expected, "input {input:?}");
        }
    }
}
