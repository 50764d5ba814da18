//! A minimal SIP user agent over TLS for the workload: one connection, REGISTER with digest,
//! MESSAGE with digest (407 → answer → resend with CSeq + 1 and the same Call-ID, From tag and
//! `imdn.Message-ID`), and receiving MESSAGEs as a registered device.
//!
//! Why not `pmsctl::ua`: its `Agent` is private to `pmsctl` (only the `send`/`listen` commands
//! are public), and the harness needs what those commands hide: the Call-ID of each send, the
//! server's `X-PMS-Message-ID`, and a resend of the very same message after an unknown outcome.
//! The wire format follows `pmsctl`'s request builders.
//!
//! Invariants:
//! - Invariant: [`SipConnection::next_event`] only reads (answers are written by the caller with
//!   [`SipConnection::answer`]), so it is cancel-safe and can race timers in `tokio::select!`.
//! - Invariant: every wait has a deadline; bytes from the network never panic this code
//!   (unparsable messages are skipped and counted).
//! - Invariant: memory per connection is bounded by one read chunk plus the framer's header and
//!   body maxima.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pms_sip::{Frame, Method, Request, Response, SipMessage, StreamFramer, response_to};
use pms_types::limits::{SIP_BODY_BYTES_MAX_DEFAULT, SIP_HEADER_BYTES_MAX_DEFAULT};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

/// Bytes read from the socket at once.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Challenges answered per request (a second one only makes sense for a stale nonce).
pub const CHALLENGES_ANSWERED_MAX: u32 = 2;
/// Registration lifetime asked for; longer than any online period of a recipient.
pub const REGISTER_EXPIRES_SECS: u64 = 600;
/// Unparsable messages tolerated on one connection before it is dropped.
pub const MALFORMED_MESSAGES_MAX: u32 = 16;
/// MESSAGEs that may arrive while a REGISTER is in flight (the server delivers one at a time).
pub const MESSAGES_WHILE_REGISTERING_MAX: usize = 64;
/// Response header carrying the server's id for the stored message (see `pms-edge`).
pub const SERVER_MESSAGE_ID_HEADER: &str = "X-PMS-Message-ID";

/// Why a connection or a transaction failed. All of them end the connection.
#[derive(Debug)]
pub enum UaError {
    Connect(String),
    Io(std::io::Error),
    Closed,
    Framing(String),
    TimedOut,
    Protocol(String),
}

impl std::fmt::Display for UaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UaError::Connect(reason) => write!(f, "connect: {reason}"),
            UaError::Io(error) => write!(f, "io: {error}"),
            UaError::Closed => f.write_str("connection closed by the server"),
            UaError::Framing(reason) => write!(f, "framing: {reason}"),
            UaError::TimedOut => f.write_str("timed out"),
            UaError::Protocol(reason) => write!(f, "protocol: {reason}"),
        }
    }
}

impl std::error::Error for UaError {}

impl From<std::io::Error> for UaError {
    fn from(error: std::io::Error) -> Self {
        UaError::Io(error)
    }
}

/// An account and the SIP domain it lives in.
#[derive(Clone, Debug)]
pub struct Account {
    pub user: String,
    pub password: String,
    pub domain: String,
}

impl Account {
    pub fn aor(&self) -> String {
        format!("sip:{}@{}", self.user, self.domain)
    }
}

trait SipStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> SipStream for T {}

/// What arrived on the connection.
#[derive(Debug)]
pub enum UaEvent {
    Request(Request),
    Response(Response),
    /// A CRLFCRLF ping: the caller answers with [`SipConnection::pong`].
    Ping,
}

/// One TLS connection to a node's SIP listener.
pub struct SipConnection {
    stream: Box<dyn SipStream>,
    framer: StreamFramer,
    read_chunk: Box<[u8]>,
    local_addr: SocketAddr,
    /// To-tag of our responses; MESSAGE creates no dialog, so one tag serves all.
    to_tag: String,
    malformed: u32,
}

