//! The one table that maps why a request is refused to its SIP status, reason and extra headers
//! (guarantee 8). Handlers return a [`Refusal`]; nothing else in the edge picks status codes
//! for errors.

use pms_sip::message::{Request, Response, response_to};

/// Methods PMS serves (the `Allow` header of 405 responses).
pub const ALLOW: &str = "REGISTER, MESSAGE, OPTIONS";
/// Body types a MESSAGE may carry (the `Accept` header of 415 responses).
pub const ACCEPT: &str = "text/plain, message/cpim, message/imdn+xml";

/// Why a request gets an error response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 400: the request cannot be understood; the reason says which part.
    Malformed(String),
    /// 403: authenticated, but not allowed (wrong identity, service not enabled).
    Forbidden(String),
    /// 403 with `Retry-After`: too many failed authentications from this source (or from it
    /// on this account); refused before the credentials are checked, so the answer is the
    /// same whether they were right or wrong.
    AuthThrottled { retry_after_secs: u32 },
    /// 404: the addressed user does not exist here.
    NotFound(String),
    /// 405: a method PMS does not serve.
    MethodNotAllowed,
    /// 413: body above the configured maximum.
    TooLarge { body_bytes_max: usize },
    /// 415: body type PMS does not store.
    UnsupportedMediaType(String),
    /// 415: a Content-Encoding PMS cannot decode (RFC 3261 §8.2.3).
    UnsupportedEncoding,
    /// 416: a Request-URI scheme other than sip/sips.
    UnsupportedUriScheme,
    /// 420: the request requires option tags PMS does not support (listed in `Unsupported`).
    BadExtension { unsupported: String },
    /// 423: registration expiry below the minimum.
    IntervalTooBrief { min_secs: u64 },
    /// 480: the recipient cannot take more messages now.
    TemporarilyUnavailable(String),
    /// 480 with `Retry-After`, to this sender only: it already has its quota of messages
    /// queued for the recipient (others can still write to them).
    SenderQueueFull { retry_after_secs: u32 },
    /// 480 with `Retry-After`, to this sender only: it sends to the recipient faster than the
    /// per-(sender, recipient) rate.
    SenderTooFast { retry_after_secs: u32 },
    /// 483: Max-Forwards reached zero.
    TooManyHops,
    /// 500: an internal fault (storage, crypto) that is not the client's doing.
    Internal(String),
    /// 503: the replicated state could not commit now; the client may retry.
    Unavailable { retry_after_secs: u32 },
}

impl Refusal {
    pub fn status(&self) -> (u16, String) {
        match self {
            Refusal::Malformed(reason) => (400, reason.clone()),
            Refusal::Forbidden(reason) => (403, reason.clone()),
            Refusal::AuthThrottled { .. } => (403, "Too Many Failed Authentications".into()),
            Refusal::NotFound(reason) => (404, reason.clone()),
            Refusal::MethodNotAllowed => (405, "Method Not Allowed".into()),
            Refusal::TooLarge { .. } => (413, "Request Entity Too Large".into()),
            Refusal::UnsupportedMediaType(reason) => (415, reason.clone()),
            Refusal::UnsupportedEncoding => (415, "Unsupported Content-Encoding".into()),
            Refusal::UnsupportedUriScheme => (416, "Unsupported URI Scheme".into()),
            Refusal::BadExtension { .. } => (420, "Bad Extension".into()),
            Refusal::IntervalTooBrief { .. } => (423, "Interval Too Brief".into()),
            Refusal::TemporarilyUnavailable(reason) => (480, reason.clone()),
            Refusal::SenderQueueFull { .. } => (480, "Too Many Messages Queued From You".into()),
            Refusal::SenderTooFast { .. } => (480, "Sending Too Fast".into()),
            Refusal::TooManyHops => (483, "Too Many Hops".into()),
            Refusal::Internal(_) => (500, "Server Internal Error".into()),
            Refusal::Unavailable { .. } => (503, "Service Unavailable".into()),
        }
    }

    /// The response to `request`, with the headers the status requires.
    pub fn response(&self, request: &Request, to_tag: &str) -> Response {
        let (status, reason) = self.status();
        let mut response = response_to(request, status, &reason, to_tag);
        match self {
            Refusal::MethodNotAllowed => response.headers.push("Allow", ALLOW),
            Refusal::UnsupportedMediaType(_) => response.headers.push("Accept", ACCEPT),
            Refusal::UnsupportedEncoding => response
                .headers
                .push("Accept-Encoding", pms_sip::encoding::ACCEPT_ENCODING),
            Refusal::BadExtension { unsupported } => {
                response.headers.push("Unsupported", unsupported.clone());
            }
            Refusal::IntervalTooBrief { min_secs } => {
                response.headers.push("Min-Expires", min_secs.to_string())
            }
            Refusal::Unavailable { retry_after_secs }
            | Refusal::AuthThrottled { retry_after_secs }
            | Refusal::SenderQueueFull { retry_after_secs }
            | Refusal::SenderTooFast { retry_after_secs } => response
                .headers
                .push("Retry-After", retry_after_secs.to_string()),
            Refusal::TooLarge { body_bytes_max } => response.headers.push(
                "Warning",
                format!("399 pms \"body limit {body_bytes_max} bytes\""),
            ),
            _ => {}
        }
        response
    }
}

