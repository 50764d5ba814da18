//! SIP message model, parser and builder (RFC 3261 §7, §20, §25), with typed accessors for
//! the headers PMS acts on.
//!
//! Invariants:
//! - Invariant: [`parse`] accepts a message only if its head is UTF-8 without control
//!   characters (other than tab), has at most [`SIP_HEADERS_MAX`] headers, and carries exactly
//!   one valid From, To, Call-ID and CSeq and at least one Via; for requests the CSeq method
//!   equals the request method. Optional headers PMS interprets (Contact, Expires,
//!   Max-Forwards, Content-Type) are validated too, so their `Option` accessors never hide a
//!   syntax error on a parsed message.
//! - Invariant: compact header names are expanded on parse, and header lookups are
//!   case-insensitive and compact-aware, so `get("i")` and `get("call-id")` agree.
//! - Invariant: `Content-Length` is checked against the body by [`parse`] and then dropped from
//!   [`Headers`]; `to_bytes` always writes it from the body. Hence `parse(m.to_bytes()) == m`
//!   for every valid `m`, and the body survives byte for byte.
//! - Invariant: `to_bytes` never writes a line break that is not its own: control characters
//!   in names, values, URIs and reason phrases are replaced by spaces (no header injection).

use std::fmt;

use pms_types::limits::SIP_HEADERS_MAX;

use crate::digest::{DigestCredentials, DigestError, parse_credentials};
use crate::text::{
    find_bytes, find_param, format_params, header_safe, is_token, is_token_char, parse_params,
    quote, snippet, split_outside_quotes, truncate_to, unquote,
};

/// The `detail` of [`ParseError::InvalidUri`] for a URI whose scheme is not sip/sips (a server
/// answers those with 416 rather than 400).
pub const NOT_SIP_URI: &str = "not a sip or sips URI";

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

fn invalid_value(name: &'static str, value: &str, detail: &'static str) -> ParseError {
    ParseError::InvalidHeaderValue {
        name,
        value: snippet(value),
        detail,
    }
}

/// SIP request methods; unknown tokens are kept in `Other` (never one of the named ones).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Register,
    Message,
    Options,
    Invite,
    Ack,
    Bye,
    Cancel,
    Subscribe,
    Notify,
    Publish,
    Info,
    Refer,
    Update,
    Prack,
    Other(String),
}

