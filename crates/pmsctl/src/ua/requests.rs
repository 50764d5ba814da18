//! Builders for the requests the UA sends (MESSAGE, REGISTER) as wire bytes.
//!
//! Requests are written directly as text so that header order and spelling are exactly what
//! RFC 3261/3428/5626/5438 examples show; tests parse every built request back with
//! `pms_sip::parse`.
//!
//! Invariants:
//! - Invariant: no value placed in a header contains CR, LF or another control character;
//!   values that come from the command line are checked by [`check_header_value`] /
//!   [`check_user`] before any request is built (no header injection from arguments).
//! - Invariant: `Content-Length` is the body's length in bytes; the body is copied verbatim.

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::transport::TransportKind;

/// `Max-Forwards` of every request (RFC 3261 §8.1.1.6).
pub const MAX_FORWARDS: u32 = 70;
/// What `send` asks the recipient to report (RFC 5438 §6.2): both, always.
pub const DISPOSITION_NOTIFICATION: &str = "positive-delivery, negative-delivery";
/// Methods the UA answers (OPTIONS, 405 `Allow`).
pub const ALLOW: &str = "MESSAGE, OPTIONS";
/// User agent name in `User-Agent` / `Server`.
pub const USER_AGENT: &str = concat!("pmsctl/", env!("CARGO_PKG_VERSION"));

/// Who sends: the account and where its connection ends locally.
#[derive(Clone, Debug)]
pub struct Origin {
    pub user: String,
    pub domain: String,
    pub local_addr: SocketAddr,
    pub transport: TransportKind,
}

impl Origin {
    /// The account's address of record, `sip:user@domain`.
    pub fn aor(&self) -> String {
        format!("sip:{}@{}", self.user, self.domain)
    }

    /// `Via` value for a new client transaction (RFC 3581 `rport` asked for).
    pub fn via(&self, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch};rport",
            self.transport.via_token(),
            self.local_addr
        )
    }

    /// RFC 5626 Contact for this flow.
    pub fn contact(&self, instance_urn: &str) -> String {
        format!(
            "<sip:{}@{};transport={}>;+sip.instance=\"<{instance_urn}>\";reg-id=1",
            self.user,
            self.local_addr,
            self.transport.uri_param()
        )
    }
}

/// The identifiers that stay the same across the requests of one transaction sequence
/// (the MESSAGE and its authenticated retry, or all REGISTERs of one registration).
#[derive(Clone, Debug)]
pub struct CallIdentity {
    pub call_id: String,
    pub from_tag: String,
}

/// A `Proxy-Authorization` or `Authorization` header to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub header_name: &'static str,
    pub value: String,
}

#[derive(Clone, Debug)]
pub struct MessageRequest<'a> {
    pub origin: &'a Origin,
    pub identity: &'a CallIdentity,
    pub to_uri: &'a str,
    pub cseq: u32,
    pub branch: &'a str,
    pub date: &'a str,
    pub content_type: &'a str,
    pub expires_secs: Option<u64>,
    pub imdn_message_id: &'a str,
    pub credentials: Option<&'a Credentials>,
    pub body: &'a [u8],
}

impl MessageRequest<'_> {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = String::with_capacity(512);
        let _ = write!(head, "MESSAGE {} SIP/2.0\r\n", self.to_uri);
        let _ = write!(head, "Via: {}\r\n", self.origin.via(self.branch));
        let _ = write!(head, "Max-Forwards: {MAX_FORWARDS}\r\n");
        let _ = write!(
            head,
            "From: <{}>;tag={}\r\n",
            self.origin.aor(),
            self.identity.from_tag
        );
        let _ = write!(head, "To: <{}>\r\n", self.to_uri);
        let _ = write!(head, "Call-ID: {}\r\n", self.identity.call_id);
        let _ = write!(head, "CSeq: {} MESSAGE\r\n", self.cseq);
        let _ = write!(head, "Date: {}\r\n", self.date);
        if let Some(credentials) = self.credentials {
            let _ = write!(
                head,
                "{}: {}\r\n",
                credentials.header_name, credentials.value
            );
        }
        if let Some(expires) = self.expires_secs {
            let _ = write!(head, "Expires: {expires}\r\n");
        }
        let _ = write!(head, "imdn.Message-ID: {}\r\n", self.imdn_message_id);
        let _ = write!(
            head,
            "Disposition-Notification: {DISPOSITION_NOTIFICATION}\r\n"
        );
        let _ = write!(head, "User-Agent: {USER_AGENT}\r\n");
        let _ = write!(head, "Content-Type: {}\r\n", self.content_type);
        finish(head, self.body)
    }
}