/// Counts one answered request in `pms_sip_requests_total{method, status}`. `method` is the
/// request's (or its CSeq's); a method PMS does not know, or none, counts as "other", so a
/// client cannot grow the metric with made-up methods.
pub fn count_answer(metrics: &pms_types::metrics::Metrics, method: &str, status: u16) {
    let parsed = pms_sip::Method::parse(method);
    let method = match &parsed {
        pms_sip::Method::Other(_) => "other",
        known => known.as_str(),
    };
    metrics
        .sip_requests_total
        .with([method, &status.to_string()])
        .inc();
}

/// [`response_from_raw_head`], counted in `pms_sip_requests_total` when there is a response.
pub fn answer_raw_head(
    metrics: &pms_types::metrics::Metrics,
    head: &[u8],
    status: u16,
    reason: &str,
) -> Option<Vec<u8>> {
    let response = response_from_raw_head(head, status, reason)?;
    count_answer(metrics, raw_head_method(head), status);
    Some(response)
}

/// The method token of a request's raw head ("" when the head is not a request line).
fn raw_head_method(head: &[u8]) -> &str {
    let line = head
        .split(|&byte| byte == b' ' || byte == b'\r')
        .next()
        .unwrap_or_default();
    std::str::from_utf8(line).unwrap_or_default()
}

/// Builds an error response from the raw head of a request that could not be parsed or framed,
/// copying whatever Via/From/To/Call-ID/CSeq lines it has. `None` when the head is not a request
/// or has no Via (nothing to address a response to).
pub fn response_from_raw_head(head: &[u8], status: u16, reason: &str) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let start = lines.next()?;
    let version = start.rsplit_once(' ').map(|(_, version)| version)?;
    if start.starts_with("SIP/") || !version.starts_with("SIP/") {
        return None;
    }
    let mut out = format!("SIP/2.0 {status} {reason}\r\n");
    let mut has_via = false;
    let mut copied: Vec<&str> = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let canonical = match name.trim().to_ascii_lowercase().as_str() {
            "via" | "v" => "Via",
            "from" | "f" => "From",
            "to" | "t" => "To",
            "call-id" | "i" => "Call-ID",
            "cseq" => "CSeq",
            _ => continue,
        };
        // Via may repeat; the others are copied once so the response itself stays valid.
        if canonical != "Via" && copied.contains(&canonical) {
            continue;
        }
        copied.push(canonical);
        has_via |= canonical == "Via";
        out.push_str(canonical);
        out.push_str(": ");
        out.push_str(value.trim());
        out.push_str("\r\n");
    }
    if !has_via {
        return None;
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    Some(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_heads_get_a_response_with_their_transaction_headers() {
        let head = b"MESSAGE sip:bob@localhost SIP/2.0\r\nv: SIP/2.0/TCP 1.2.3.4;branch=z9hG4bKx\r\nf: <sip:a@localhost>;tag=1\r\nt: <sip:bob@localhost>\r\ni: abc\r\nCSeq: 1 MESSAGE\r\nContent-Length: 999999\r\n\r\n";
        let response = String::from_utf8(
            response_from_raw_head(head, 413, "Request Entity Too Large").unwrap(),
        )
        .unwrap();
        assert!(response.starts_with("SIP/2.0 413 Request Entity Too Large\r\n"));
        assert!(response.contains("Via: SIP/2.0/TCP 1.2.3.4;branch=z9hG4bKx\r\n"));
        assert!(response.contains("Call-ID: abc\r\n"));
        assert!(!response.contains("999999"));
    }

    #[test]
    fn duplicate_headers_are_copied_once_and_other_versions_are_answered() {
        let head = b"MESSAGE sip:b@x SIP/3.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nCall-ID: 1\r\nCall-ID: 2\r\n\r\n";
        let response =
            String::from_utf8(response_from_raw_head(head, 505, "Version Not Supported").unwrap())
                .unwrap();
        assert!(response.starts_with("SIP/2.0 505 Version Not Supported\r\n"));
        assert_eq!(response.matches("Call-ID").count(), 1);
    }

    #[test]
    fn heads_without_via_or_that_are_responses_get_nothing() {
        assert!(
            response_from_raw_head(b"MESSAGE sip:b@x SIP/2.0\r\nCall-ID: 1\r\n\r\n", 400, "x")
                .is_none()
        );
        assert!(response_from_raw_head(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n", 400, "x").is_none());
    }
}
