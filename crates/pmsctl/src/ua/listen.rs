//! `pmsctl listen`: register as a device and print every MESSAGE received as one JSON line.
//!
//! Invariants:
//! - Invariant: a MESSAGE is printed only after its `200 OK` was written, and each line is
//!   flushed before the next event is read, so a script reading stdout live never misses or
//!   lags behind an acknowledged message.
//! - Invariant: bodies are printed losslessly (see `output`); nothing is decoded with
//!   replacement characters.
//! - Invariant: exit codes: 0 `count` messages printed, 1 error (registration refused,
//!   connection lost, stdout closed), 4 `timeout_secs` passed first.

use std::io::Write;
use std::time::Duration;

use pms_sip::Request;
use tokio::time::Instant;

use super::ListenOptions;
use super::agent::{Agent, AgentEvent, TRANSACTION_TIMEOUT};
use super::output::{MessageLine, StatusLine, print_line};
use super::requests::{check_domain, check_user};
use super::send::SERVER_MESSAGE_ID_HEADER;
use super::{EXIT_ERROR, EXIT_OK, EXIT_TIMEOUT};

pub async fn run(options: ListenOptions, out: &mut (dyn Write + Send)) -> i32 {
    let deadline = options
        .timeout_secs
        .map(|secs| Instant::now() + Duration::from_secs(secs));
    if let Err(reason) =
        check_user("user", &options.user).and_then(|()| check_domain(&options.target.domain))
    {
        return finish(out, &StatusLine::error(&reason), EXIT_ERROR);
    }
    if options.count == Some(0) {
        return EXIT_OK;
    }
    let connect_deadline = Instant::now() + TRANSACTION_TIMEOUT;
    let connect_deadline =
        deadline.map_or(connect_deadline, |deadline| deadline.min(connect_deadline));
    let connected = tokio::time::timeout_at(
        connect_deadline,
        Agent::connect(&options.target, &options.user, &options.password),
    )
    .await;
    let mut agent = match connected {
        Err(_) if deadline.is_some_and(|deadline| Instant::now() >= deadline) => {
            return finish(out, &StatusLine::timeout(), EXIT_TIMEOUT);
        }
        Err(_) => return finish(out, &StatusLine::error("connect: timed out"), EXIT_ERROR),
        Ok(Err(error)) => return finish(out, &StatusLine::error(&error.to_string()), EXIT_ERROR),
        Ok(Ok(agent)) => agent,
    };
    let (line, code) = match receive(&mut agent, &options, deadline, out).await {
        Ok(outcome) => outcome,
        Err(error) => (Some(StatusLine::error(&error.to_string())), EXIT_ERROR),
    };
    match line {
        Some(line) => finish(out, &line, code),
        None => code,
    }
}

fn finish(out: &mut (dyn Write + Send), line: &StatusLine, code: i32) -> i32 {
    let _ = print_line(out, line);
    code
}

/// Registers and prints messages until `count`, the deadline, or a failure. Returns the final
/// status line to print, if any, and the exit code.
async fn receive(
    agent: &mut Agent,
    options: &ListenOptions,
    deadline: Option<Instant>,
    out: &mut (dyn Write + Send),
) -> Result<(Option<StatusLine>, i32), super::transport::TransportError> {
    agent.register().await?;
    let mut received = 0usize;
    let mut registered_once = false;
    loop {
        match agent.next(deadline).await? {
            AgentEvent::DeadlinePassed => {
                return Ok((Some(StatusLine::timeout()), EXIT_TIMEOUT));
            }
            AgentEvent::Registered { expires_secs } => {
                if !registered_once {
                    registered_once = true;
                    super::note(&format!(
                        "registered {} (expires in {expires_secs} s); listening",
                        agent.origin().aor()
                    ));
                }
            }
            AgentEvent::RegisterFailed { code, reason } => {
                let reason = format!("REGISTER failed: {reason}");
                let line = match code {
                    Some(code) => StatusLine::error_response(code, &reason),
                    None => StatusLine::error(&reason),
                };
                return Ok((Some(line), EXIT_ERROR));
            }
            AgentEvent::Response(_) => {}
            AgentEvent::Message(request) => {
                if let Err(error) = print_line(out, &message_line(&request)) {
                    super::note(&format!("cannot write to stdout: {error}"));
                    return Ok((None, EXIT_ERROR));
                }
                received += 1;
                if options.count.is_some_and(|count| received >= count) {
                    return Ok((None, EXIT_OK));
                }
            }
        }
    }
}

/// The JSON line for one received MESSAGE.
pub fn message_line(request: &Request) -> MessageLine {
    let uri_of = |name_addr: Result<pms_sip::NameAddr, pms_sip::ParseError>, raw: Option<&str>| {
        name_addr.map_or_else(
            |_| raw.unwrap_or_default().to_owned(),
            |name_addr| name_addr.uri.to_string(),
        )
    };
    let message_id = pms_sip::imdn::imdn_fields(request)
        .ok()
        .and_then(|fields| fields.message_id)
        .or_else(|| {
            request
                .headers
                .get(SERVER_MESSAGE_ID_HEADER)
                .map(str::to_owned)
        });
    let mut line = MessageLine {
        from: uri_of(request.from(), request.headers.get("From")),
        to: uri_of(request.to(), request.headers.get("To")),
        content_type: request.headers.get("Content-Type").map(str::to_owned),
        message_id,
        date: request.headers.get("Date").map(str::to_owned),
        ..MessageLine::default()
    };
    line.set_body(&request.body);
    line
}
