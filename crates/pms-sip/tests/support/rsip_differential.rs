//! Differential oracle: the same bytes go through pms-sip's parser and through rsip 0.4.0, and
//! the fields PMS acts on are compared. rsip is a dev-dependency only (it is unmaintained and
//! limited, see `Limitation`); this file is shared by `#[path]` between
//! `tests/rsip_oracle.rs` (property test), `tests/corpus.rs` (the regression corpus, on stable)
//! and `fuzz/fuzz_targets/rsip_differential.rs` (cargo-fuzz), so all three compare the same way.
//!
//! Invariants:
//! - Invariant: fields are compared only when both parsers accepted the message. A field rsip
//!   cannot read (a typed header it fails on) is reported in `Comparison::not_compared`, never
//!   as a disagreement.
//! - Invariant: the only differences smoothed over inside [`compare`] are named limitations of
//!   rsip (quotes kept in display names, reason phrases of registered status codes replaced);
//!   every tolerated difference is a `Limitation` with a test in `tests/rsip_oracle.rs` that
//!   asserts it still holds, so the list stays true when rsip changes.
//! - Invariant: [`normalise`] only rewrites what rsip is known not to read (folded lines,
//!   whitespace before the colon, compact header names) and never touches the body, so pms-sip
//!   reads the normalised bytes exactly as it reads the original ones.

// Each including crate uses a different subset of this file.
#![allow(dead_code)]

use pms_sip::message::{self, SipMessage};
use rsip::headers::untyped::{ToTypedHeader, UntypedHeader};
use rsip::message::{HasHeaders, HeadersExt};

/// The fields both parsers are asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Kind,
    Method,
    RequestUri,
    StatusCode,
    ReasonPhrase,
    CallId,
    CSeqNumber,
    CSeqMethod,
    FromDisplayName,
    FromTag,
    ToDisplayName,
    ToTag,
    TopViaBranch,
    ContentType,
    Body,
}

/// A Request-URI as both parsers can describe it: parameter names lower-cased, `transport`
/// and `method` values lower-cased (both are case-insensitive, and rsip re-spells them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UriFields {
    pub scheme: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<(String, Option<String>)>,
}

/// A Content-Type: lower-cased `type/subtype` and parameters with quotes removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaType {
    pub mime_type: String,
    pub params: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disagreement {
    pub field: Field,
    pub ours: String,
    pub rsip: String,
}

/// What comparing one input found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    pub agreed: Vec<Field>,
    /// Fields rsip could not read, with why.
    pub not_compared: Vec<(Field, String)>,
    pub disagreements: Vec<Disagreement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    BothRejected,
    /// rsip accepted what pms-sip refused.
    OursRejected(message::ParseError),
    /// pms-sip accepted what rsip refused.
    RsipRejected(String),
    Compared(Comparison),
}

