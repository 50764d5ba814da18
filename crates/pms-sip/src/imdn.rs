//! Instant Message Disposition Notification (RFC 5438) bodies and headers, and the minimal
//! CPIM (RFC 3862) wrapper real clients put them in.
//!
//! Invariants:
//! - Invariant: the XML reader is a bounded, tolerant scanner (no external XML crate): it
//!   reads at most [`IMDN_BODY_BYTES_MAX`] bytes, nests at most [`IMDN_XML_DEPTH_MAX`]
//!   elements, ignores namespace prefixes, comments, processing instructions and unknown
//!   elements, and never panics.
//! - Invariant: every value written into XML is escaped; every value written into a CPIM
//!   header has line breaks removed.
//! - Invariant: an IMDN built here never requests an IMDN itself (it has no
//!   Disposition-Notification).

use crate::message::Request;
use crate::text::{find_bytes, header_safe, snippet};

/// Largest IMDN XML body read.
pub const IMDN_BODY_BYTES_MAX: usize = 16 * 1024;
/// Deepest element nesting accepted in an IMDN body.
pub const IMDN_XML_DEPTH_MAX: usize = 16;
/// Most header lines in one CPIM header block.
pub const CPIM_HEADERS_MAX: usize = 64;
/// The IMDN namespace URN used in CPIM `NS:` headers (RFC 5438 §7.1.1).
pub const IMDN_CPIM_NAMESPACE: &str = "urn:ietf:params:imdn";

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImdnError {
    #[error("IMDN body of {len} bytes exceeds {max}")]
    TooLarge { len: usize, max: usize },
    #[error("IMDN body is not UTF-8")]
    NotUtf8,
    #[error("malformed XML: {detail}")]
    MalformedXml { detail: &'static str },
    #[error("IMDN element {element} missing")]
    MissingElement { element: &'static str },
    #[error("unknown IMDN status {status:?}")]
    UnknownStatus { status: String },
    #[error(transparent)]
    Encoding(#[from] crate::encoding::EncodingError),
    #[error("malformed CPIM: {detail} ({snippet:?})")]
    MalformedCpim {
        detail: &'static str,
        snippet: String,
    },
}

/// What a sender asked for in `Disposition-Notification`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dispositions {
    pub positive_delivery: bool,
    pub negative_delivery: bool,
    pub processing: bool,
    pub display: bool,
}

impl Dispositions {
    pub fn any(&self) -> bool {
        self.positive_delivery || self.negative_delivery || self.processing || self.display
    }

    /// The `Disposition-Notification` value that asks for exactly these.
    pub fn header_value(&self) -> String {
        [
            (self.positive_delivery, "positive-delivery"),
            (self.negative_delivery, "negative-delivery"),
            (self.processing, "processing"),
            (self.display, "display"),
        ]
        .into_iter()
        .filter(|(asked, _)| *asked)
        .map(|(_, token)| token)
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// Parses a `Disposition-Notification` value (`positive-delivery, negative-delivery, ...`);
/// unknown tokens are ignored.
pub fn parse_disposition_notification(header: &str) -> Dispositions {
    let mut dispositions = Dispositions::default();
    for token in header.split(',').map(str::trim) {
        if token.eq_ignore_ascii_case("positive-delivery") {
            dispositions.positive_delivery = true;
        } else if token.eq_ignore_ascii_case("negative-delivery") {
            dispositions.negative_delivery = true;
        } else if token.eq_ignore_ascii_case("processing") {
            dispositions.processing = true;
        } else if token.eq_ignore_ascii_case("display") {
            dispositions.display = true;
        }
    }
    dispositions
}

/// IMDN statuses. `Forbidden` and `Error` are emitted as delivery notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImdnStatus {
    Delivered,
    Failed,
    Processed,
    Stored,
    Forbidden,
    Error,
    /// Only ever parsed (PMS does not generate display notifications).
    Displayed,
}

impl ImdnStatus {
    pub fn element_name(self) -> &'static str {
        match self {
            ImdnStatus::Delivered => "delivered",
            ImdnStatus::Failed => "failed",
            ImdnStatus::Processed => "processed",
            ImdnStatus::Stored => "stored",
            ImdnStatus::Forbidden => "forbidden",
            ImdnStatus::Error => "error",
            ImdnStatus::Displayed => "displayed",
        }
    }

    fn from_element_name(name: &str) -> Option<ImdnStatus> {
        Some(match name {
            "delivered" => ImdnStatus::Delivered,
            "failed" => ImdnStatus::Failed,
            "processed" => ImdnStatus::Processed,
            "stored" => ImdnStatus::Stored,
            "forbidden" => ImdnStatus::Forbidden,
            "error" => ImdnStatus::Error,
            "displayed" => ImdnStatus::Displayed,
            _ => return None,
        })
    }

    fn notification_element(self) -> &'static str {
        match self {
            ImdnStatus::Processed | ImdnStatus::Stored => "processing-notification",
            ImdnStatus::Displayed => "display-notification",
            _ => "delivery-notification",
        }
    }
}

/// Escapes text for XML content and attribute values.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(character),
        }
    }
    out
}