impl Method {
    /// Maps a method token (case-sensitive, RFC 3261 §7.1) to a `Method`.
    pub fn parse(token: &str) -> Method {
        match token {
            "REGISTER" => Method::Register,
            "MESSAGE" => Method::Message,
            "OPTIONS" => Method::Options,
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "PUBLISH" => Method::Publish,
            "INFO" => Method::Info,
            "REFER" => Method::Refer,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            other => Method::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Register => "REGISTER",
            Method::Message => "MESSAGE",
            Method::Options => "OPTIONS",
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Publish => "PUBLISH",
            Method::Info => "INFO",
            Method::Refer => "REFER",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Other(other) => other,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Full names of compact header forms (RFC 3261 §7.3.3 and the RFCs that added letters).
fn expand_compact(name: &str) -> Option<&'static str> {
    let [letter] = name.as_bytes() else {
        return None;
    };
    Some(match letter.to_ascii_lowercase() {
        b'a' => "Accept-Contact",
        b'b' => "Referred-By",
        b'c' => "Content-Type",
        b'd' => "Request-Disposition",
        b'e' => "Content-Encoding",
        b'f' => "From",
        b'i' => "Call-ID",
        b'j' => "Reject-Contact",
        b'k' => "Supported",
        b'l' => "Content-Length",
        b'm' => "Contact",
        b'o' => "Event",
        b'r' => "Refer-To",
        b's' => "Subject",
        b't' => "To",
        b'u' => "Allow-Events",
        b'v' => "Via",
        b'x' => "Session-Expires",
        b'y' => "Identity",
        _ => return None,
    })
}

fn names_match(left: &str, right: &str) -> bool {
    let left = expand_compact(left).unwrap_or(left);
    let right = expand_compact(right).unwrap_or(right);
    left.eq_ignore_ascii_case(right)
}

/// Ordered header fields. Lookups are case-insensitive and compact-name aware.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    pub fn new() -> Self {
        Headers::default()
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(candidate, _)| names_match(candidate, name))
            .map(|(_, value)| value)
    }

    /// Every field value of `name`, in order (one entry per header line).
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.iter()
            .filter(|(candidate, _)| names_match(candidate, name))
            .map(|(_, value)| value)
            .collect()
    }

    /// Every element of a comma-separated list header (Via, Contact, Allow, Supported…),
    /// across all its lines; commas inside quotes and `<...>` do not split.
    pub fn get_list(&self, name: &str) -> Vec<&str> {
        self.get_all(name)
            .into_iter()
            .flat_map(|value| split_outside_quotes(value, ','))
            .collect()
    }

    pub fn count(&self, name: &str) -> usize {
        self.iter()
            .filter(|(candidate, _)| names_match(candidate, name))
            .count()
    }

    /// Appends a field.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.entries.push((name.into(), value.into()));
    }

    /// Replaces every field named `name` by one field with `value`, at the position of the
    /// first one (or at the end).
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self
            .entries
            .iter()
            .position(|(candidate, _)| names_match(candidate, name))
        {
            Some(position) => {
                if let Some(entry) = self.entries.get_mut(position) {
                    entry.1 = value;
                }
                let mut index = 0usize;
                self.entries.retain(|(candidate, _)| {
                    let keep = index <= position || !names_match(candidate, name);
                    index += 1;
                    keep
                });
            }
            None => self.push(name, value),
        }
    }

    /// Removes every field named `name`; returns how many were removed.
    pub fn remove(&mut self, name: &str) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|(candidate, _)| !names_match(candidate, name));
        before - self.entries.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    fn single(&self, name: &'static str) -> Result<&str, ParseError> {
        match self.count(name) {
            0 => Err(ParseError::MissingHeader { name }),
            1 => self.get(name).ok_or(ParseError::MissingHeader { name }),
            _ => Err(ParseError::DuplicateHeader { name }),
        }
    }

    fn optional_single(&self, name: &'static str) -> Result<Option<&str>, ParseError> {
        match self.count(name) {
            0 => Ok(None),
            1 => Ok(self.get(name)),
            _ => Err(ParseError::DuplicateHeader { name }),
        }
    }

    /// The `From` header as a name-addr.
    pub fn from_header(&self) -> Result<NameAddr, ParseError> {
        let value = self.single("From")?;
        NameAddr::parse(value).map_err(|_| invalid_value("From", value, "not a name-addr"))
    }

    /// The `To` header as a name-addr.
    pub fn to_header(&self) -> Result<NameAddr, ParseError> {
        let value = self.single("To")?;
        NameAddr::parse(value).map_err(|_| invalid_value("To", value, "not a name-addr"))
    }

    pub fn call_id(&self) -> Result<&str, ParseError> {
        let value = self.single("Call-ID")?;
        if value.is_empty() || value.contains([' ', '\t']) {
            return Err(invalid_value("Call-ID", value, "empty or contains spaces"));
        }
        Ok(value)
    }

    /// `CSeq` as (sequence number, method).
    pub fn cseq(&self) -> Result<(u32, Method), ParseError> {
        let value = self.single("CSeq")?;
        let mut parts = value.split([' ', '\t']).filter(|part| !part.is_empty());
        let (Some(number), Some(method), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid_value("CSeq", value, "expected number and method"));
        };
        if number.len() > 10 || !number.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(invalid_value(
                "CSeq",
                value,
                "sequence number is not a 32-bit number",
            ));
        }
        let number: u32 = number
            .parse()
            .map_err(|_| invalid_value("CSeq", value, "sequence number is not a 32-bit number"))?;
        if !is_token(method) {
            return Err(invalid_value("CSeq", value, "method is not a token"));
        }
        Ok((number, Method::parse(method)))
    }

    /// All Contact entries, across lines and comma lists.
    pub fn contacts(&self) -> Result<Vec<Contact>, ParseError> {
        self.get_list("Contact")
            .into_iter()
            .map(|element| {
                if element == "*" {
                    Ok(Contact::Star)
                } else {
                    NameAddr::parse(element)
                        .map(Contact::Address)
                        .map_err(|_| invalid_value("Contact", element, "not a name-addr"))
                }
            })
            .collect()
    }

    fn try_expires(&self) -> Result<Option<u64>, ParseError> {
        self.optional_single("Expires")?
            .map(|value| {
                parse_decimal(value)
                    .ok_or_else(|| invalid_value("Expires", value, "not a number of seconds"))
            })
            .transpose()
    }

    fn try_max_forwards(&self) -> Result<Option<u32>, ParseError> {
        self.optional_single("Max-Forwards")?
            .map(|value| {
                parse_decimal(value)
                    .and_then(|number| u32::try_from(number).ok())
                    .ok_or_else(|| invalid_value("Max-Forwards", value, "not a number"))
            })
            .transpose()
    }

    fn try_content_type(&self) -> Result<Option<ContentType>, ParseError> {
        self.optional_single("Content-Type")?
            .map(ContentType::parse)
            .transpose()
    }

    /// `Expires` in seconds; `None` when absent or (on a message not from [`parse`]) invalid.
    pub fn expires(&self) -> Option<u64> {
        self.try_expires().ok().flatten()
    }

    /// `Max-Forwards`; `None` when absent or invalid.
    pub fn max_forwards(&self) -> Option<u32> {
        self.try_max_forwards().ok().flatten()
    }

    /// `Content-Type`; `None` when absent or invalid.
    pub fn content_type(&self) -> Option<ContentType> {
        self.try_content_type().ok().flatten()
    }

    /// The `branch` parameter of the topmost Via.
    pub fn via_branch(&self) -> Option<String> {
        let top = self.get_list("Via").into_iter().next()?;
        let (_, params) = top.split_once(';')?;
        let params = parse_params(params)?;
        find_param(&params, "branch").flatten().map(str::to_string)
    }

    /// The first `Digest` credentials in `header_name` (`Authorization` or
    /// `Proxy-Authorization`); `Ok(None)` when there are none.
    pub fn authorization(
        &self,
        header_name: &str,
    ) -> Result<Option<DigestCredentials>, DigestError> {
        self.get_all(header_name)
            .into_iter()
            .find(|value| {
                value
                    .get(..7)
                    .is_some_and(|scheme| scheme.eq_ignore_ascii_case("digest "))
            })
            .map(parse_credentials)
            .transpose()
    }
}

fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A `sip:` or `sips:` URI (RFC 3261 §19.1).
///
/// `host` keeps IPv6 brackets (`[::1]`) so that `Display` is the inverse of `parse`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SipUri {
    /// `sip` or `sips`, lower-cased.
    pub scheme: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<(String, Option<String>)>,
    /// The raw `?` headers part, without the `?`.
    pub headers: Option<String>,
}

fn uri_error(uri: &str, detail: &'static str) -> ParseError {
    ParseError::InvalidUri {
        uri: snippet(uri),
        detail,
    }
}

impl SipUri {
    pub fn parse(text: &str) -> Result<SipUri, ParseError> {
        if !text
            .bytes()
            .all(|byte| byte.is_ascii_graphic() && !b"<>\"\\".contains(&byte))
        {
            return Err(uri_error(text, "forbidden character"));
        }
        let (scheme, rest) = text
            .split_once(':')
            .ok_or_else(|| uri_error(text, "no scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "sip" && scheme != "sips" {
            return Err(uri_error(text, NOT_SIP_URI));
        }
        let (rest, headers) = match rest.split_once('?') {
            Some((rest, headers)) if !headers.is_empty() => (rest, Some(headers.to_string())),
            Some(_) => return Err(uri_error(text, "empty headers part")),
            None => (rest, None),
        };
        let (user, password, rest) = match rest.split_once('@') {
            Some((userinfo, rest)) => {
                let (user, password) = match userinfo.split_once(':') {
                    Some((user, password)) => (user, Some(password.to_string())),
                    None => (userinfo, None),
                };
                if user.is_empty() {
                    return Err(uri_error(text, "empty user"));
                }
                (Some(user.to_string()), password, rest)
            }
            None => (None, None, rest),
        };
        let (hostport, params) = match rest.split_once(';') {
            Some((hostport, params)) => (
                hostport,
                parse_params(params).ok_or_else(|| uri_error(text, "bad parameter"))?,
            ),
            None => (rest, Vec::new()),
        };
        let (host, port) = if let Some(after_bracket) = hostport.strip_prefix('[') {
            let (address, after) = after_bracket
                .split_once(']')
                .ok_or_else(|| uri_error(text, "unterminated IPv6 reference"))?;
            if address.is_empty()
                || !address
                    .bytes()
                    .all(|byte| byte.is_ascii_hexdigit() || byte == b':' || byte == b'.')
            {
                return Err(uri_error(text, "bad IPv6 reference"));
            }
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| uri_error(text, "junk after IPv6 reference"))?,
                ),
            };
            (format!("[{address}]"), port)
        } else {
            let (host, port) = match hostport.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            };
            if host.is_empty()
                || !host
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"-._".contains(&byte))
            {
                return Err(uri_error(text, "bad host"));
            }
            (host.to_string(), port)
        };
        let port = port
            .map(|port| {
                if port.is_empty()
                    || port.len() > 5
                    || !port.bytes().all(|byte| byte.is_ascii_digit())
                {
                    return Err(uri_error(text, "bad port"));
                }
                port.parse::<u16>().map_err(|_| uri_error(text, "bad port"))
            })
            .transpose()?;
        Ok(SipUri {
            scheme,
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }

    /// A URI parameter: `Some(None)` for a flag such as `;lr`.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    /// The address-of-record form `scheme:user@host` (no port, parameters or headers), with
    /// the host lower-cased: the key PMS files bindings and mailboxes under.
    pub fn aor(&self) -> String {
        match &self.user {
            Some(user) => format!(
                "{}:{}@{}",
                self.scheme,
                user,
                self.host.to_ascii_lowercase()
            ),
            None => format!("{}:{}", self.scheme, self.host.to_ascii_lowercase()),
        }
    }
}