/// Why rsip may read a message differently from pms-sip. Each one has a named test in
/// `tests/rsip_oracle.rs` asserting that rsip still behaves so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limitation {
    /// No stream framing: the body is everything after the first CRLFCRLF and Content-Length
    /// is not checked, so two pipelined messages parse as one.
    NoStreamFraming,
    /// A folded header line (continuation starting with SP/HT) makes the message invalid.
    FoldedHeadersRejected,
    /// `Name : value` (whitespace before the colon) makes the message invalid.
    SpaceBeforeColonRejected,
    /// Compact names (`i:`, `f:`, `t:`, `v:`, `l:`, `c:`…) are unknown headers, so Call-ID,
    /// From, To, Via… are "missing".
    CompactNamesUnknown,
    /// Display names keep their surrounding quotes and backslash escapes.
    DisplayNameKeepsQuotes,
    /// The reason phrase of a registered status code is dropped (rsip prints its own).
    ReasonPhraseReplaced,
    /// Methods are matched case-insensitively (`message` reads as MESSAGE), although RFC 3261
    /// methods are case-sensitive.
    MethodsCaseInsensitive,
    /// Only its 14 known methods parse; any extension method makes the message invalid.
    ExtensionMethodsRejected,
    /// A user part containing `.` is not recognised: the whole `user@host` becomes the host.
    UserWithDotMisparsed,
    /// An IPv6 reference (`[2001:db8::1]`) as host makes the URI invalid.
    Ipv6ReferenceRejected,
    /// URI headers (`?subject=x`) are read as part of the host (or port).
    UriHeadersReadAsHost,
    /// Header values keep trailing whitespace (`Call-ID: abc ` reads `abc `).
    TrailingWhitespaceKept,
    /// `;name=value` parameters (URI, From/To, Via) are read as bare tokens: no quoted values,
    /// no `:`, `[`, `?`, non-ASCII or other non-token characters, no whitespace around `;` or
    /// `=` (RFC 3261 SEMI and EQUAL allow it). rsip stops at the first such character: the rest
    /// of a Via is ignored (its branch may be cut short or missing), the rest of a name-addr or
    /// Request-URI makes it unreadable. A Via line is split at `;` as a whole, so a first Via
    /// ending in its branch reads the comma and the next Via as part of the branch's value.
    ParamsTokenOnly,
    /// A Content-Type is read loosely: whitespace around `/` and `=` (RFC 3261 SLASH and EQUAL
    /// allow it) and before `;` stays in the type and parameters, a parameter without `=` is
    /// read together with the next one, and escapes in quoted values are not resolved.
    MediaTypeReadLoosely,
    /// A `tag` or `branch` parameter without a value is an unknown parameter, so a later
    /// `tag=x` counts as the tag; pms-sip reads the first `tag` parameter (a flag: no tag).
    ValuelessTagOrBranchUnknown,
    /// A Via's sent-by is read up to the first space or `;`. A comma (a list separator) does
    /// not end the first Via: `Via: SIP/2.0/UDP a:1, SIP/2.0/UDP b` is unreadable (port `1,`),
    /// and with a comma inside the first sent-by pms-sip reads a list whose first element has
    /// no branch while rsip finds one. Whitespace inside the sent-by (RFC 3261 COLON allows
    /// `host : 5060`) makes rsip ignore the Via's parameters, branch included.
    ViaSentByMisread,
    /// A name-addr is split at its first `<`, even inside a quoted display name.
    AngleBracketInQuotedDisplayName,
    /// A status line without a reason phrase (`SIP/2.0 200`) is invalid.
    StatusLineNeedsReason,
    /// A Via whose transport is not one of UDP, TCP, TLS, SCTP, TLS-SCTP, WS, WSS cannot be read.
    UnknownViaTransportUnreadable,
}

impl Limitation {
    pub const ALL: [Limitation; 19] = [
        Limitation::NoStreamFraming,
        Limitation::FoldedHeadersRejected,
        Limitation::SpaceBeforeColonRejected,
        Limitation::CompactNamesUnknown,
        Limitation::DisplayNameKeepsQuotes,
        Limitation::ReasonPhraseReplaced,
        Limitation::MethodsCaseInsensitive,
        Limitation::ExtensionMethodsRejected,
        Limitation::UserWithDotMisparsed,
        Limitation::Ipv6ReferenceRejected,
        Limitation::UriHeadersReadAsHost,
        Limitation::TrailingWhitespaceKept,
        Limitation::ParamsTokenOnly,
        Limitation::MediaTypeReadLoosely,
        Limitation::ValuelessTagOrBranchUnknown,
        Limitation::ViaSentByMisread,
        Limitation::AngleBracketInQuotedDisplayName,
        Limitation::StatusLineNeedsReason,
        Limitation::UnknownViaTransportUnreadable,
    ];
}

/// Reads `bytes` with both parsers and compares every [`Field`].
pub fn compare(bytes: &[u8]) -> Outcome {
    let ours = message::parse(bytes);
    let theirs = rsip::SipMessage::try_from(bytes);
    match (ours, theirs) {
        (Err(_), Err(_)) => Outcome::BothRejected,
        (Err(error), Ok(_)) => Outcome::OursRejected(error),
        (Ok(_), Err(error)) => Outcome::RsipRejected(error.to_string()),
        (Ok(ours), Ok(theirs)) => Outcome::Compared(compare_parsed(&ours, &theirs)),
    }
}

