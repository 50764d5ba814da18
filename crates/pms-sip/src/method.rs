//! SIP request methods ([`Method`]), as found on the request line and in `CSeq`.
//!
//! Invariant: [`Method::parse`] is case-sensitive (RFC 3261 §7.1) and never puts a named
//! method into `Other`, so `Method` equality is method-token equality and
//! `Method::parse(m.as_str()) == m`.

use std::fmt;

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
