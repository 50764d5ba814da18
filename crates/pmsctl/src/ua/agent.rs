//! The event loop shared by `send` and `listen`: one connection, its registration (RFC 5626
//! style, with digest auth and refresh), keep-alives, and the answers every device owes
//! (200 to MESSAGE, 200 to OPTIONS, 405/501 to the rest, pongs to pings).
//!
//! [`Agent::next`] hands the caller only what the caller decides on: received MESSAGEs (already
//! answered 200), responses that are not for the registration, and registration outcomes.
//!
//! Invariants:
//! - Invariant: every request received gets exactly one final response, except ACK (RFC 3261
//!   §17.2.1: never answered).
//! - Invariant: at most [`CHALLENGES_ANSWERED_MAX`] challenges are answered per request chain,
//!   so a server that keeps refusing credentials ends in an error, not a loop.
//! - Invariant: every wait is bounded: by the caller's deadline, by [`TRANSACTION_TIMEOUT`]
//!   for a REGISTER, and the loop always wakes for the next keep-alive.

use std::time::Duration;

use pms_sip::{Method, Request, Response, SipMessage, response_to};
use tokio::time::Instant;

use super::SipTarget;
use super::ids;
use super::requests::{ALLOW, CallIdentity, Credentials, Origin, RegisterRequest, USER_AGENT};
use super::transport::{Connection, Event, TransportError};

/// RFC 5626 §4.4.1 CRLF keep-alive period (the issue asks for about 25 s, below NAT timeouts).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(25);
/// Registration lifetime asked for.
pub const REGISTER_EXPIRES_SECS: u64 = pms_types::limits::REGISTER_EXPIRES_DEFAULT_SECS;
/// Timer F (64 × T1): a request without a final response by then has failed.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(32);
/// Challenges answered per request chain (a second one only makes sense for a stale nonce).
pub const CHALLENGES_ANSWERED_MAX: u32 = 2;
/// Refresh a registration this long before it runs out (or halfway, for short ones).
const REGISTER_REFRESH_MARGIN_SECS: u64 = 60;

/// What the caller of [`Agent::next`] acts on.
#[derive(Debug)]
pub enum AgentEvent {
    /// A MESSAGE, already answered `200 OK`.
    Message(Request),
    /// A response that does not belong to the registration.
    Response(Response),
    /// A REGISTER (first or refresh) got its 2xx.
    Registered { expires_secs: u64 },
    /// A REGISTER failed; `code` is absent on timeout or unusable challenge.
    RegisterFailed { code: Option<u16>, reason: String },
    /// The caller's deadline passed.
    DeadlinePassed,
}

#[derive(Debug)]
enum RegistrationState {
    /// A REGISTER with this CSeq is in flight.
    Pending {
        cseq: u32,
        give_up_at: Instant,
        challenges_answered: u32,
    },
    Active {
        refresh_at: Instant,
    },
}

#[derive(Debug)]
struct Registration {
    identity: CallIdentity,
    last_cseq: u32,
    state: RegistrationState,
}

pub struct Agent {
    connection: Connection,
    origin: Origin,
    password: String,
    instance_urn: String,
    registration: Option<Registration>,
    keepalive_at: Instant,
    /// To-tag of our responses; MESSAGE and OPTIONS create no dialog, so one tag serves all.
    to_tag: String,
}

enum Wake {
    Network(Result<Event, TransportError>),
    Timer,
}

impl Agent {
    pub async fn connect(
        target: &SipTarget,
        user: &str,
        password: &str,
    ) -> Result<Agent, TransportError> {
        let connection = Connection::connect(target).await?;
        Ok(Agent::over(connection, &target.domain, user, password))
    }

    /// An agent over an already open connection.
    pub fn over(connection: Connection, domain: &str, user: &str, password: &str) -> Agent {
        let origin = Origin {
            user: user.to_owned(),
            domain: domain.to_owned(),
            local_addr: connection.local_addr(),
            transport: connection.kind(),
        };
        Agent {
            connection,
            origin,
            password: password.to_owned(),
            instance_urn: ids::new_instance_urn(),
            registration: None,
            keepalive_at: Instant::now() + KEEPALIVE_INTERVAL,
            to_tag: ids::new_tag(),
        }
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        self.connection.write(bytes).await
    }