fn compare_parsed(ours: &SipMessage, theirs: &rsip::SipMessage) -> Comparison {
    let mut comparison = Comparison::default();
    let headers = ours.headers();
    match (ours, theirs) {
        (SipMessage::Request(request), rsip::SipMessage::Request(their_request)) => {
            comparison.agreed.push(Field::Kind);
            comparison.check(
                Field::Method,
                request.method.as_str().to_string(),
                Ok(their_request.method.to_string()),
            );
            match request.request_uri() {
                Ok(uri) => comparison.check(
                    Field::RequestUri,
                    our_uri(&uri),
                    Ok(their_uri(&their_request.uri)),
                ),
                Err(error) => comparison.skip(Field::RequestUri, format!("pms-sip: {error}")),
            }
        }
        (SipMessage::Response(response), rsip::SipMessage::Response(their_response)) => {
            comparison.agreed.push(Field::Kind);
            comparison.check(
                Field::StatusCode,
                response.status,
                Ok(their_response.status_code.code()),
            );
            // Limitation::ReasonPhraseReplaced: only unregistered codes keep their reason.
            match &their_response.status_code {
                rsip::StatusCode::Other(_, reason) => {
                    comparison.check(
                        Field::ReasonPhrase,
                        response.reason.clone(),
                        Ok(reason.clone()),
                    );
                }
                _ => comparison.skip(
                    Field::ReasonPhrase,
                    "rsip replaces the reason phrase of a registered status code".to_string(),
                ),
            }
        }
        _ => {
            comparison.disagreements.push(Disagreement {
                field: Field::Kind,
                ours: kind(ours).to_string(),
                rsip: if matches!(theirs, rsip::SipMessage::Request(_)) {
                    "request"
                } else {
                    "response"
                }
                .to_string(),
            });
            return comparison;
        }
    }

    comparison.check(
        Field::CallId,
        headers.call_id().map(str::to_string).unwrap_or_default(),
        theirs
            .call_id_header()
            .map(|call_id| call_id.value().to_string())
            .map_err(|error| error.to_string()),
    );

    let (number, method) = headers.cseq().unwrap_or((0, message::Method::Ack));
    let their_cseq = theirs
        .cseq_header()
        .and_then(|cseq| cseq.typed())
        .map_err(|error| error.to_string());
    comparison.check(
        Field::CSeqNumber,
        number,
        their_cseq.clone().map(|cseq| cseq.seq),
    );
    comparison.check(
        Field::CSeqMethod,
        method.as_str().to_string(),
        their_cseq.map(|cseq| cseq.method.to_string()),
    );

    let from = headers.from_header().ok();
    let their_from = theirs
        .from_header()
        .and_then(|from| from.typed())
        .map_err(|error| error.to_string());
    comparison.check(
        Field::FromDisplayName,
        from.as_ref().and_then(|from| from.display_name.clone()),
        their_from
            .clone()
            .map(|from| from.display_name.as_deref().map(rsip_display_name)),
    );
    comparison.check(
        Field::FromTag,
        from.as_ref()
            .and_then(|from| from.tag().map(str::to_string)),
        their_from.map(|from| from.tag().map(ToString::to_string)),
    );

    let to = headers.to_header().ok();
    let their_to = theirs
        .to_header()
        .and_then(|to| to.typed())
        .map_err(|error| error.to_string());
    comparison.check(
        Field::ToDisplayName,
        to.as_ref().and_then(|to| to.display_name.clone()),
        their_to
            .clone()
            .map(|to| to.display_name.as_deref().map(rsip_display_name)),
    );
    comparison.check(
        Field::ToTag,
        to.as_ref().and_then(|to| to.tag().map(str::to_string)),
        their_to.map(|to| to.tag().map(ToString::to_string)),
    );

    comparison.check(
        Field::TopViaBranch,
        headers.via_branch(),
        theirs
            .via_header()
            .and_then(|via| via.typed())
            .map(|via| via.branch().map(ToString::to_string))
            .map_err(|error| error.to_string()),
    );

    comparison.check(
        Field::ContentType,
        headers.content_type().map(|content_type| MediaType {
            mime_type: content_type.mime_type.clone(),
            params: content_type
                .params
                .iter()
                .map(|(name, value)| {
                    let value = value.as_deref().unwrap_or_default();
                    (
                        name.to_ascii_lowercase(),
                        unquote(value).unwrap_or_else(|| value.to_string()),
                    )
                })
                .collect(),
        }),
        their_content_type(theirs),
    );

    comparison.check(Field::Body, ours.body().to_vec(), Ok(theirs.body().clone()));
    comparison
}