/// A `message/imdn+xml` body (RFC 5438 §7.2).
pub fn build_imdn(
    message_id: &str,
    datetime: &str,
    recipient_uri: &str,
    original_recipient_uri: &str,
    status: ImdnStatus,
) -> String {
    let notification = status.notification_element();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n\
         <imdn xmlns=\"urn:ietf:params:xml:ns:imdn\">\
         <message-id>{}</message-id>\
         <datetime>{}</datetime>\
         <recipient-uri>{}</recipient-uri>\
         <original-recipient-uri>{}</original-recipient-uri>\
         <{notification}><status><{}/></status></{notification}>\
         </imdn>",
        xml_escape(message_id),
        xml_escape(datetime),
        xml_escape(recipient_uri),
        xml_escape(original_recipient_uri),
        status.element_name(),
    )
}

/// The parts of an IMDN PMS acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImdnReport {
    pub message_id: String,
    pub status: ImdnStatus,
    pub datetime: Option<String>,
}

fn xml_unescape(text: &str) -> Result<String, ImdnError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        out.push_str(rest.get(..start).unwrap_or_default());
        let after = rest.get(start + 1..).unwrap_or_default();
        let end = after
            .find(';')
            .filter(|end| *end <= 10)
            .ok_or(ImdnError::MalformedXml {
                detail: "bad entity",
            })?;
        let entity = after.get(..end).unwrap_or_default();
        let character = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .map(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| entity.strip_prefix('#').map(|decimal| decimal.parse().ok()))
                .flatten()
                .and_then(char::from_u32),
        };
        out.push(character.ok_or(ImdnError::MalformedXml {
            detail: "bad entity",
        })?);
        rest = after.get(end + 1..).unwrap_or_default();
    }
    out.push_str(rest);
    Ok(out)
}

fn local_name(qualified: &str) -> &str {
    qualified.rsplit(':').next().unwrap_or(qualified)
}