impl SipConnection {
    /// TCP + TLS to `server`, trusting `tls` (the cluster CA). The server name is the IP.
    pub async fn connect(
        server: SocketAddr,
        tls: Arc<ClientConfig>,
        timeout: Duration,
    ) -> Result<SipConnection, UaError> {
        let connecting = async {
            let tcp = TcpStream::connect(server)
                .await
                .map_err(|error| UaError::Connect(format!("{server}: {error}")))?;
            let local_addr = tcp.local_addr()?;
            let _ = tcp.set_nodelay(true);
            let server_name = ServerName::from(server.ip());
            let stream = TlsConnector::from(tls)
                .connect(server_name, tcp)
                .await
                .map_err(|error| UaError::Connect(format!("TLS with {server}: {error}")))?;
            Ok::<_, UaError>(SipConnection {
                stream: Box::new(stream),
                framer: StreamFramer::new(SIP_HEADER_BYTES_MAX_DEFAULT, SIP_BODY_BYTES_MAX_DEFAULT),
                read_chunk: vec![0u8; READ_CHUNK_BYTES].into_boxed_slice(),
                local_addr,
                to_tag: random_hex(8),
                malformed: 0,
            })
        };
        tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| UaError::Connect(format!("{server}: no TLS session within {timeout:?}")))?
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), UaError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    pub async fn pong(&mut self) -> Result<(), UaError> {
        self.write(b"\r\n").await
    }

    /// The next message or ping. Cancel-safe: state changes only after a read returned.
    pub async fn next_event(&mut self) -> Result<UaEvent, UaError> {
        loop {
            match self.framer.next_frame() {
                Some(Ok(Frame::Message(bytes))) => match pms_sip::parse(&bytes) {
                    Ok(SipMessage::Request(request)) => return Ok(UaEvent::Request(request)),
                    Ok(SipMessage::Response(response)) => return Ok(UaEvent::Response(response)),
                    Err(error) => {
                        self.malformed += 1;
                        if self.malformed > MALFORMED_MESSAGES_MAX {
                            return Err(UaError::Protocol(format!(
                                "more than {MALFORMED_MESSAGES_MAX} unparsable messages, last: {error}"
                            )));
                        }
                        continue;
                    }
                },
                Some(Ok(Frame::KeepAlivePing)) => return Ok(UaEvent::Ping),
                Some(Ok(Frame::KeepAlivePong | Frame::Oversized { .. })) => continue,
                Some(Err(error)) => return Err(UaError::Framing(error.to_string())),
                None => {}
            }
            let read = self.stream.read(&mut self.read_chunk).await?;
            if read == 0 {
                return Err(UaError::Closed);
            }
            let chunk = self.read_chunk.get(..read).unwrap_or_default();
            self.framer.push(chunk);
        }
    }

    /// [`next_event`](Self::next_event) with a deadline.
    pub async fn next_event_until(&mut self, deadline: Instant) -> Result<UaEvent, UaError> {
        tokio::time::timeout_at(deadline, self.next_event())
            .await
            .map_err(|_| UaError::TimedOut)?
    }

    /// Answers a request the way a device does: 200 to MESSAGE and OPTIONS, 405 otherwise,
    /// nothing to ACK.
    pub async fn answer(&mut self, request: &Request) -> Result<(), UaError> {
        let (status, reason) = match request.method {
            Method::Ack => return Ok(()),
            Method::Message | Method::Options => (200, "OK"),
            _ => (405, "Method Not Allowed"),
        };
        let mut response = response_to(request, status, reason, &self.to_tag);
        if status != 200 {
            response.headers.push("Allow", "MESSAGE, OPTIONS");
        }
        let bytes = response.to_bytes();
        self.write(&bytes).await
    }

    fn via(&self) -> String {
        format!(
            "SIP/2.0/TLS {};branch=z9hG4bK{};rport",
            self.local_addr,
            random_hex(10)
        )
    }
}

/// The identifiers a message keeps across its authenticated resend and its retries.
#[derive(Clone, Debug)]
pub struct OutgoingMessage {
    pub to_uri: String,
    pub call_id: String,
    pub from_tag: String,
    pub imdn_message_id: String,
    pub body: String,
    pub validity_secs: Option<u64>,
    /// The next CSeq to use; raised with every request sent for this message.
    pub next_cseq: u32,
}

impl OutgoingMessage {
    pub fn new(to_uri: String, body: String, validity_secs: Option<u64>) -> OutgoingMessage {
        OutgoingMessage {
            to_uri,
            call_id: random_hex(16),
            from_tag: random_hex(8),
            imdn_message_id: random_hex(12),
            body,
            validity_secs,
            next_cseq: 1,
        }
    }
}

/// The final answer to a MESSAGE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalResponse {
    pub code: u16,
    pub reason: String,
    pub server_message_id: Option<String>,
}

