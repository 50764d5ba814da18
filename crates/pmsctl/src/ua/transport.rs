//! The UA's one connection to the server: connect over TLS (or plain TCP for tests), cut the
//! byte stream into SIP messages with `pms_sip::StreamFramer`, write whole messages.
//!
//! The stream is a boxed `AsyncRead + AsyncWrite`, so TLS and plain TCP share every line of
//! the UA above this file.
//!
//! Invariants:
//! - Invariant: [`Connection::next_event`] is cancel-safe: it mutates state only after a read
//!   returned, so callers may race it against timers in `tokio::select!`.
//! - Invariant: memory per connection is bounded: one read chunk of [`READ_CHUNK_BYTES`] plus
//!   the framer's `header + body` maxima (the framer discards oversized bodies itself).
//! - Invariant: bytes from the network never panic this code; unparsable messages become
//!   [`Event::Malformed`] and the caller decides.

use std::net::SocketAddr;
use std::sync::Arc;

use pms_sip::{Frame, SipMessage, StreamFramer};
use pms_types::limits::{SIP_BODY_BYTES_MAX_DEFAULT, SIP_HEADER_BYTES_MAX_DEFAULT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use super::{SipTarget, TlsTrust};

/// Bytes read from the socket at once.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Default port of a SIP TLS listener (RFC 3261 §19.1.2).
const SIP_TLS_PORT_DEFAULT: u16 = 5061;
/// Default port of a SIP TCP listener.
const SIP_TCP_PORT_DEFAULT: u16 = 5060;

/// Any byte stream the UA can talk SIP over.
pub trait SipStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> SipStream for T {}

/// Transport token for `Via` and the `transport=` URI parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    Tls,
    Tcp,
}

impl TransportKind {
    /// As written in a `Via` header (`SIP/2.0/TLS`).
    pub fn via_token(self) -> &'static str {
        match self {
            TransportKind::Tls => "TLS",
            TransportKind::Tcp => "TCP",
        }
    }

    /// As written in a `transport=` URI parameter.
    pub fn uri_param(self) -> &'static str {
        match self {
            TransportKind::Tls => "tls",
            TransportKind::Tcp => "tcp",
        }
    }
}

/// A failure of the connection itself (as opposed to a SIP error response).
#[derive(Debug)]
pub enum TransportError {
    /// Bad `--server`, unreadable CA file, TCP connect or TLS handshake failure.
    Connect(String),
    Io(std::io::Error),
    /// The server closed the connection.
    Closed,
    /// The byte stream cannot be framed any more (the framer is poisoned).
    Framing(String),
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::Connect(reason) => write!(formatter, "connect: {reason}"),
            TransportError::Io(error) => write!(formatter, "connection: {error}"),
            TransportError::Closed => formatter.write_str("connection closed by server"),
            TransportError::Framing(reason) => write!(formatter, "framing: {reason}"),
        }
    }
}

impl From<std::io::Error> for TransportError {
    fn from(error: std::io::Error) -> Self {
        TransportError::Io(error)
    }
}

/// What arrived on the connection.
#[derive(Debug)]
pub enum Event {
    Message(SipMessage),
    /// CRLFCRLF from the server: answer with a CRLF pong.
    KeepAlivePing,
    /// CRLF answering our ping.
    KeepAlivePong,
    /// A message that could not be parsed, or whose body was too large; already skipped.
    Malformed(String),
}

pub struct Connection {
    stream: Box<dyn SipStream>,
    framer: StreamFramer,
    read_chunk: Box<[u8]>,
    local_addr: SocketAddr,
    kind: TransportKind,
    /// Set while we wait for a pong: a lone CRLF then is a pong, not half a ping.
    awaiting_pong: bool,
}