/// Parses a `message/imdn+xml` body.
pub fn parse_imdn(body: &[u8]) -> Result<ImdnReport, ImdnError> {
    if body.len() > IMDN_BODY_BYTES_MAX {
        return Err(ImdnError::TooLarge {
            len: body.len(),
            max: IMDN_BODY_BYTES_MAX,
        });
    }
    let text = std::str::from_utf8(body).map_err(|_| ImdnError::NotUtf8)?;
    let mut stack: Vec<String> = Vec::new();
    let mut message_id: Option<String> = None;
    let mut datetime: Option<String> = None;
    let mut status: Option<ImdnStatus> = None;
    let mut unknown_status: Option<String> = None;
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        let content = rest.get(..open).unwrap_or_default();
        if let Some(current) = stack.last() {
            let target = match current.as_str() {
                "message-id" => Some(&mut message_id),
                "datetime" => Some(&mut datetime),
                _ => None,
            };
            if let Some(target) = target.filter(|target| stack.len() == 2 && target.is_none()) {
                *target = Some(xml_unescape(content.trim())?);
            }
        }
        let after = rest.get(open..).unwrap_or_default();
        if let Some(skipped) = [
            ("<?", "?>"),
            ("<!--", "-->"),
            ("<![CDATA[", "]]>"),
            ("<!", ">"),
        ]
        .iter()
        .find(|(start, _)| after.starts_with(start))
        {
            let end = after.find(skipped.1).ok_or(ImdnError::MalformedXml {
                detail: "unterminated markup",
            })?;
            rest = after.get(end + skipped.1.len()..).unwrap_or_default();
            continue;
        }
        let close = tag_end(after).ok_or(ImdnError::MalformedXml {
            detail: "unterminated tag",
        })?;
        let tag = after.get(1..close).unwrap_or_default();
        rest = after.get(close + 1..).unwrap_or_default();
        if let Some(name) = tag.strip_prefix('/') {
            let name = local_name(name.trim());
            if stack.pop().as_deref() != Some(name) {
                return Err(ImdnError::MalformedXml {
                    detail: "mismatched end tag",
                });
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let name = local_name(
            tag.trim_end_matches('/')
                .split([' ', '\t', '\r', '\n'])
                .next()
                .unwrap_or_default(),
        )
        .to_string();
        if name.is_empty() {
            return Err(ImdnError::MalformedXml {
                detail: "empty tag name",
            });
        }
        if stack.is_empty() && name != "imdn" {
            return Err(ImdnError::MissingElement { element: "imdn" });
        }
        if stack.last().is_some_and(|parent| parent == "status") && status.is_none() {
            match ImdnStatus::from_element_name(&name) {
                Some(found) => status = Some(found),
                None => unknown_status = Some(snippet(&name)),
            }
        }
        if !self_closing {
            if stack.len() >= IMDN_XML_DEPTH_MAX {
                return Err(ImdnError::MalformedXml {
                    detail: "nested too deep",
                });
            }
            stack.push(name);
        }
    }
    if !stack.is_empty() {
        return Err(ImdnError::MalformedXml {
            detail: "unclosed element",
        });
    }
    let message_id = message_id
        .filter(|id| !id.is_empty())
        .ok_or(ImdnError::MissingElement {
            element: "message-id",
        })?;
    let status = match (status, unknown_status) {
        (Some(status), _) => status,
        (None, Some(status)) => return Err(ImdnError::UnknownStatus { status }),
        (None, None) => return Err(ImdnError::MissingElement { element: "status" }),
    };
    Ok(ImdnReport {
        message_id,
        status,
        datetime,
    })
}

/// Index of the `>` ending the tag that starts at byte 0, skipping quoted attribute values.
fn tag_end(text: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    for (index, character) in text.char_indices() {
        match (quote, character) {
            (Some(open), _) if character == open => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(character),
            (None, '>') => return Some(index),
            _ => {}
        }
    }
    None
}

/// A CPIM message (RFC 3862): message headers, then the MIME content headers, then content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cpim {
    /// Message headers in order (`From`, `To`, `DateTime`, `NS`, `imdn.Message-ID`, …).
    pub headers: Vec<(String, String)>,
    /// The content's `Content-Type` value (empty when absent).
    pub content_type: String,
    /// All MIME content headers in order, `Content-Type` included.
    pub content_headers: Vec<(String, String)>,
    pub content: Vec<u8>,
}

impl Cpim {
    /// First message header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The prefix bound to the IMDN namespace by an `NS:` header (`imdn` when none is).
    pub fn imdn_prefix(&self) -> String {
        self.headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("NS"))
            .find_map(|(_, value)| {
                let (prefix, urn) = value.split_once('<')?;
                (urn.trim_end_matches('>').trim() == IMDN_CPIM_NAMESPACE)
                    .then(|| prefix.trim().to_string())
            })
            .filter(|prefix| !prefix.is_empty())
            .unwrap_or_else(|| "imdn".to_string())
    }
}

/// Splits one CRLF (or LF) terminated header block; returns headers and the rest.
type CpimHeaders = Vec<(String, String)>;

fn cpim_header_block(bytes: &[u8]) -> Result<(CpimHeaders, &[u8]), ImdnError> {
    let (block_end, separator_len) = match (
        find_bytes(bytes, b"\r\n\r\n", 0),
        find_bytes(bytes, b"\n\n", 0),
    ) {
        (Some(crlf), Some(lf)) if lf < crlf => (lf, 2),
        (Some(crlf), _) => (crlf, 4),
        (None, Some(lf)) => (lf, 2),
        (None, None) => {
            return Err(ImdnError::MalformedCpim {
                detail: "no blank line after headers",
                snippet: String::new(),
            });
        }
    };
    let block = std::str::from_utf8(bytes.get(..block_end).unwrap_or_default()).map_err(|_| {
        ImdnError::MalformedCpim {
            detail: "headers are not UTF-8",
            snippet: String::new(),
        }
    })?;
    let mut headers = Vec::new();
    for line in block.split('\n').map(|line| line.trim_end_matches('\r')) {
        if line.is_empty() {
            continue;
        }
        if headers.len() >= CPIM_HEADERS_MAX {
            return Err(ImdnError::MalformedCpim {
                detail: "too many headers",
                snippet: String::new(),
            });
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| ImdnError::MalformedCpim {
                detail: "header line without colon",
                snippet: snippet(line),
            })?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok((
        headers,
        bytes.get(block_end + separator_len..).unwrap_or_default(),
    ))
}

/// Parses a `message/cpim` body. The content is everything after the content headers.
pub fn parse_cpim(body: &[u8]) -> Result<Cpim, ImdnError> {
    let (headers, rest) = cpim_header_block(body)?;
    let (content_headers, content) = cpim_header_block(rest)?;
    let content_type = content_headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("Content-Type"))
        .map(|(_, value)| value.clone())
        .unwrap_or_default();
    Ok(Cpim {
        headers,
        content_type,
        content_headers,
        content: content.to_vec(),
    })
}