    /// Credentials answering a 401/407 `response` to `method` on `uri`; `None` if the response
    /// carries no challenge we can answer.
    pub fn answer_challenge(
        &self,
        response: &Response,
        method: &str,
        uri: &str,
    ) -> Option<Credentials> {
        answer_challenge(response, &self.origin.user, &self.password, method, uri)
    }

    /// Sends the first REGISTER of this agent's binding.
    pub async fn register(&mut self) -> Result<(), TransportError> {
        let identity = match self.registration.take() {
            Some(registration) => (registration.identity, registration.last_cseq),
            None => (
                CallIdentity {
                    call_id: ids::new_call_id(),
                    from_tag: ids::new_tag(),
                },
                0,
            ),
        };
        self.send_register(identity.0, identity.1 + 1, None, 0)
            .await
    }

    async fn send_register(
        &mut self,
        identity: CallIdentity,
        cseq: u32,
        credentials: Option<&Credentials>,
        challenges_answered: u32,
    ) -> Result<(), TransportError> {
        let branch = ids::new_branch();
        let bytes = RegisterRequest {
            origin: &self.origin,
            identity: &identity,
            cseq,
            branch: &branch,
            instance_urn: &self.instance_urn,
            expires_secs: REGISTER_EXPIRES_SECS,
            credentials,
        }
        .to_bytes();
        self.registration = Some(Registration {
            identity,
            last_cseq: cseq,
            state: RegistrationState::Pending {
                cseq,
                give_up_at: Instant::now() + TRANSACTION_TIMEOUT,
                challenges_answered,
            },
        });
        self.connection.write(&bytes).await
    }

    /// Waits for the next event worth the caller's attention, doing keep-alives, registration
    /// refreshes and routine answers meanwhile.
    pub async fn next(&mut self, deadline: Option<Instant>) -> Result<AgentEvent, TransportError> {
        loop {
            let mut wake_at = self.keepalive_at;
            if let Some(registration) = &self.registration {
                wake_at = wake_at.min(match registration.state {
                    RegistrationState::Pending { give_up_at, .. } => give_up_at,
                    RegistrationState::Active { refresh_at } => refresh_at,
                });
            }
            if let Some(deadline) = deadline {
                wake_at = wake_at.min(deadline);
            }
            let wake = tokio::select! {
                event = self.connection.next_event() => Wake::Network(event),
                () = tokio::time::sleep_until(wake_at) => Wake::Timer,
            };
            let event = match wake {
                Wake::Network(event) => event?,
                Wake::Timer => {
                    if let Some(event) = self.on_timer(deadline).await? {
                        return Ok(event);
                    }
                    continue;
                }
            };
            let handled = match event {
                Event::KeepAlivePing => {
                    self.connection.write(b"\r\n").await?;
                    None
                }
                Event::KeepAlivePong => None,
                Event::Malformed(reason) => {
                    super::note(&format!("ignored from server: {reason}"));
                    None
                }
                Event::Message(SipMessage::Request(request)) => self.on_request(request).await?,
                Event::Message(SipMessage::Response(response)) => {
                    self.on_response(response).await?
                }
            };
            if let Some(event) = handled {
                return Ok(event);
            }
        }
    }