/// Sends `message` (answering up to [`CHALLENGES_ANSWERED_MAX`] digest challenges) and waits
/// for its final response until `deadline`. Requests arriving meanwhile are answered.
pub async fn send_message(
    connection: &mut SipConnection,
    account: &Account,
    message: &mut OutgoingMessage,
    deadline: Instant,
) -> Result<FinalResponse, UaError> {
    let mut credentials: Option<(String, String)> = None;
    let mut challenges_answered = 0;
    loop {
        let cseq = message.next_cseq;
        message.next_cseq += 1;
        let bytes = message_request(connection, account, message, cseq, credentials.as_ref());
        connection.write(&bytes).await?;
        let response = loop {
            match connection.next_event_until(deadline).await? {
                UaEvent::Ping => connection.pong().await?,
                UaEvent::Request(request) => connection.answer(&request).await?,
                UaEvent::Response(response) => {
                    let ours = response
                        .call_id()
                        .is_ok_and(|call_id| call_id == message.call_id)
                        && response.cseq().is_ok_and(|(number, method)| {
                            number == cseq && method == Method::Message
                        });
                    if ours && response.status >= 200 {
                        break response;
                    }
                }
            }
        };
        if matches!(response.status, 401 | 407) && challenges_answered < CHALLENGES_ANSWERED_MAX {
            let Some(answer) = answer_challenge(&response, account, "MESSAGE", &message.to_uri)
            else {
                return Ok(final_response(&response));
            };
            challenges_answered += 1;
            credentials = Some(answer);
            continue;
        }
        return Ok(final_response(&response));
    }
}

fn final_response(response: &Response) -> FinalResponse {
    FinalResponse {
        code: response.status,
        reason: response.reason.clone(),
        server_message_id: response
            .headers
            .get(SERVER_MESSAGE_ID_HEADER)
            .filter(|id| !id.is_empty() && id.len() <= pms_types::limits::MESSAGE_ID_BYTES_MAX)
            .map(str::to_owned),
    }
}

/// A device registration: its stable instance id and the Call-ID/From tag of its REGISTERs.
#[derive(Clone, Debug)]
pub struct Registration {
    pub instance_urn: String,
    pub call_id: String,
    pub from_tag: String,
    pub next_cseq: u32,
}

impl Registration {
    pub fn new() -> Registration {
        let mut bytes = [0u8; 16];
        rand::Rng::fill(&mut rand::thread_rng(), &mut bytes);
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        let hex = hex::encode(bytes);
        let instance_urn = format!(
            "urn:uuid:{}-{}-{}-{}-{}",
            hex.get(0..8).unwrap_or_default(),
            hex.get(8..12).unwrap_or_default(),
            hex.get(12..16).unwrap_or_default(),
            hex.get(16..20).unwrap_or_default(),
            hex.get(20..32).unwrap_or_default()
        );
        Registration {
            instance_urn,
            call_id: random_hex(16),
            from_tag: random_hex(8),
            next_cseq: 1,
        }
    }
}

impl Default for Registration {
    fn default() -> Self {
        Registration::new()
    }
}

/// Registers this connection as `account`'s device until `deadline`. MESSAGEs that arrive
/// before the 200 are answered and returned (at most [`MESSAGES_WHILE_REGISTERING_MAX`]; the
/// caller records them). A non-2xx final response is an error.
pub async fn register(
    connection: &mut SipConnection,
    account: &Account,
    registration: &mut Registration,
    deadline: Instant,
) -> Result<Vec<Request>, UaError> {
    let mut received = Vec::new();
    let mut credentials: Option<(String, String)> = None;
    let mut challenges_answered = 0;
    loop {
        let cseq = registration.next_cseq;
        registration.next_cseq += 1;
        let bytes = register_request(
            connection,
            account,
            registration,
            cseq,
            credentials.as_ref(),
        );
        connection.write(&bytes).await?;
        let response = loop {
            match connection.next_event_until(deadline).await? {
                UaEvent::Ping => connection.pong().await?,
                UaEvent::Request(request) => {
                    connection.answer(&request).await?;
                    if request.method == Method::Message {
                        if received.len() >= MESSAGES_WHILE_REGISTERING_MAX {
                            return Err(UaError::Protocol(format!(
                                "more than {MESSAGES_WHILE_REGISTERING_MAX} MESSAGEs before the REGISTER answer"
                            )));
                        }
                        received.push(request);
                    }
                }
                UaEvent::Response(response) => {
                    let ours = response
                        .call_id()
                        .is_ok_and(|call_id| call_id == registration.call_id)
                        && response.cseq().is_ok_and(|(number, method)| {
                            number == cseq && method == Method::Register
                        });
                    if ours && response.status >= 200 {
                        break response;
                    }
                }
            }
        };
        match response.status {
            200..=299 => return Ok(received),
            401 | 407 if challenges_answered < CHALLENGES_ANSWERED_MAX => {
                let uri = format!("sip:{}", account.domain);
                let answer =
                    answer_challenge(&response, account, "REGISTER", &uri).ok_or_else(|| {
                        UaError::Protocol("REGISTER challenge without a usable digest".into())
                    })?;
                challenges_answered += 1;
                credentials = Some(answer);
            }
            status => {
                return Err(UaError::Protocol(format!(
                    "REGISTER answered {status} {}",
                    response.reason
                )));
            }
        }
    }
}

