//! `pmsctl send`: one MESSAGE, followed until the awaited status (RFC 3428 + RFC 5438).
//!
//! Status lines: `sending` first; then `enqueued` (202) and/or `delivered` (200, or a
//! positive IMDN), or `error` (final error response, negative IMDN, connection failure), or
//! `timeout`.
//!
//! Invariants:
//! - Invariant: every retry of the MESSAGE (answering a challenge) keeps the Call-ID, From tag
//!   and `imdn.Message-ID`, and raises CSeq by one, so the server stores it once.
//! - Invariant: exactly one terminal line (`delivered`, `error` or `timeout`, or `enqueued`
//!   when that is what we wait for) is printed, and the exit code matches it: 0 awaited
//!   status, 1 error, 4 timeout.

use std::io::Write;
use std::time::Duration;

use pms_sip::{ImdnStatus, Method, Request, Response};
use tokio::time::Instant;

use super::agent::{Agent, AgentEvent, CHALLENGES_ANSWERED_MAX};
use super::ids;
use super::output::{StatusLine, print_line};
use super::requests::{
    CallIdentity, Credentials, MessageRequest, check_domain, check_header_value, check_user,
    recipient_uri,
};
use super::{EXIT_ERROR, EXIT_OK, EXIT_TIMEOUT, SendOptions, WaitFor};

/// Response header carrying the server's own id for the stored message.
pub const SERVER_MESSAGE_ID_HEADER: &str = "X-PMS-Message-ID";

/// Content type when the caller gives none.
pub const CONTENT_TYPE_DEFAULT: &str = "text/plain;charset=UTF-8";

/// Where the MESSAGE is in its life.
#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the MESSAGE's final response.
    AwaitFinal,
    /// Enqueued; registered (or registering) to receive the delivery report.
    AwaitReport,
}

struct Outgoing {
    to_uri: String,
    identity: CallIdentity,
    imdn_message_id: String,
    server_message_id: Option<String>,
    cseq: u32,
    challenges_answered: u32,
    date: String,
    content_type: String,
}

pub async fn run(options: SendOptions, out: &mut (dyn Write + Send)) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(options.timeout_secs);
    let content_type = match options.content_type.as_str() {
        "" => CONTENT_TYPE_DEFAULT.to_owned(),
        given => given.to_owned(),
    };
    let to_uri = match check_arguments(&options, &content_type) {
        Ok(to_uri) => to_uri,
        Err(reason) => return finish(out, &StatusLine::error(&reason), EXIT_ERROR),
    };
    let mut outgoing = Outgoing {
        to_uri,
        identity: CallIdentity {
            call_id: ids::new_call_id(),
            from_tag: ids::new_tag(),
        },
        imdn_message_id: ids::new_imdn_message_id(),
        server_message_id: None,
        cseq: 1,
        challenges_answered: 0,
        date: ids::sip_date_now(),
        content_type,
    };
    let _ = print_line(
        out,
        &StatusLine::sending(&outgoing.to_uri, &outgoing.imdn_message_id),
    );
    let connected = tokio::time::timeout_at(
        deadline,
        Agent::connect(&options.target, &options.user, &options.password),
    )
    .await;
    let mut agent = match connected {
        Err(_) => return finish(out, &StatusLine::timeout(), EXIT_TIMEOUT),
        Ok(Err(error)) => return finish(out, &StatusLine::error(&error.to_string()), EXIT_ERROR),
        Ok(Ok(agent)) => agent,
    };
    match follow(&mut agent, &options, &mut outgoing, deadline, out).await {
        Ok((line, code)) => finish(out, &line, code),
        Err(error) => finish(out, &StatusLine::error(&error.to_string()), EXIT_ERROR),
    }
}

fn finish(out: &mut (dyn Write + Send), line: &StatusLine, code: i32) -> i32 {
    let _ = print_line(out, line);
    code
}

fn check_arguments(options: &SendOptions, content_type: &str) -> Result<String, String> {
    check_user("user", &options.user)?;
    check_domain(&options.target.domain)?;
    check_header_value("content type", content_type)?;
    recipient_uri(&options.to, &options.target.domain)
}