/// Builds a `message/cpim` body. Line breaks in names and values are replaced by spaces.
pub fn build_cpim(headers: &[(&str, &str)], content_type: &str, content: &[u8]) -> Vec<u8> {
    build_cpim_with(headers, &[("Content-Type", content_type)], content)
}

/// Builds a `message/cpim` body with the given MIME content headers (`Content-Type` first).
pub fn build_cpim_with(
    headers: &[(&str, &str)],
    content_headers: &[(&str, &str)],
    content: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + content.len());
    for block in [headers, content_headers] {
        for (name, value) in block {
            out.extend_from_slice(
                format!("{}: {}\r\n", header_safe(name), header_safe(value)).as_bytes(),
            );
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(content);
    out
}

/// An IMDN wrapped in CPIM the way RFC 5438 §7.1.1 and liblinphone send it: CPIM `From`, `To`,
/// `DateTime`, the `imdn` namespace and the notification's own `imdn.Message-ID`, then the
/// `message/imdn+xml` content with `Content-Disposition: notification`. Use it when the
/// request asked for notifications inside CPIM.
pub fn build_cpim_imdn(
    from_uri: &str,
    to_uri: &str,
    datetime: &str,
    notification_message_id: &str,
    imdn_xml: &str,
) -> Vec<u8> {
    let from = format!("<{from_uri}>");
    let to = format!("<{to_uri}>");
    let namespace = format!("imdn <{IMDN_CPIM_NAMESPACE}>");
    build_cpim_with(
        &[
            ("From", &from),
            ("To", &to),
            ("DateTime", datetime),
            ("NS", &namespace),
            ("imdn.Message-ID", notification_message_id),
        ],
        &[
            ("Content-Type", "message/imdn+xml"),
            ("Content-Disposition", "notification"),
        ],
        imdn_xml.as_bytes(),
    )
}

/// The IMDN a MESSAGE carries: a `message/imdn+xml` body, or one wrapped in `message/cpim`
/// (decoded first when the request has a `Content-Encoding`, as liblinphone deflates its
/// reports). `None` when the request carries no readable IMDN.
pub fn imdn_report(request: &Request) -> Option<ImdnReport> {
    let content_type = request.content_type()?;
    let body = crate::encoding::decoded_body(request).ok()?;
    match content_type.mime_type.as_str() {
        "message/imdn+xml" => parse_imdn(&body).ok(),
        "message/cpim" => {
            let cpim = parse_cpim(&body).ok()?;
            let inner = crate::message::ContentType::parse(&cpim.content_type).ok()?;
            (inner.mime_type == "message/imdn+xml")
                .then(|| parse_imdn(&cpim.content).ok())
                .flatten()
        }
        _ => None,
    }
}

/// IMDN request fields of a MESSAGE, wherever the client put them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImdnFields {
    pub message_id: Option<String>,
    pub dispositions: Dispositions,
    /// Whether they came from a CPIM body (then an IMDN must also be sent as CPIM).
    pub from_cpim: bool,
}