impl fmt::Display for SipUri {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:", self.scheme)?;
        if let Some(user) = &self.user {
            formatter.write_str(user)?;
            if let Some(password) = &self.password {
                write!(formatter, ":{password}")?;
            }
            formatter.write_str("@")?;
        }
        formatter.write_str(&self.host)?;
        if let Some(port) = self.port {
            write!(formatter, ":{port}")?;
        }
        formatter.write_str(&format_params(&self.params))?;
        if let Some(headers) = &self.headers {
            write!(formatter, "?{headers}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for SipUri {
    type Err = ParseError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        SipUri::parse(text)
    }
}

/// `[display-name] <uri> *(;param)` or `uri *(;param)` (From, To, Contact…).
/// Parameter values keep their quotes (so `Display` round-trips); use the typed helpers to
/// read them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr {
    /// Unquoted, escapes resolved.
    pub display_name: Option<String>,
    pub uri: SipUri,
    pub params: Vec<(String, Option<String>)>,
}

impl NameAddr {
    pub fn new(uri: SipUri) -> NameAddr {
        NameAddr {
            display_name: None,
            uri,
            params: Vec::new(),
        }
    }

    pub fn parse(text: &str) -> Result<NameAddr, ParseError> {
        let text = text.trim();
        let error = |detail| ParseError::InvalidHeaderValue {
            name: "name-addr",
            value: snippet(text),
            detail,
        };
        let (display_name, uri_text, rest) = if text.starts_with('"') || text.contains('<') {
            let (display_name, after_display) = if text.starts_with('"') {
                let end = closing_quote(text).ok_or_else(|| error("unterminated display name"))?;
                let quoted = text.get(..=end).unwrap_or_default();
                let display = unquote(quoted).ok_or_else(|| error("bad display name"))?;
                (
                    Some(display),
                    text.get(end + 1..).unwrap_or_default().trim_start(),
                )
            } else {
                let (tokens, _) = text.split_once('<').ok_or_else(|| error("missing <"))?;
                let tokens = tokens.trim();
                let display = (!tokens.is_empty()).then(|| tokens.to_string());
                (
                    display,
                    text.get(tokens.len()..).unwrap_or_default().trim_start(),
                )
            };
            let inside = after_display
                .strip_prefix('<')
                .ok_or_else(|| error("missing <"))?;
            let (uri_text, rest) = inside.split_once('>').ok_or_else(|| error("missing >"))?;
            (display_name, uri_text, rest.trim())
        } else {
            match text.split_once(';') {
                Some((uri_text, params)) => {
                    (None, uri_text, text.get(uri_text.len()..).unwrap_or(params))
                }
                None => (None, text, ""),
            }
        };
        let params = if rest.is_empty() {
            Vec::new()
        } else {
            let params = rest
                .strip_prefix(';')
                .ok_or_else(|| error("junk after address"))?;
            parse_params(params).ok_or_else(|| error("bad parameter"))?
        };
        Ok(NameAddr {
            display_name,
            uri: SipUri::parse(uri_text.trim())?,
            params,
        })
    }