/// How a compared value is shown in a [`Disagreement`]: text as itself (so limitations can be
/// recognised from it), anything else in its `Debug` form.
trait Shown {
    fn shown(&self) -> String;
}

impl Shown for String {
    fn shown(&self) -> String {
        self.clone()
    }
}

impl Shown for Option<String> {
    fn shown(&self) -> String {
        self.clone().unwrap_or_else(|| NONE.to_string())
    }
}

/// How an absent value is shown.
pub const NONE: &str = "(none)";

macro_rules! shown_by_debug {
    ($($type:ty),*) => {
        $(impl Shown for $type {
            fn shown(&self) -> String {
                format!("{self:?}")
            }
        })*
    };
}

shown_by_debug!(u16, u32, Vec<u8>, UriFields, Option<MediaType>);

impl Comparison {
    fn check<T: PartialEq + Shown>(&mut self, field: Field, ours: T, theirs: Result<T, String>) {
        match theirs {
            Ok(theirs) if theirs == ours => self.agreed.push(field),
            Ok(theirs) => self.disagreements.push(Disagreement {
                field,
                ours: ours.shown(),
                rsip: theirs.shown(),
            }),
            Err(error) => self.skip(field, format!("rsip: {error}")),
        }
    }

    fn skip(&mut self, field: Field, why: String) {
        self.not_compared.push((field, why));
    }
}

fn kind(message: &SipMessage) -> &'static str {
    match message {
        SipMessage::Request(_) => "request",
        SipMessage::Response(_) => "response",
    }
}

fn param_value_key(name: &str, value: Option<String>) -> Option<String> {
    if name == "transport" || name == "method" {
        value.map(|value| value.to_ascii_lowercase())
    } else {
        value
    }
}

fn our_uri(uri: &message::SipUri) -> UriFields {
    UriFields {
        scheme: uri.scheme.clone(),
        user: uri.user.clone(),
        password: uri.password.clone(),
        host: uri.host.clone(),
        port: uri.port,
        params: uri
            .params
            .iter()
            .map(|(name, value)| {
                let name = name.to_ascii_lowercase();
                let value = param_value_key(&name, value.clone());
                (name, value)
            })
            .collect(),
    }
}

fn their_uri(uri: &rsip::Uri) -> UriFields {
    UriFields {
        scheme: uri
            .scheme
            .as_ref()
            .map(|scheme| scheme.to_string().to_ascii_lowercase())
            .unwrap_or_default(),
        user: uri.auth.as_ref().map(|auth| auth.user.clone()),
        password: uri.auth.as_ref().and_then(|auth| auth.password.clone()),
        host: uri.host_with_port.host.to_string(),
        port: uri.host_with_port.port.map(|port| *port.value()),
        params: uri
            .params
            .iter()
            .map(|param| {
                let (name, value) = their_param(param);
                let name = name.to_ascii_lowercase();
                let value = param_value_key(&name, value);
                (name, value)
            })
            .collect(),
    }
}

fn their_param(param: &rsip::Param) -> (String, Option<String>) {
    use rsip::Param;
    let named = |name: &str, value: String| (name.to_string(), Some(value));
    match param {
        Param::Transport(transport) => named("transport", transport.to_string()),
        Param::User(user) => named("user", user.to_string()),
        Param::Method(method) => named("method", method.to_string()),
        Param::Ttl(ttl) => named("ttl", ttl.to_string()),
        Param::Maddr(maddr) => named("maddr", maddr.to_string()),
        Param::Lr => ("lr".to_string(), None),
        Param::Branch(branch) => named("branch", branch.to_string()),
        Param::Received(received) => named("received", received.to_string()),
        Param::Tag(tag) => named("tag", tag.to_string()),
        Param::Expires(expires) => named("expires", expires.to_string()),
        Param::Q(q) => named("q", q.to_string()),
        Param::Other(name, value) => (name.to_string(), value.as_ref().map(ToString::to_string)),
    }
}