impl Connection {
    /// Opens the TCP connection and, unless the target is plain TCP, the TLS session.
    pub async fn connect(target: &SipTarget) -> Result<Connection, TransportError> {
        let default_port = match target.trust {
            TlsTrust::PlainTcp => SIP_TCP_PORT_DEFAULT,
            _ => SIP_TLS_PORT_DEFAULT,
        };
        let (host, port) = split_host_port(&target.server, default_port)?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|error| TransportError::Connect(format!("{}: {error}", target.server)))?;
        let local_addr = tcp.local_addr()?;
        let _ = tcp.set_nodelay(true);
        let config = match &target.trust {
            TlsTrust::PlainTcp => {
                return Ok(Connection::new(
                    Box::new(tcp),
                    local_addr,
                    TransportKind::Tcp,
                ));
            }
            TlsTrust::Insecure => pms_crypto::insecure_client_config(),
            TlsTrust::CaFile(path) => pms_crypto::client_config(path).map_err(|error| {
                TransportError::Connect(format!("CA file {}: {error}", path.display()))
            })?,
        };
        let server_name = ServerName::try_from(host.clone())
            .map_err(|error| TransportError::Connect(format!("server name {host:?}: {error}")))?;
        let tls = TlsConnector::from(Arc::clone(&config))
            .connect(server_name, tcp)
            .await
            .map_err(|error| {
                TransportError::Connect(format!("TLS handshake with {}: {error}", target.server))
            })?;
        Ok(Connection::new(
            Box::new(tls),
            local_addr,
            TransportKind::Tls,
        ))
    }

    /// Wraps an already connected stream (tests, or callers with their own transport).
    pub fn new(stream: Box<dyn SipStream>, local_addr: SocketAddr, kind: TransportKind) -> Self {
        Connection {
            stream,
            framer: StreamFramer::new(SIP_HEADER_BYTES_MAX_DEFAULT, SIP_BODY_BYTES_MAX_DEFAULT),
            read_chunk: vec![0u8; READ_CHUNK_BYTES].into_boxed_slice(),
            local_addr,
            kind,
            awaiting_pong: false,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn kind(&self) -> TransportKind {
        self.kind
    }

    /// Writes one whole message (or keep-alive) and flushes it.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Sends an RFC 5626 CRLFCRLF ping.
    pub async fn ping(&mut self) -> Result<(), TransportError> {
        self.awaiting_pong = true;
        self.write(b"\r\n\r\n").await
    }

    /// The next message or keep-alive. Cancel-safe (see the file's invariants).
    pub async fn next_event(&mut self) -> Result<Event, TransportError> {
        loop {
            if let Some(event) = self.next_buffered_event()? {
                return Ok(event);
            }
            let read = self.stream.read(&mut self.read_chunk).await?;
            if read == 0 {
                return Err(TransportError::Closed);
            }
            let chunk = self.read_chunk.get(..read).unwrap_or_default();
            self.framer.push(chunk);
        }
    }

    fn next_buffered_event(&mut self) -> Result<Option<Event>, TransportError> {
        match self.framer.next_frame() {
            Some(Ok(Frame::Message(bytes))) => Ok(Some(match pms_sip::parse(&bytes) {
                Ok(message) => Event::Message(message),
                Err(error) => Event::Malformed(format!("unparsable SIP message: {error}")),
            })),
            Some(Ok(Frame::KeepAlivePing)) => Ok(Some(Event::KeepAlivePing)),
            Some(Ok(Frame::KeepAlivePong)) => {
                self.awaiting_pong = false;
                Ok(Some(Event::KeepAlivePong))
            }
            Some(Ok(Frame::Oversized {
                declared_body_len, ..
            })) => Ok(Some(Event::Malformed(format!(
                "message with a {declared_body_len}-byte body skipped (limit {SIP_BODY_BYTES_MAX_DEFAULT})"
            )))),
            Some(Err(error)) => Err(TransportError::Framing(error.to_string())),
            None => {
                if self.awaiting_pong && self.framer.take_lone_crlf() {
                    self.awaiting_pong = false;
                    return Ok(Some(Event::KeepAlivePong));
                }
                Ok(None)
            }
        }
    }
}

/// Splits `HOST:PORT`, `HOST`, `[V6]:PORT` or `[V6]`; the host comes back without brackets.
pub fn split_host_port(server: &str, default_port: u16) -> Result<(String, u16), TransportError> {
    let invalid = || TransportError::Connect(format!("invalid server address {server:?}"));
    let (host, port_text) = if let Some(rest) = server.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(invalid)?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or_else(invalid)?)),
        }
    } else if server.matches(':').count() == 1 {
        let (host, port) = server.split_once(':').ok_or_else(invalid)?;
        (host, Some(port))
    } else {
        // No colon, or a bare IPv6 address.
        (server, None)
    };
    if host.is_empty() {
        return Err(invalid());
    }
    let port = match port_text {
        Some(text) => text.parse::<u16>().map_err(|_| invalid())?,
        None => default_port,
    };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_split_into_host_and_port() {
        let split = |text: &str| split_host_port(text, 5061).ok();
        assert_eq!(split("localhost:5061"), Some(("localhost".into(), 5061)));
        assert_eq!(split("10.0.0.1:7000"), Some(("10.0.0.1".into(), 7000)));
        assert_eq!(
            split("sip.example.com"),
            Some(("sip.example.com".into(), 5061))
        );
        assert_eq!(split("[::1]:5062"), Some(("::1".into(), 5062)));
        assert_eq!(split("[::1]"), Some(("::1".into(), 5061)));
        assert_eq!(split("::1"), Some(("::1".into(), 5061)));
        assert_eq!(split("host:notaport"), None);
        assert_eq!(split(":5061"), None);
        assert_eq!(split("[::1]x"), None);
    }
}