    /// A header parameter: `Some(None)` for a flag parameter.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    /// The `tag` parameter (dialog identification, RFC 3261 §19.3).
    pub fn tag(&self) -> Option<&str> {
        self.param("tag").flatten()
    }

    /// Sets (or replaces) a parameter.
    pub fn set_param(&mut self, name: &str, value: Option<&str>) {
        let value = value.map(str::to_string);
        match self
            .params
            .iter_mut()
            .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
        {
            Some(entry) => entry.1 = value,
            None => self.params.push((name.to_string(), value)),
        }
    }

    /// The `expires` Contact parameter in seconds.
    pub fn expires(&self) -> Option<u64> {
        self.param("expires").flatten().and_then(parse_decimal)
    }

    /// The `+sip.instance` Contact parameter (RFC 5626) with quotes and `<>` stripped, e.g.
    /// `urn:uuid:…`.
    pub fn sip_instance(&self) -> Option<String> {
        let raw = self.param("+sip.instance").flatten()?;
        let unquoted = unquote(raw)?;
        let inner = unquoted
            .strip_prefix('<')
            .and_then(|inner| inner.strip_suffix('>'))
            .unwrap_or(&unquoted);
        (!inner.is_empty()).then(|| inner.to_string())
    }

    /// The `reg-id` Contact parameter (RFC 5626).
    pub fn reg_id(&self) -> Option<u32> {
        self.param("reg-id")
            .flatten()
            .and_then(parse_decimal)
            .and_then(|number| u32::try_from(number).ok())
    }
}

/// Index of the quote that closes the quoted string starting at byte 0.
fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (index, character) in text.char_indices().skip(1) {
        if escaped {
            escaped = false;
        } else if character == '\\' {
            escaped = true;
        } else if character == '"' {
            return Some(index);
        }
    }
    None
}

impl fmt::Display for NameAddr {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(display_name) = &self.display_name {
            write!(formatter, "{} ", quote(display_name))?;
        }
        write!(formatter, "<{}>{}", self.uri, format_params(&self.params))
    }
}

/// One Contact element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contact {
    /// `Contact: *` (remove all bindings, with `Expires: 0`).
    Star,
    Address(NameAddr),
}