fn their_content_type(message: &rsip::SipMessage) -> Result<Option<MediaType>, String> {
    use rsip::typed::MediaType as TheirMediaType;
    let Some(content_type) = message.headers().iter().find_map(|header| match header {
        rsip::Header::ContentType(content_type) => Some(content_type),
        _ => None,
    }) else {
        return Ok(None);
    };
    let typed = content_type.typed().map_err(|error| error.to_string())?;
    let (name, params) = match typed.0 {
        TheirMediaType::Sdp(params) => ("application/sdp".to_string(), params),
        TheirMediaType::Other(name, params) => (name, params),
    };
    Ok(Some(MediaType {
        mime_type: name.trim().to_ascii_lowercase(),
        params: params
            .into_iter()
            .map(|param| (param.0.trim().to_ascii_lowercase(), param.1))
            .collect(),
    }))
}

/// Limitation::DisplayNameKeepsQuotes: rsip hands back `"Alice \"A\""`; the comparison reads it
/// as the quoted-string it is.
fn rsip_display_name(display_name: &str) -> String {
    unquote(display_name).unwrap_or_else(|| display_name.to_string())
}

/// RFC 3261 quoted-string to text (`None` if `text` is not exactly one quoted string).
pub fn unquote(text: &str) -> Option<String> {
    let inner = text.strip_prefix('"')?;
    let mut out = String::new();
    let mut characters = inner.chars();
    while let Some(character) = characters.next() {
        match character {
            '\\' => out.push(characters.next()?),
            '"' => return characters.as_str().is_empty().then_some(out),
            _ => out.push(character),
        }
    }
    None
}

/// Full names of the compact header forms (RFC 3261 §7.3.3 and later RFCs).
pub fn expand_compact(name: &str) -> Option<&'static str> {
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

/// Rewrites the head so rsip can read it (Limitation::FoldedHeadersRejected,
/// SpaceBeforeColonRejected, CompactNamesUnknown): unfolds continuation lines into one space,
/// removes whitespace between a header name and its colon, and expands compact names. The
/// start line and the body are left alone; input without a CRLFCRLF is returned unchanged.
pub fn normalise(bytes: &[u8]) -> Vec<u8> {
    let Some(end) = bytes.windows(4).position(|window| window == b"\r\n\r\n") else {
        return bytes.to_vec();
    };
    let (head, rest) = bytes.split_at(end);
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for line in split_crlf(head) {
        let continues = line
            .first()
            .is_some_and(|byte| *byte == b' ' || *byte == b'\t');
        // A continuation right after the start line has no header to join (both parsers
        // refuse it), so it stays a line of its own.
        let has_header = lines.len() > 1;
        match lines.last_mut() {
            Some(previous) if continues && has_header => {
                let trimmed_end = previous
                    .iter()
                    .rposition(|byte| *byte != b' ' && *byte != b'\t')
                    .map_or(0, |position| position + 1);
                previous.truncate(trimmed_end);
                let continuation = line.trim_ascii();
                if !continuation.is_empty() {
                    // pms-sip joins with one space, unless the value so far is empty.
                    let value_is_empty = previous
                        .iter()
                        .position(|byte| *byte == b':')
                        .is_some_and(|colon| previous.len() == colon + 1);
                    if !value_is_empty {
                        previous.push(b' ');
                    }
                    previous.extend_from_slice(continuation);
                }
            }
            _ => lines.push(line.to_vec()),
        }
    }
    let mut out = Vec::with_capacity(bytes.len());
    for (index, line) in lines.iter().enumerate() {
        if index > 0 {
            out.extend_from_slice(b"\r\n");
        }
        match line.iter().position(|byte| *byte == b':') {
            Some(colon) if index > 0 => {
                let (name, value) = line.split_at(colon);
                let name = name.trim_ascii_end();
                match std::str::from_utf8(name).ok().and_then(expand_compact) {
                    Some(full) => out.extend_from_slice(full.as_bytes()),
                    None => out.extend_from_slice(name),
                }
                out.extend_from_slice(value);
            }
            _ => out.extend_from_slice(line),
        }
    }
    out.extend_from_slice(rest);
    out
}