#[derive(Clone, Debug)]
pub struct RegisterRequest<'a> {
    pub origin: &'a Origin,
    pub identity: &'a CallIdentity,
    pub cseq: u32,
    pub branch: &'a str,
    pub instance_urn: &'a str,
    pub expires_secs: u64,
    pub credentials: Option<&'a Credentials>,
}

impl RegisterRequest<'_> {
    pub fn to_bytes(&self) -> Vec<u8> {
        let aor = self.origin.aor();
        let mut head = String::with_capacity(512);
        let _ = write!(head, "REGISTER sip:{} SIP/2.0\r\n", self.origin.domain);
        let _ = write!(head, "Via: {}\r\n", self.origin.via(self.branch));
        let _ = write!(head, "Max-Forwards: {MAX_FORWARDS}\r\n");
        let _ = write!(head, "From: <{aor}>;tag={}\r\n", self.identity.from_tag);
        let _ = write!(head, "To: <{aor}>\r\n");
        let _ = write!(head, "Call-ID: {}\r\n", self.identity.call_id);
        let _ = write!(head, "CSeq: {} REGISTER\r\n", self.cseq);
        if let Some(credentials) = self.credentials {
            let _ = write!(
                head,
                "{}: {}\r\n",
                credentials.header_name, credentials.value
            );
        }
        let _ = write!(
            head,
            "Contact: {}\r\n",
            self.origin.contact(self.instance_urn)
        );
        let _ = write!(head, "Expires: {}\r\n", self.expires_secs);
        head.push_str("Supported: outbound, path\r\n");
        let _ = write!(head, "Allow: {ALLOW}\r\n");
        let _ = write!(head, "User-Agent: {USER_AGENT}\r\n");
        finish(head, &[])
    }
}