impl Contact {
    pub fn name_addr(&self) -> Option<&NameAddr> {
        match self {
            Contact::Star => None,
            Contact::Address(name_addr) => Some(name_addr),
        }
    }

    pub fn expires(&self) -> Option<u64> {
        self.name_addr().and_then(NameAddr::expires)
    }

    pub fn sip_instance(&self) -> Option<String> {
        self.name_addr().and_then(NameAddr::sip_instance)
    }

    pub fn reg_id(&self) -> Option<u32> {
        self.name_addr().and_then(NameAddr::reg_id)
    }
}

impl fmt::Display for Contact {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Contact::Star => formatter.write_str("*"),
            Contact::Address(name_addr) => name_addr.fmt(formatter),
        }
    }
}

/// A parsed `Content-Type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentType {
    /// Lower-cased `type/subtype`.
    pub mime_type: String,
    /// Parameters, values with quotes kept.
    pub params: Vec<(String, Option<String>)>,
    /// The header value as received.
    pub raw: String,
}

impl ContentType {
    pub fn parse(text: &str) -> Result<ContentType, ParseError> {
        let error = |detail| invalid_value("Content-Type", text, detail);
        let (mime_type, params) = match text.split_once(';') {
            Some((mime_type, params)) => (
                mime_type.trim(),
                parse_params(params).ok_or_else(|| error("bad parameter"))?,
            ),
            None => (text.trim(), Vec::new()),
        };
        let (kind, subtype) = mime_type
            .split_once('/')
            .ok_or_else(|| error("expected type/subtype"))?;
        if !is_token(kind.trim()) || !is_token(subtype.trim()) {
            return Err(error("expected type/subtype"));
        }
        Ok(ContentType {
            mime_type: format!("{}/{}", kind.trim(), subtype.trim()).to_ascii_lowercase(),
            params,
            raw: text.to_string(),
        })
    }

    /// A parameter value with quotes removed.
    pub fn param(&self, name: &str) -> Option<String> {
        find_param(&self.params, name).flatten().and_then(unquote)
    }

    /// The `charset` parameter, lower-cased.
    pub fn charset(&self) -> Option<String> {
        self.param("charset")
            .map(|charset| charset.to_ascii_lowercase())
    }
}

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