/// Splits at CRLF only: a lone CR or LF stays inside its line, as both parsers see it.
fn split_crlf(head: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut index = 0;
    while index + 1 < head.len() {
        if head.get(index..index + 2) == Some(b"\r\n") {
            lines.push(head.get(start..index).unwrap_or_default());
            start = index + 2;
            index += 2;
        } else {
            index += 1;
        }
    }
    lines.push(head.get(start..).unwrap_or_default());
    lines
}

/// The header parameters of a From/To value: what follows the `>`, or for a bare addr-spec
/// what follows the URI (from the whitespace before its first `;`).
fn header_params(value: Option<&str>) -> Option<&str> {
    let value = value?;
    match value.rfind('>') {
        Some(end) => value.get(end + 1..),
        None => {
            let (uri, _) = value.split_once(';')?;
            value.get(uri.trim_end().len()..)
        }
    }
}

fn is_rsip_token(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&byte)
}

/// Whether `;name[=value]` parameter text holds anything rsip's parameter reader stops at:
/// anything but `;`, token names and token values.
fn beyond_rsip_params(params: &str) -> bool {
    params.split(';').any(|param| {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        !name.bytes().all(is_rsip_token) || !value.bytes().all(is_rsip_token)
    })
}

/// Whether parameter text has `name` as a flag (no `=`) parameter.
fn has_flag_param(params: &str, name: &str) -> bool {
    params
        .split(';')
        .any(|param| param.trim().eq_ignore_ascii_case(name))
}

/// The header a field is read from.
fn header_name(field: Field) -> Option<&'static str> {
    Some(match field {
        Field::CallId => "Call-ID",
        Field::CSeqNumber | Field::CSeqMethod => "CSeq",
        Field::FromDisplayName | Field::FromTag => "From",
        Field::ToDisplayName | Field::ToTag => "To",
        Field::TopViaBranch => "Via",
        Field::ContentType => "Content-Type",
        _ => return None,
    })
}

/// The values of header `name` as written in `input` (after the colon, untrimmed).
fn raw_values<'a>(input: &'a [u8], name: &str) -> Vec<&'a str> {
    let end = input
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap_or(input.len());
    let head = std::str::from_utf8(input.get(..end).unwrap_or_default()).unwrap_or_default();
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(candidate, _)| candidate.trim_end().eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
        .collect()
}

