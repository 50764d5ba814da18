//! SIP messages ([`Request`], [`Response`], [`SipMessage`]): the parser ([`parse`]), the
//! builder (`to_bytes`), [`response_to`], and the typed header accessors on both message kinds.
//! This module is also the public path of the whole message model: it re-exports the header,
//! URI, method and error types that live in their own modules.
//!
//! Invariants:
//! - Invariant: [`parse`] accepts a message only if its head is UTF-8 without control
//!   characters (other than tab), has at most [`pms_types::limits::SIP_HEADERS_MAX`] headers,
//!   and carries exactly one valid From, To, Call-ID and CSeq and at least one Via; for
//!   requests the CSeq method equals the request method. Optional headers PMS interprets
//!   (Contact, Expires, Max-Forwards, Content-Type) and the parameters of every Via are
//!   validated too, so their `Option` accessors (`via_branch` included) never hide a syntax
//!   error on a parsed message.
//! - Invariant: `Content-Length` is checked against the body by [`parse`] and then dropped from
//!   [`Headers`]; `to_bytes` always writes it from the body. Hence `parse(m.to_bytes()) == m`
//!   for every valid `m`, and the body survives byte for byte.
//! - Invariant: `to_bytes` never writes a line break that is not its own: control characters
//!   in names, values, URIs and reason phrases are replaced by spaces (no header injection).

use crate::digest::{DigestCredentials, DigestError};
pub use crate::headers::{Contact, ContentType, Headers, NameAddr};
use crate::headers::{names_match, parse_decimal, parse_header_lines};
pub use crate::method::Method;
use crate::parse_error::invalid_value;
pub use crate::parse_error::{ParseError, REASON_PHRASE_BYTES_MAX};
use crate::text::{find_bytes, header_safe, is_token, is_token_char, parse_params, snippet};
use crate::uri::uri_error;
pub use crate::uri::{NOT_SIP_URI, SipUri};

/// A SIP request. `uri` is the Request-URI as received (it may be a non-SIP URI such as
/// `tel:`); [`Request::request_uri`] parses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub uri: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

/// A SIP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SipMessage {
    Request(Request),
    Response(Response),
}

impl SipMessage {
    pub fn headers(&self) -> &Headers {
        match self {
            SipMessage::Request(request) => &request.headers,
            SipMessage::Response(response) => &response.headers,
        }
    }

    pub fn body(&self) -> &[u8] {
        match self {
            SipMessage::Request(request) => &request.body,
            SipMessage::Response(response) => &response.body,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            SipMessage::Request(request) => request.to_bytes(),
            SipMessage::Response(response) => response.to_bytes(),
        }
    }
}

/// Typed header accessors shared by requests and responses (they delegate to [`Headers`]).
macro_rules! header_accessors {
    ($type:ty) => {
        impl $type {
            /// The `From` header.
            #[allow(clippy::wrong_self_convention, clippy::should_implement_trait)]
            pub fn from(&self) -> Result<NameAddr, ParseError> {
                self.headers.from_header()
            }
            /// The `To` header.
            pub fn to(&self) -> Result<NameAddr, ParseError> {
                self.headers.to_header()
            }
            pub fn call_id(&self) -> Result<&str, ParseError> {
                self.headers.call_id()
            }
            pub fn cseq(&self) -> Result<(u32, Method), ParseError> {
                self.headers.cseq()
            }
            pub fn contacts(&self) -> Result<Vec<Contact>, ParseError> {
                self.headers.contacts()
            }
            pub fn expires(&self) -> Option<u64> {
                self.headers.expires()
            }
            pub fn max_forwards(&self) -> Option<u32> {
                self.headers.max_forwards()
            }
            pub fn content_type(&self) -> Option<ContentType> {
                self.headers.content_type()
            }
            pub fn via_branch(&self) -> Option<String> {
                self.headers.via_branch()
            }
            pub fn authorization(
                &self,
                header_name: &str,
            ) -> Result<Option<DigestCredentials>, DigestError> {
                self.headers.authorization(header_name)
            }
        }
    };
}