fn parse_header_lines<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Headers, ParseError> {
    let mut headers = Headers::new();
    for (index, line) in lines.enumerate() {
        let line_number = index + 2;
        let invalid = || ParseError::InvalidHeaderLine {
            line_number,
            line: snippet(line),
        };
        if line.contains(|character: char| character.is_control() && character != '\t') {
            return Err(invalid());
        }
        if line.starts_with([' ', '\t']) {
            // Folded continuation (RFC 3261 §7.3.1): joins the previous value with one space.
            let continuation = line.trim_matches([' ', '\t']);
            let Some((_, value)) = headers.entries.last_mut() else {
                return Err(invalid());
            };
            if !continuation.is_empty() {
                if !value.is_empty() {
                    value.push(' ');
                }
                value.push_str(continuation);
            }
            continue;
        }
        let (name, value) = line.split_once(':').ok_or_else(invalid)?;
        let name = name.trim_end_matches([' ', '\t']);
        if !is_token(name) {
            return Err(invalid());
        }
        if headers.len() >= SIP_HEADERS_MAX {
            return Err(ParseError::TooManyHeaders {
                max: SIP_HEADERS_MAX,
            });
        }
        let name = expand_compact(name).unwrap_or(name);
        headers.push(name, value.trim_matches([' ', '\t']));
    }
    Ok(headers)
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
    if headers.get_list("Via").iter().any(|via| via.is_empty()) {
        return Err(invalid_value(
            "Via",
            headers.get("Via").unwrap_or_default(),
            "empty element",
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_lookup_is_case_insensitive_and_compact_aware() {
        let mut headers = Headers::new();
        headers.push("i", "abc");
        headers.push("Via", "v1");
        headers.push("via", "v2");
        assert_eq!(headers.get("CALL-ID"), Some("abc"));
        assert_eq!(headers.get_all("v"), vec!["v1", "v2"]);
        headers.set("Via", "v3");
        assert_eq!(headers.get_all("Via"), vec!["v3"]);
        assert_eq!(
            headers.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            vec!["i", "Via"]
        );
        assert_eq!(headers.remove("call-id"), 1);
        assert_eq!(headers.len(), 1);
        headers.set("Max-Forwards", "70");
        assert_eq!(headers.max_forwards(), Some(70));
    }

    #[test]
    fn sip_uri_parse_and_display_round_trip() {
        for text in [
            "sip:alice@example.com",
            "sips:alice:secret@example.com:5061;transport=tls;lr",
            "sip:[2001:db8::1]:5060;maddr=x",
            "sip:example.com?subject=hi",
            "sip:+12125551212;phone-context=x@gw.example.com;user=phone",
        ] {
            let uri = SipUri::parse(text).unwrap_or_else(|error| panic!("{text}: {error}"));
            assert_eq!(uri.to_string(), text);
        }
        let uri = SipUri::parse("SIP:Bob@Example.COM:5070;transport=TCP").expect("valid");
        assert_eq!(uri.scheme, "sip");
        assert_eq!(uri.user.as_deref(), Some("Bob"));
        assert_eq!(uri.port, Some(5070));
        assert_eq!(uri.param("Transport"), Some(Some("TCP")));
        assert_eq!(uri.aor(), "sip:Bob@example.com");
        for bad in [
            "tel:+123",
            "sip:",
            "sip:@host",
            "sip:a@ho st",
            "sip:a@host:99999",
            "sip:a@host:",
            "sip:[zz]",
            "sip:a@[::1",
            "sip:a@host;=x",
            "sip:a@host?",
            "nocolon",
        ] {
            assert!(SipUri::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn name_addr_forms() {
        let quoted =
            NameAddr::parse(r#""Alice \"A\" Smith" <sip:alice@a.com>;tag=88sja8x"#).expect("valid");
        assert_eq!(quoted.display_name.as_deref(), Some(r#"Alice "A" Smith"#));
        assert_eq!(quoted.tag(), Some("88sja8x"));
        let tokens = NameAddr::parse("Bob Jones <sip:bob@b.com>").expect("valid");
        assert_eq!(tokens.display_name.as_deref(), Some("Bob Jones"));
        let bare = NameAddr::parse("sip:carol@c.com;tag=1").expect("valid");
        assert_eq!(bare.uri.params, vec![]);
        assert_eq!(bare.tag(), Some("1"));
        assert_eq!(bare.to_string(), "<sip:carol@c.com>;tag=1");
        let contact = NameAddr::parse(
            r#"<sip:d@10.0.0.1:5060;transport=tcp>;expires=600;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1"#,
        )
        .expect("valid");
        assert_eq!(contact.expires(), Some(600));
        assert_eq!(
            contact.sip_instance().as_deref(),
            Some("urn:uuid:00000000-0000-1000-8000-000A95A0E128")
        );
        assert_eq!(contact.reg_id(), Some(1));
        assert_eq!(NameAddr::parse(&contact.to_string()), Ok(contact));
        for bad in [
            "\"unterminated <sip:a@b>",
            "<sip:a@b",
            "Name sip:a@b>",
            "<sip:a@b> junk",
            "<http://x>",
        ] {
            assert!(NameAddr::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn content_type_is_lowercased_with_params() {
        let content_type = ContentType::parse("Text/Plain ; charset=\"UTF-8\"").expect("valid");
        assert_eq!(content_type.mime_type, "text/plain");
        assert_eq!(content_type.charset().as_deref(), Some("utf-8"));
        assert_eq!(content_type.raw, "Text/Plain ; charset=\"UTF-8\"");
        assert!(ContentType::parse("textplain").is_err());
    }

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