/// Whether `limitation` accounts for `disagreement` on this message as pms-sip read it.
fn explains(
    limitation: Limitation,
    disagreement: &Disagreement,
    ours: &SipMessage,
    input: &[u8],
) -> bool {
    let headers = ours.headers();
    let display_name_has_angle = |value: Option<&str>| {
        value
            .and_then(|value| message::NameAddr::parse(value).ok())
            .and_then(|name_addr| name_addr.display_name)
            .is_some_and(|display_name| display_name.contains('<'))
    };
    match (limitation, disagreement.field) {
        (Limitation::MethodsCaseInsensitive, Field::Method | Field::CSeqMethod) => {
            disagreement.ours.eq_ignore_ascii_case(&disagreement.rsip)
        }
        (Limitation::UserWithDotMisparsed, Field::RequestUri) => match ours {
            SipMessage::Request(request) => request
                .request_uri()
                .is_ok_and(|uri| uri.user.is_some_and(|user| user.contains('.'))),
            SipMessage::Response(_) => false,
        },
        (Limitation::UriHeadersReadAsHost, Field::RequestUri) => match ours {
            SipMessage::Request(request) => {
                request.request_uri().is_ok_and(|uri| uri.headers.is_some())
            }
            SipMessage::Response(_) => false,
        },
        (Limitation::TrailingWhitespaceKept, field) => header_name(field).is_some_and(|name| {
            raw_values(input, name)
                .iter()
                .any(|value| value.ends_with([' ', '\t']))
        }),
        (Limitation::ParamsTokenOnly, Field::FromTag) => {
            header_params(headers.get("From")).is_some_and(beyond_rsip_params)
        }
        (Limitation::ParamsTokenOnly, Field::ToTag) => {
            header_params(headers.get("To")).is_some_and(beyond_rsip_params)
        }
        (Limitation::ParamsTokenOnly, Field::TopViaBranch) => {
            headers
                .get_list("Via")
                .first()
                .and_then(|via| via.split_once(';'))
                .is_some_and(|(sent_by, params)| {
                    sent_by.ends_with([' ', '\t']) || beyond_rsip_params(params)
                })
                // rsip splits the whole header line at `;`: when the first Via ends with its
                // branch, that parameter runs on past the comma into the next Via.
                || headers.get("Via").is_some_and(|via| {
                    via.split(';')
                        .skip(1)
                        .find(|param| param.contains(','))
                        .is_some_and(|param| {
                            param.trim_start().starts_with("branch=") && beyond_rsip_params(param)
                        })
                })
        }
        (Limitation::ValuelessTagOrBranchUnknown, Field::FromTag) => {
            header_params(headers.get("From")).is_some_and(|params| has_flag_param(params, "tag"))
        }
        (Limitation::ValuelessTagOrBranchUnknown, Field::ToTag) => {
            header_params(headers.get("To")).is_some_and(|params| has_flag_param(params, "tag"))
        }
        (Limitation::ValuelessTagOrBranchUnknown, Field::TopViaBranch) => headers
            .get_list("Via")
            .first()
            .and_then(|via| via.split_once(';'))
            .is_some_and(|(_, params)| has_flag_param(params, "branch")),
        (Limitation::ViaSentByMisread, Field::TopViaBranch) => headers
            .get("Via")
            .and_then(|via| via.split_once(';'))
            .is_some_and(|(protocol_and_sent_by, _)| {
                let sent_by = protocol_and_sent_by
                    .trim()
                    .split_once([' ', '\t'])
                    .map_or("", |(_, sent_by)| sent_by.trim());
                protocol_and_sent_by.contains(',') || sent_by.contains([' ', '\t'])
            }),
        (Limitation::MediaTypeReadLoosely, Field::ContentType) => {
            let raw = headers.get("Content-Type").unwrap_or_default();
            let params = raw.split_once(';').map_or("", |(_, params)| params);
            let spaced_separator = ["/", "="].iter().any(|separator| {
                [" ", "\t"].iter().any(|space| {
                    raw.contains(&format!("{space}{separator}"))
                        || raw.contains(&format!("{separator}{space}"))
                })
            }) || params.contains(" ;")
                || params.contains("\t;");
            let loose_param = headers.content_type().is_some_and(|content_type| {
                content_type.params.iter().any(|(_, value)| {
                    value
                        .as_deref()
                        .is_none_or(|value| value.starts_with('"') && value.contains('\\'))
                })
            });
            spaced_separator || loose_param
        }
        (Limitation::AngleBracketInQuotedDisplayName, Field::FromDisplayName | Field::FromTag) => {
            display_name_has_angle(headers.get("From"))
        }
        (Limitation::AngleBracketInQuotedDisplayName, Field::ToDisplayName | Field::ToTag) => {
            display_name_has_angle(headers.get("To"))
        }
        _ => false,
    }
}

/// Normalises `bytes`, compares, and returns the outcome with the disagreements no
/// [`Limitation`] accounts for.
pub fn unexplained(bytes: &[u8]) -> (Outcome, Vec<Disagreement>) {
    let normalised = normalise(bytes);
    let outcome = compare(&normalised);
    let mut unexplained = Vec::new();
    if let Outcome::Compared(comparison) = &outcome
        && let Ok(ours) = message::parse(&normalised)
    {
        for disagreement in &comparison.disagreements {
            if !Limitation::ALL
                .iter()
                .any(|limitation| explains(*limitation, disagreement, &ours, &normalised))
            {
                unexplained.push(disagreement.clone());
            }
        }
    }
    (outcome, unexplained)
}

/// For arbitrary input (fuzzer, corpus): normalises, compares, and panics on any disagreement
/// no [`Limitation`] accounts for.
pub fn check_arbitrary(bytes: &[u8]) -> Outcome {
    let (outcome, unexplained) = unexplained(bytes);
    assert!(
        unexplained.is_empty(),
        "pms-sip and rsip disagree: {unexplained:?}\nnormalised input: {:?}",
        String::from_utf8_lossy(&normalise(bytes))
    );
    outcome
}
