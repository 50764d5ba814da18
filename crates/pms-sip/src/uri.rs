//! `sip:`/`sips:` URIs ([`SipUri`], RFC 3261 §19.1): parse, display, parameters and the
//! address-of-record form bindings and mailboxes are keyed by.
//!
//! Invariants:
//! - Invariant: `SipUri::parse(&uri.to_string()) == Ok(uri)` for every parsed `uri`: the host
//!   keeps its IPv6 brackets and parameters are kept as received.
//! - Invariant: a parsed URI holds only printable ASCII without `<>"\` (no header injection
//!   through a URI), a non-empty host and user (when present) and a port that fits `u16`.
//! - Invariant: a URI whose scheme is not sip/sips is refused with [`NOT_SIP_URI`] as its
//!   `detail`, so a server can answer 416 instead of 400.

use std::fmt;

use crate::parse_error::ParseError;
use crate::text::{find_param, format_params, parse_params, snippet};

/// The `detail` of [`ParseError::InvalidUri`] for a URI whose scheme is not sip/sips (a server
/// answers those with 416 rather than 400).
pub const NOT_SIP_URI: &str = "not a sip or sips URI";

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

/// A [`ParseError::InvalidUri`] with a bounded snippet of `uri`.
pub(crate) fn uri_error(uri: &str, detail: &'static str) -> ParseError {
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
            // A `;` with no parameter after it is refused like an empty `?` part, rather than
            // dropped (RFC 3261 uri-parameter needs a name).
            Some((_, "")) => return Err(uri_error(text, "empty parameter")),
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

#[cfg(test)]
mod tests {
    use super::*;

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
            "sip:a@host;",
            "nocolon",
        ] {
            assert!(SipUri::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