header_accessors!(Request);
header_accessors!(Response);

fn write_headers(out: &mut Vec<u8>, headers: &Headers, body_len: usize) {
    for (name, value) in headers.iter() {
        if names_match(name, "Content-Length") {
            continue;
        }
        let name: String = name
            .bytes()
            .filter(|byte| is_token_char(*byte))
            .map(char::from)
            .collect();
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(header_safe(value).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {body_len}\r\n\r\n").as_bytes());
}

fn start_line_safe(text: &str) -> String {
    header_safe(text).replace(' ', "%20")
}

impl Request {
    pub fn new(method: Method, uri: impl Into<String>) -> Request {
        Request {
            method,
            uri: uri.into(),
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// The Request-URI as a SIP URI.
    pub fn request_uri(&self) -> Result<SipUri, ParseError> {
        SipUri::parse(&self.uri)
    }

    /// Wire form; `Content-Length` is computed from the body (any header of that name is
    /// ignored).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        let method: String = self
            .method
            .as_str()
            .bytes()
            .filter(|byte| is_token_char(*byte))
            .map(char::from)
            .collect();
        out.extend_from_slice(
            format!("{} {} SIP/2.0\r\n", method, start_line_safe(&self.uri)).as_bytes(),
        );
        write_headers(&mut out, &self.headers, self.body.len());
        out.extend_from_slice(&self.body);
        out
    }
}

impl Response {
    pub fn new(status: u16, reason: impl Into<String>) -> Response {
        Response {
            status,
            reason: reason.into(),
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// Wire form; `Content-Length` is computed from the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        let status = self.status.clamp(100, 699);
        out.extend_from_slice(
            format!("SIP/2.0 {} {}\r\n", status, header_safe(&self.reason)).as_bytes(),
        );
        write_headers(&mut out, &self.headers, self.body.len());
        out.extend_from_slice(&self.body);
        out
    }
}

/// A response to `request` (RFC 3261 §8.2.6): copies every Via (in order), From, To, Call-ID
/// and CSeq. If To has no tag, `;tag=<to_tag>` is added (except on 100 Trying, which must not
/// create a dialog); the caller chooses the tag so that retransmitted requests get the same
/// one. The body is empty.
pub fn response_to(request: &Request, status: u16, reason: &str, to_tag: &str) -> Response {
    let mut response = Response::new(status, reason);
    for via in request.headers.get_all("Via") {
        response.headers.push("Via", via);
    }
    if let Some(from) = request.headers.get("From") {
        response.headers.push("From", from);
    }
    if let Some(to) = request.headers.get("To") {
        let to = match NameAddr::parse(to) {
            Ok(mut name_addr)
                if name_addr.tag().is_none() && status != 100 && !to_tag.is_empty() =>
            {
                name_addr.set_param("tag", Some(to_tag));
                name_addr.to_string()
            }
            _ => to.to_string(),
        };
        response.headers.push("To", to);
    }
    for name in ["Call-ID", "CSeq"] {
        if let Some(value) = request.headers.get(name) {
            response.headers.push(name, value);
        }
    }
    response
}

/// Parses one complete message (head and body as cut by [`crate::framing`]). The body is
/// exactly the bytes after the first CRLFCRLF.
pub fn parse(bytes: &[u8]) -> Result<SipMessage, ParseError> {
    let end = find_bytes(bytes, b"\r\n\r\n", 0).ok_or(ParseError::MissingHeadEnd)?;
    let head = std::str::from_utf8(bytes.get(..end).unwrap_or_default()).map_err(|error| {
        ParseError::HeadNotUtf8 {
            valid_up_to: error.valid_up_to(),
        }
    })?;
    let body = bytes.get(end + 4..).unwrap_or_default().to_vec();
    let mut lines = head.split("\r\n");
    let start_line = lines.next().unwrap_or_default();
    let headers = parse_header_lines(lines)?;
    let message = if start_line
        .get(..4)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("SIP/"))
    {
        let (status, reason) = parse_status_line(start_line)?;
        SipMessage::Response(Response {
            status,
            reason,
            headers,
            body,
        })
    } else {
        let (method, uri) = parse_request_line(start_line)?;
        SipMessage::Request(Request {
            method,
            uri,
            headers,
            body,
        })
    };
    validate(message)
}

fn check_version(version: &str) -> Result<(), ParseError> {
    if version.eq_ignore_ascii_case("SIP/2.0") {
        Ok(())
    } else {
        Err(ParseError::UnsupportedVersion {
            version: snippet(version),
        })
    }
}

fn parse_status_line(line: &str) -> Result<(u16, String), ParseError> {
    let (version, rest) = line
        .split_once(' ')
        .ok_or_else(|| ParseError::InvalidStartLine {
            line: snippet(line),
        })?;
    check_version(version)?;
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    let status = (code.len() == 3 && code.bytes().all(|byte| byte.is_ascii_digit()))
        .then(|| code.parse::<u16>().ok())
        .flatten()
        .filter(|status| (100..=699).contains(status))
        .ok_or_else(|| ParseError::InvalidStatusCode {
            text: snippet(code),
        })?;
    if reason.contains(|character: char| character.is_control() && character != '\t') {
        return Err(ParseError::InvalidStartLine {
            line: snippet(line),
        });
    }
    Ok((status, reason.to_string()))
}

fn parse_request_line(line: &str) -> Result<(Method, String), ParseError> {
    let invalid = || ParseError::InvalidStartLine {
        line: snippet(line),
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    if !is_token(method) {
        return Err(invalid());
    }
    check_version(version)?;
    if uri.is_empty() || !uri.contains(':') || !uri.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(uri_error(uri, "not an absolute URI"));
    }
    Ok((Method::parse(method), uri.to_string()))
}

/// Checks the mandatory and interpreted headers, and checks then drops Content-Length.
fn validate(mut message: SipMessage) -> Result<SipMessage, ParseError> {
    let (headers, body_len) = match &mut message {
        SipMessage::Request(request) => (&mut request.headers, request.body.len()),
        SipMessage::Response(response) => (&mut response.headers, response.body.len()),
    };
    if headers.count("Via") == 0 {
        return Err(ParseError::MissingHeader { name: "Via" });
    }
    for via in headers.get_list("Via") {
        if via.is_empty() {
            return Err(invalid_value(
                "Via",
                headers.get("Via").unwrap_or_default(),
                "empty element",
            ));
        }
        // Invariant: `via_branch` reads the parameters of a parsed message's top Via, so they
        // must parse (it must not answer "no branch" for a malformed one).
        if let Some((_, params)) = via.split_once(';')
            && parse_params(params).is_none()
        {
            return Err(invalid_value("Via", via, "bad parameter"));
        }
    }
    headers.from_header()?;
    headers.to_header()?;
    headers.call_id()?;
    let (_, cseq_method) = headers.cseq()?;
    headers.contacts()?;
    headers.try_expires()?;
    headers.try_max_forwards()?;
    headers.try_content_type()?;
    for value in headers.get_all("Content-Length") {
        let declared = parse_decimal(value)
            .ok_or_else(|| invalid_value("Content-Length", value, "not a number"))?;
        if u64::try_from(body_len).ok() != Some(declared) {
            return Err(ParseError::ContentLengthMismatch {
                declared,
                actual: body_len,
            });
        }
    }
    headers.remove("Content-Length");
    if let SipMessage::Request(request) = &message
        && request.method != cseq_method
    {
        return Err(ParseError::CSeqMethodMismatch {
            request_method: snippet(request.method.as_str()),
            cseq_method: snippet(cseq_method.as_str()),
        });
    }
    Ok(message)
}