/// Sends the MESSAGE and runs until a terminal status, which it returns (the caller prints
/// it). Intermediate lines (`enqueued` while waiting for delivery) are printed here.
async fn follow(
    agent: &mut Agent,
    options: &SendOptions,
    outgoing: &mut Outgoing,
    deadline: Instant,
    out: &mut (dyn Write + Send),
) -> Result<(StatusLine, i32), super::transport::TransportError> {
    send_message(agent, options, outgoing, None).await?;
    let mut phase = Phase::AwaitFinal;
    loop {
        let event = agent.next(Some(deadline)).await?;
        match event {
            AgentEvent::DeadlinePassed => return Ok((StatusLine::timeout(), EXIT_TIMEOUT)),
            AgentEvent::Response(response) => {
                if phase != Phase::AwaitFinal || !is_response_to_message(&response, outgoing) {
                    continue;
                }
                match response.status {
                    100..=199 => {}
                    200 => {
                        let id = message_id(&response, outgoing);
                        return Ok((StatusLine::delivered(&id, Some(200)), EXIT_OK));
                    }
                    201..=299 => {
                        let id = message_id(&response, outgoing);
                        outgoing.server_message_id = Some(id.clone());
                        let line = StatusLine::enqueued(&id, response.status);
                        if options.wait == WaitFor::Enqueued {
                            return Ok((line, EXIT_OK));
                        }
                        let _ = print_line(out, &line);
                        phase = Phase::AwaitReport;
                        agent.register().await?;
                    }
                    401 | 407 if outgoing.challenges_answered < CHALLENGES_ANSWERED_MAX => {
                        let Some(credentials) =
                            agent.answer_challenge(&response, "MESSAGE", &outgoing.to_uri)
                        else {
                            return Ok(error_response(&response));
                        };
                        outgoing.challenges_answered += 1;
                        outgoing.cseq += 1;
                        send_message(agent, options, outgoing, Some(&credentials)).await?;
                    }
                    _ => return Ok(error_response(&response)),
                }
            }
            AgentEvent::Message(request) => {
                if let Some(report) = report_for_us(&request, outgoing) {
                    return Ok(report);
                }
            }
            AgentEvent::Registered { .. } => {}
            AgentEvent::RegisterFailed { code, reason } => {
                let reason = format!("REGISTER for the delivery report failed: {reason}");
                let line = match code {
                    Some(code) => StatusLine::error_response(code, &reason),
                    None => StatusLine::error(&reason),
                };
                return Ok((line, EXIT_ERROR));
            }
        }
    }
}

async fn send_message(
    agent: &mut Agent,
    options: &SendOptions,
    outgoing: &Outgoing,
    credentials: Option<&Credentials>,
) -> Result<(), super::transport::TransportError> {
    let branch = ids::new_branch();
    let bytes = MessageRequest {
        origin: agent.origin(),
        identity: &outgoing.identity,
        to_uri: &outgoing.to_uri,
        cseq: outgoing.cseq,
        branch: &branch,
        date: &outgoing.date,
        content_type: &outgoing.content_type,
        expires_secs: options.expires_secs,
        imdn_message_id: &outgoing.imdn_message_id,
        credentials,
        body: options.text.as_bytes(),
    }
    .to_bytes();
    agent.write(&bytes).await
}

fn is_response_to_message(response: &Response, outgoing: &Outgoing) -> bool {
    response
        .call_id()
        .is_ok_and(|call_id| call_id == outgoing.identity.call_id)
        && response
            .cseq()
            .is_ok_and(|(number, method)| number == outgoing.cseq && method == Method::Message)
}

/// The server's id for the message when it sent one, else our `imdn.Message-ID`.
fn message_id(response: &Response, outgoing: &Outgoing) -> String {
    response
        .headers
        .get(SERVER_MESSAGE_ID_HEADER)
        .filter(|id| !id.is_empty() && id.len() <= pms_types::limits::MESSAGE_ID_BYTES_MAX)
        .map_or_else(|| outgoing.imdn_message_id.clone(), str::to_owned)
}

fn error_response(response: &Response) -> (StatusLine, i32) {
    (
        StatusLine::error_response(response.status, &response.reason),
        EXIT_ERROR,
    )
}

/// The terminal status an incoming IMDN gives our message, if it is about our message and
/// terminal (`processed`/`stored` are not).
fn report_for_us(request: &Request, outgoing: &Outgoing) -> Option<(StatusLine, i32)> {
    let report = pms_sip::imdn::imdn_report(request)?;
    let ours = report.message_id == outgoing.imdn_message_id
        || outgoing.server_message_id.as_deref() == Some(report.message_id.as_str());
    if !ours {
        return None;
    }
    let id = outgoing
        .server_message_id
        .clone()
        .unwrap_or_else(|| outgoing.imdn_message_id.clone());
    match report.status {
        ImdnStatus::Delivered | ImdnStatus::Displayed => {
            Some((StatusLine::delivered(&id, None), EXIT_OK))
        }
        ImdnStatus::Failed | ImdnStatus::Forbidden | ImdnStatus::Error => Some((
            StatusLine::error_report(&id, report.status.element_name()),
            EXIT_ERROR,
        )),
        ImdnStatus::Processed | ImdnStatus::Stored => None,
    }
}