    async fn on_timer(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<AgentEvent>, TransportError> {
        let now = Instant::now();
        if deadline.is_some_and(|deadline| now >= deadline) {
            return Ok(Some(AgentEvent::DeadlinePassed));
        }
        if now >= self.keepalive_at {
            self.keepalive_at = now + KEEPALIVE_INTERVAL;
            self.connection.ping().await?;
        }
        let Some(registration) = &self.registration else {
            return Ok(None);
        };
        match registration.state {
            RegistrationState::Pending { give_up_at, .. } if now >= give_up_at => {
                self.registration = None;
                Ok(Some(AgentEvent::RegisterFailed {
                    code: None,
                    reason: "no response to REGISTER".to_owned(),
                }))
            }
            RegistrationState::Active { refresh_at } if now >= refresh_at => {
                self.register().await?;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    async fn on_request(&mut self, request: Request) -> Result<Option<AgentEvent>, TransportError> {
        let (status, reason) = match &request.method {
            Method::Ack => return Ok(None),
            Method::Message => (200, "OK"),
            Method::Options => (200, "OK"),
            Method::Other(_) => (501, "Not Implemented"),
            _ => (405, "Method Not Allowed"),
        };
        let mut response = response_to(&request, status, reason, &self.to_tag);
        if status != 200 || request.method == Method::Options {
            response.headers.push("Allow", ALLOW);
        }
        if request.method == Method::Options {
            response
                .headers
                .push("Accept", "text/plain, message/imdn+xml, message/cpim, */*");
            response.headers.push("Supported", "outbound");
        }
        response.headers.push("Server", USER_AGENT);
        self.connection.write(&response.to_bytes()).await?;
        Ok((request.method == Method::Message).then_some(AgentEvent::Message(request)))
    }

    async fn on_response(
        &mut self,
        response: Response,
    ) -> Result<Option<AgentEvent>, TransportError> {
        let Some(registration) = &self.registration else {
            return Ok(Some(AgentEvent::Response(response)));
        };
        let RegistrationState::Pending {
            cseq,
            challenges_answered,
            ..
        } = registration.state
        else {
            return Ok(Some(AgentEvent::Response(response)));
        };
        let ours = response
            .call_id()
            .is_ok_and(|id| id == registration.identity.call_id)
            && response
                .cseq()
                .is_ok_and(|(number, method)| number == cseq && method == Method::Register);
        if !ours {
            return Ok(Some(AgentEvent::Response(response)));
        }
        match response.status {
            100..=199 => Ok(None),
            200..=299 => {
                let expires_secs = self.granted_expires(&response);
                let refresh_after_secs = if expires_secs > 2 * REGISTER_REFRESH_MARGIN_SECS {
                    expires_secs - REGISTER_REFRESH_MARGIN_SECS
                } else {
                    (expires_secs / 2).max(1)
                };
                if let Some(registration) = &mut self.registration {
                    registration.state = RegistrationState::Active {
                        refresh_at: Instant::now() + Duration::from_secs(refresh_after_secs),
                    };
                }
                Ok(Some(AgentEvent::Registered { expires_secs }))
            }
            401 | 407 if challenges_answered < CHALLENGES_ANSWERED_MAX => {
                let uri = format!("sip:{}", self.origin.domain);
                let Some(credentials) = self.answer_challenge(&response, "REGISTER", &uri) else {
                    self.registration = None;
                    return Ok(Some(AgentEvent::RegisterFailed {
                        code: Some(response.status),
                        reason: format!("{} (no digest challenge we support)", response.reason),
                    }));
                };
                let identity = registration.identity.clone();
                let next_cseq = registration.last_cseq + 1;
                self.send_register(
                    identity,
                    next_cseq,
                    Some(&credentials),
                    challenges_answered + 1,
                )
                .await?;
                Ok(None)
            }
            status => {
                self.registration = None;
                Ok(Some(AgentEvent::RegisterFailed {
                    code: Some(status),
                    reason: response.reason,
                }))
            }
        }
    }

    /// The lifetime the registrar granted: our Contact's `expires`, else `Expires`, else what
    /// we asked for.
    fn granted_expires(&self, response: &Response) -> u64 {
        let ours = response.contacts().ok().and_then(|contacts| {
            contacts.into_iter().find_map(|contact| {
                (contact.sip_instance().as_deref() == Some(self.instance_urn.as_str()))
                    .then(|| contact.expires())
                    .flatten()
            })
        });
        ours.or_else(|| response.expires())
            .unwrap_or(REGISTER_EXPIRES_SECS)
    }
}

/// Credentials for a 401 (`Authorization`) or 407 (`Proxy-Authorization`), answering the
/// strongest challenge offered (SHA-256 over MD5).
pub fn answer_challenge(
    response: &Response,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
) -> Option<Credentials> {
    let (challenge_header, header_name) = match response.status {
        401 => ("WWW-Authenticate", "Authorization"),
        407 => ("Proxy-Authenticate", "Proxy-Authorization"),
        _ => return None,
    };
    let challenge = pms_sip::digest::select_challenge(response.headers.get_all(challenge_header))?;
    let cnonce = ids::random_hex(8);
    let value = pms_sip::digest::authorization(&challenge, user, password, method, uri, &cnonce, 1);
    Some(Credentials { header_name, value })
}