/// Adds `Content-Length` and the blank line, then the body.
fn finish(mut head: String, body: &[u8]) -> Vec<u8> {
    let _ = write!(head, "Content-Length: {}\r\n\r\n", body.len());
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Refuses text that cannot go into a header value unescaped.
pub fn check_header_value(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || value.chars().any(char::is_control) {
        return Err(format!(
            "{what} {value:?} is empty or contains control characters"
        ));
    }
    Ok(())
}

/// Refuses a user name that is not a plain SIP user part (RFC 3261 `user`, unescaped subset).
pub fn check_user(what: &str, user: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/%".contains(c);
    if user.is_empty() || !user.chars().all(allowed) {
        return Err(format!("{what} {user:?} is not a valid SIP user name"));
    }
    Ok(())
}

/// Refuses a SIP domain that is not a host name or IP address (it goes into URIs unquoted).
pub fn check_domain(domain: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-.:[]".contains(c);
    if domain.is_empty() || !domain.chars().all(allowed) {
        return Err(format!(
            "domain {domain:?} is not a host name or IP address"
        ));
    }
    Ok(())
}

/// The recipient's URI: `to` as given when it is already a SIP URI, `sip:to` when it is
/// `user@domain`, otherwise `sip:to@domain`.
pub fn recipient_uri(to: &str, domain: &str) -> Result<String, String> {
    check_header_value("recipient", to)?;
    if to.contains(['<', '>', '"', ' ']) {
        return Err(format!("recipient {to:?} is not a SIP user or URI"));
    }
    if to.starts_with("sip:") || to.starts_with("sips:") {
        return Ok(to.to_owned());
    }
    if let Some((user, host)) = to.split_once('@') {
        check_user("recipient", user)?;
        check_domain(host)?;
        return Ok(format!("sip:{to}"));
    }
    check_user("recipient", to)?;
    Ok(format!("sip:{to}@{domain}"))
}

#[cfg(test)]
mod tests {
    use pms_sip::{Method, SipMessage};

    use super::*;

    fn origin() -> Origin {
        Origin {
            user: "alice".into(),
            domain: "localhost".into(),
            local_addr: "127.0.0.1:40000".parse().expect("literal address"),
            transport: TransportKind::Tls,
        }
    }

    fn identity() -> CallIdentity {
        CallIdentity {
            call_id: "call-1".into(),
            from_tag: "tag-1".into(),
        }
    }

    #[test]
    fn message_request_has_every_header_the_server_needs() {
        let origin = origin();
        let identity = identity();
        let credentials = Credentials {
            header_name: "Proxy-Authorization",
            value: "Digest username=\"alice\"".into(),
        };
        let body = "hi 👋".as_bytes();
        let bytes = MessageRequest {
            origin: &origin,
            identity: &identity,
            to_uri: "sip:bob@localhost",
            cseq: 2,
            branch: "z9hG4bKabc",
            date: "Thu, 01 Jan 1970 00:00:00 GMT",
            content_type: "text/plain;charset=UTF-8",
            expires_secs: Some(60),
            imdn_message_id: "imdn-1",
            credentials: Some(&credentials),
            body,
        }
        .to_bytes();
        let text = String::from_utf8(bytes.clone()).expect("UTF-8");
        let expected = "MESSAGE sip:bob@localhost SIP/2.0\r\n\
            Via: SIP/2.0/TLS 127.0.0.1:40000;branch=z9hG4bKabc;rport\r\n\
            Max-Forwards: 70\r\n\
            From: <sip:alice@localhost>;tag=tag-1\r\n\
            To: <sip:bob@localhost>\r\n\
            Call-ID: call-1\r\n\
            CSeq: 2 MESSAGE\r\n\
            Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n\
            Proxy-Authorization: Digest username=\"alice\"\r\n\
            Expires: 60\r\n\
            imdn.Message-ID: imdn-1\r\n\
            Disposition-Notification: positive-delivery, negative-delivery\r\n";
        assert!(text.starts_with(expected), "{text}");
        assert!(text.ends_with("Content-Length: 7\r\n\r\nhi 👋"), "{text}");

        match pms_sip::parse(&bytes) {
            Ok(SipMessage::Request(request)) => {
                assert_eq!(request.method, Method::Message);
                assert_eq!(request.body, body);
            }
            other => panic!("built MESSAGE does not parse back: {other:?}"),
        }
    }

    #[test]
    fn register_request_carries_outbound_contact() {
        let origin = Origin {
            transport: TransportKind::Tcp,
            ..origin()
        };
        let identity = identity();
        let bytes = RegisterRequest {
            origin: &origin,
            identity: &identity,
            cseq: 1,
            branch: "z9hG4bKxyz",
            instance_urn: "urn:uuid:00000000-0000-4000-8000-000000000000",
            expires_secs: 600,
            credentials: None,
        }
        .to_bytes();
        let text = String::from_utf8(bytes.clone()).expect("UTF-8");
        assert!(
            text.starts_with("REGISTER sip:localhost SIP/2.0\r\n"),
            "{text}"
        );
        assert!(text.contains(
            "\r\nContact: <sip:alice@127.0.0.1:40000;transport=tcp>;\
             +sip.instance=\"<urn:uuid:00000000-0000-4000-8000-000000000000>\";reg-id=1\r\n"
        ));
        assert!(text.contains("\r\nFrom: <sip:alice@localhost>;tag=tag-1\r\n"));
        assert!(text.contains("\r\nTo: <sip:alice@localhost>\r\n"));
        assert!(text.contains("\r\nExpires: 600\r\n"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
        match pms_sip::parse(&bytes) {
            Ok(SipMessage::Request(request)) => assert_eq!(request.method, Method::Register),
            other => panic!("built REGISTER does not parse back: {other:?}"),
        }
    }

    #[test]
    fn recipients_and_arguments_are_checked() {
        assert_eq!(
            recipient_uri("bob", "localhost").as_deref(),
            Ok("sip:bob@localhost")
        );
        assert_eq!(
            recipient_uri("bob@example.com", "localhost").as_deref(),
            Ok("sip:bob@example.com")
        );
        assert_eq!(
            recipient_uri("sip:bob@example.com", "localhost").as_deref(),
            Ok("sip:bob@example.com")
        );
        assert!(recipient_uri("bob\r\nX: y", "localhost").is_err());
        assert!(recipient_uri("<sip:bob@x>", "localhost").is_err());
        assert!(check_user("user", "al ice").is_err());
        assert!(check_domain("example.com").is_ok());
        assert!(check_domain("[::1]").is_ok());
        assert!(check_domain("exa mple>").is_err());
        assert!(check_header_value("content type", "text/plain\r\nX: 1").is_err());
    }
}
