//! The header map ([`Headers`]) and the parsers of the header values PMS acts on: name-addr
//! ([`NameAddr`]: From, To, Contact), [`Contact`], [`ContentType`], `Via` branch, `CSeq`,
//! `Call-ID`, `Expires`, `Max-Forwards` and digest credentials; plus the header-line parser
//! the message parser uses (folding, compact names).
//!
//! Invariants:
//! - Invariant: compact header names are expanded by the header-line parser, and lookups are
//!   case-insensitive and compact-aware, so `get("i")` and `get("call-id")` agree.
//! - Invariant: [`Headers`] keeps fields in received order, one entry per header line; a
//!   message from [`crate::message::parse`] has at most [`SIP_HEADERS_MAX`] of them.
//! - Invariant: the typed accessors validate what they return; the `Option` ones
//!   (`expires`, `max_forwards`, `content_type`) answer `None` for an invalid value, which
//!   [`crate::message::parse`] has already refused on a parsed message.
//! - Invariant: `NameAddr` and `Contact` display as what they parse (parameter values keep
//!   their quotes), so `NameAddr::parse(&n.to_string()) == Ok(n)`.

use std::fmt;

use pms_types::limits::SIP_HEADERS_MAX;

use crate::digest::{DigestCredentials, DigestError, parse_credentials};
use crate::method::Method;
use crate::parse_error::{ParseError, invalid_value};
use crate::text::{
    find_param, format_params, is_token, parse_params, quote, snippet, split_outside_quotes,
    unquote,
};
use crate::uri::SipUri;

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

pub(crate) fn names_match(left: &str, right: &str) -> bool {
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

    pub(crate) fn try_expires(&self) -> Result<Option<u64>, ParseError> {
        self.optional_single("Expires")?
            .map(|value| {
                parse_decimal(value)
                    .ok_or_else(|| invalid_value("Expires", value, "not a number of seconds"))
            })
            .transpose()
    }

    pub(crate) fn try_max_forwards(&self) -> Result<Option<u32>, ParseError> {
        self.optional_single("Max-Forwards")?
            .map(|value| {
                parse_decimal(value)
                    .and_then(|number| u32::try_from(number).ok())
                    .ok_or_else(|| invalid_value("Max-Forwards", value, "not a number"))
            })
            .transpose()
    }

    pub(crate) fn try_content_type(&self) -> Result<Option<ContentType>, ParseError> {
        self.optional_single("Content-Type")?
            .map(ContentType::parse)
            .transpose()
    }

    /// `Expires` in seconds; `None` when absent or (on a message not from
    /// [`crate::message::parse`]) invalid.
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

pub(crate) fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
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

/// Parses the header lines of a head (after the start line): unfolds continuations, expands
/// compact names, trims values and enforces [`SIP_HEADERS_MAX`].
pub(crate) fn parse_header_lines<'a>(
    lines: impl Iterator<Item = &'a str>,
) -> Result<Headers, ParseError> {
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
}