/// Finds `imdn.Message-ID` and `Disposition-Notification`: inside the CPIM body (with the
/// namespace prefix the body declares; decoded first when the request has a
/// `Content-Encoding`) when the body is `message/cpim`, else as SIP headers
/// (`imdn.Message-ID`, `Disposition-Notification` or `imdn.Disposition-Notification`).
pub fn imdn_fields(request: &Request) -> Result<ImdnFields, ImdnError> {
    let is_cpim = request
        .content_type()
        .is_some_and(|content_type| content_type.mime_type == "message/cpim");
    if is_cpim {
        let body = crate::encoding::decoded_body(request)?;
        let cpim = parse_cpim(&body)?;
        let prefix = cpim.imdn_prefix();
        return Ok(ImdnFields {
            message_id: cpim
                .header(&format!("{prefix}.Message-ID"))
                .map(str::to_string),
            dispositions: cpim
                .header(&format!("{prefix}.Disposition-Notification"))
                .map(parse_disposition_notification)
                .unwrap_or_default(),
            from_cpim: true,
        });
    }
    let headers = &request.headers;
    Ok(ImdnFields {
        message_id: headers.get("imdn.Message-ID").map(str::to_string),
        dispositions: headers
            .get("Disposition-Notification")
            .or_else(|| headers.get("imdn.Disposition-Notification"))
            .map(parse_disposition_notification)
            .unwrap_or_default(),
        from_cpim: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_parse_tolerantly() {
        let dispositions =
            parse_disposition_notification("Positive-Delivery , negative-delivery,bogus");
        assert_eq!(
            dispositions,
            Dispositions {
                positive_delivery: true,
                negative_delivery: true,
                processing: false,
                display: false
            }
        );
        assert!(!parse_disposition_notification("").any());
    }

    #[test]
    fn build_then_parse_every_status() {
        for status in [
            ImdnStatus::Delivered,
            ImdnStatus::Failed,
            ImdnStatus::Processed,
            ImdnStatus::Stored,
            ImdnStatus::Forbidden,
            ImdnStatus::Error,
        ] {
            let body = build_imdn(
                "id<&>\"'",
                "2024-01-01T00:00:00Z",
                "sip:b@x",
                "sip:b@x",
                status,
            );
            assert!(body.contains(status.notification_element()));
            assert!(!body.contains("id<"), "values must be escaped: {body}");
            assert_eq!(
                parse_imdn(body.as_bytes()),
                Ok(ImdnReport {
                    message_id: "id<&>\"'".to_string(),
                    status,
                    datetime: Some("2024-01-01T00:00:00Z".to_string())
                })
            );
        }
    }

    #[test]
    fn exact_delivered_body() {
        expect_test::expect![[r#"
            <?xml version="1.0" encoding="UTF-8"?>
            <imdn xmlns="urn:ietf:params:xml:ns:imdn"><message-id>m1</message-id><datetime>d</datetime><recipient-uri>sip:b@x</recipient-uri><original-recipient-uri>sip:o@x</original-recipient-uri><delivery-notification><status><delivered/></status></delivery-notification></imdn>"#]]
        .assert_eq(&build_imdn("m1", "d", "sip:b@x", "sip:o@x", ImdnStatus::Delivered).replace("\r\n", "\n"));
    }

    #[test]
    fn parses_rfc5438_style_body_with_prefixes_and_comments() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- a comment -->
<i:imdn xmlns:i="urn:ietf:params:xml:ns:imdn" xmlns:x="urn:x">
  <i:message-id>34jk324j</i:message-id>
  <i:datetime>2008-04-04T12:16:49-05:00</i:datetime>
  <i:recipient-uri>im:bob@example.com</i:recipient-uri>
  <x:extension attr="a>b"/>
  <i:display-notification><i:status><i:displayed/></i:status></i:display-notification>
</i:imdn>"#;
        let report = parse_imdn(body.as_bytes()).expect("valid");
        assert_eq!(report.message_id, "34jk324j");
        assert_eq!(report.status, ImdnStatus::Displayed);
    }

    #[test]
    fn rejects_malformed_imdn() {
        let cases: [(&[u8], ImdnError); 6] = [
            (b"<imdn><message-id>x</message-id></imdn>", ImdnError::MissingElement { element: "status" }),
            (b"<imdn><delivery-notification><status><delivered/></status></delivery-notification></imdn>", ImdnError::MissingElement { element: "message-id" }),
            (b"<imdn><message-id>x</message-id><delivery-notification><status><weird/></status></delivery-notification></imdn>", ImdnError::UnknownStatus { status: "weird".to_string() }),
            (b"<imdn><message-id>x</datetime></imdn>", ImdnError::MalformedXml { detail: "mismatched end tag" }),
            (b"<imdn><message-id>x", ImdnError::MalformedXml { detail: "unclosed element" }),
            (b"<other/>", ImdnError::MissingElement { element: "imdn" }),
        ];
        for (body, expected) in cases {
            assert_eq!(
                parse_imdn(body),
                Err(expected),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let deep = format!("<imdn>{}", "<a>".repeat(IMDN_XML_DEPTH_MAX + 1));
        assert_eq!(
            parse_imdn(deep.as_bytes()),
            Err(ImdnError::MalformedXml {
                detail: "nested too deep"
            })
        );
        assert!(matches!(
            parse_imdn(&vec![b' '; IMDN_BODY_BYTES_MAX + 1]),
            Err(ImdnError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_cpim_wrapped_imdn_parses_back_with_its_headers() {
        let xml = build_imdn("m-9", "d", "sip:b@x", "sip:b@x", ImdnStatus::Delivered);
        let body = build_cpim_imdn(
            "sip:b@x",
            "sip:a@x",
            "2026-12-01T00:00:00.000Z",
            "n-1",
            &xml,
        );
        let cpim = parse_cpim(&body).expect("valid CPIM");
        assert_eq!(cpim.header("From"), Some("<sip:b@x>"));
        assert_eq!(cpim.header("To"), Some("<sip:a@x>"));
        assert_eq!(cpim.header("imdn.Message-ID"), Some("n-1"));
        assert_eq!(cpim.content_type, "message/imdn+xml");
        assert!(cpim.content_headers.contains(&(
            "Content-Disposition".to_string(),
            "notification".to_string()
        )));
        let mut request = Request::new(crate::message::Method::Message, "sip:a@x");
        request.headers.push("Content-Type", "message/cpim");
        request.headers.push("Content-Encoding", "deflate");
        request.body = crate::encoding::deflate(&body);
        let report = imdn_report(&request).expect("a deflated CPIM IMDN is read");
        assert_eq!(
            (report.message_id.as_str(), report.status),
            ("m-9", ImdnStatus::Delivered)
        );
        assert_eq!(
            Dispositions {
                positive_delivery: true,
                display: true,
                ..Dispositions::default()
            }
            .header_value(),
            "positive-delivery, display"
        );
    }

    #[test]
    fn cpim_round_trip_keeps_content_bytes() {
        let content = "hello 😀\r\n\r\nsecond paragraph".as_bytes();
        let body = build_cpim(
            &[
                ("From", "<sip:a@x>"),
                ("NS", "imdn <urn:ietf:params:imdn>"),
                ("imdn.Message-ID", "m-1"),
            ],
            "text/plain; charset=utf-8",
            content,
        );
        let cpim = parse_cpim(&body).expect("valid");
        assert_eq!(cpim.content, content);
        assert_eq!(cpim.content_type, "text/plain; charset=utf-8");
        assert_eq!(cpim.header("IMDN.message-id"), Some("m-1"));
        assert!(parse_cpim(b"From: x\r\n").is_err());
    }

    fn message_with(headers: &[(&str, &str)], body: &[u8]) -> Request {
        let mut request = Request::new(crate::message::Method::Message, "sip:b@x");
        for (name, value) in headers {
            request.headers.push(*name, *value);
        }
        request.body = body.to_vec();
        request
    }

    #[test]
    fn imdn_fields_from_cpim_with_custom_prefix_or_sip_headers() {
        let body = build_cpim(
            &[
                ("NS", "my <urn:ietf:params:imdn>"),
                ("my.Message-ID", "cp-1"),
                (
                    "my.Disposition-Notification",
                    "positive-delivery, processing",
                ),
            ],
            "text/plain",
            b"hi",
        );
        let cpim_request = message_with(&[("Content-Type", "Message/CPIM")], &body);
        assert_eq!(
            imdn_fields(&cpim_request),
            Ok(ImdnFields {
                message_id: Some("cp-1".to_string()),
                dispositions: Dispositions {
                    positive_delivery: true,
                    processing: true,
                    ..Dispositions::default()
                },
                from_cpim: true
            })
        );
        let plain = message_with(
            &[
                ("Content-Type", "text/plain"),
                ("imdn.Message-ID", "sip-1"),
                ("Disposition-Notification", "negative-delivery"),
            ],
            b"hi",
        );
        let fields = imdn_fields(&plain).expect("plain");
        assert_eq!(fields.message_id.as_deref(), Some("sip-1"));
        assert!(fields.dispositions.negative_delivery && !fields.from_cpim);
    }
}