/// `(header name, value)` answering a 401 (`Authorization`) or 407 (`Proxy-Authorization`).
fn answer_challenge(
    response: &Response,
    account: &Account,
    method: &str,
    uri: &str,
) -> Option<(String, String)> {
    let (challenge_header, header_name) = match response.status {
        401 => ("WWW-Authenticate", "Authorization"),
        407 => ("Proxy-Authenticate", "Proxy-Authorization"),
        _ => return None,
    };
    let challenge = pms_sip::digest::select_challenge(response.headers.get_all(challenge_header))?;
    let value = pms_sip::digest::authorization(
        &challenge,
        &account.user,
        &account.password,
        method,
        uri,
        &random_hex(8),
        1,
    );
    Some((header_name.to_owned(), value))
}

fn message_request(
    connection: &SipConnection,
    account: &Account,
    message: &OutgoingMessage,
    cseq: u32,
    credentials: Option<&(String, String)>,
) -> Vec<u8> {
    let mut request = Request::new(Method::Message, message.to_uri.clone());
    let headers = &mut request.headers;
    headers.push("Via", connection.via());
    headers.push("Max-Forwards", "70");
    headers.push(
        "From",
        format!("<{}>;tag={}", account.aor(), message.from_tag),
    );
    headers.push("To", format!("<{}>", message.to_uri));
    headers.push("Call-ID", message.call_id.clone());
    headers.push("CSeq", format!("{cseq} MESSAGE"));
    if let Some((name, value)) = credentials {
        headers.push(name.clone(), value.clone());
    }
    if let Some(validity_secs) = message.validity_secs {
        headers.push("Expires", validity_secs.to_string());
    }
    headers.push("imdn.Message-ID", message.imdn_message_id.clone());
    headers.push("User-Agent", "pms-chaos");
    headers.push("Content-Type", "text/plain;charset=UTF-8");
    request.body = message.body.as_bytes().to_vec();
    request.to_bytes()
}

fn register_request(
    connection: &SipConnection,
    account: &Account,
    registration: &Registration,
    cseq: u32,
    credentials: Option<&(String, String)>,
) -> Vec<u8> {
    let aor = account.aor();
    let mut request = Request::new(Method::Register, format!("sip:{}", account.domain));
    let headers = &mut request.headers;
    headers.push("Via", connection.via());
    headers.push("Max-Forwards", "70");
    headers.push("From", format!("<{aor}>;tag={}", registration.from_tag));
    headers.push("To", format!("<{aor}>"));
    headers.push("Call-ID", registration.call_id.clone());
    headers.push("CSeq", format!("{cseq} REGISTER"));
    if let Some((name, value)) = credentials {
        headers.push(name.clone(), value.clone());
    }
    headers.push(
        "Contact",
        format!(
            "<sip:{}@{};transport=tls>;+sip.instance=\"<{}>\";reg-id=1",
            account.user,
            connection.local_addr(),
            registration.instance_urn
        ),
    );
    headers.push("Expires", REGISTER_EXPIRES_SECS.to_string());
    headers.push("Supported", "outbound, path");
    headers.push("Allow", "MESSAGE, OPTIONS");
    headers.push("User-Agent", "pms-chaos");
    request.to_bytes()
}

/// `bytes` random bytes as lowercase hex (thread RNG: ids must differ between runs too).
pub fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::thread_rng(), buffer.as_mut_slice());
    hex::encode(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_get_version_4_instance_urns() {
        let registration = Registration::new();
        assert_eq!(registration.instance_urn.len(), "urn:uuid:".len() + 36);
        assert_eq!(registration.instance_urn.get(23..24), Some("4"));
        assert_ne!(Registration::new().call_id, registration.call_id);
    }
}
