//! A small SIP user agent over TLS (or plain TCP for tests): `send` one MESSAGE and follow its
//! status, `listen` for incoming MESSAGEs as a registered device.
//!
//! Layout: `transport` (connection, framing) → `agent` (event loop, registration, routine
//! answers) → `send` / `listen` (what each command waits for); `requests` builds the wire
//! requests, `output` the JSON lines, `ids` the random identifiers.
//!
//! Invariants:
//! - Invariant: stdout carries JSON lines only, one object per line, flushed as written;
//!   human notes go to stderr.
//! - Invariant: exit codes are 0 (awaited status reached), 1 (error), 4 (timeout); 2 and 3
//!   are pmsctl's usage error and degraded cluster, never a user agent's.

use std::path::PathBuf;

mod agent;
mod ids;
mod listen;
mod output;
mod requests;
mod send;
mod transport;

#[cfg(test)]
mod tests;

/// Exit code: the awaited status was reached (`send`), or `count` messages arrived (`listen`).
pub const EXIT_OK: i32 = 0;
/// Exit code: an error response, a negative report, or a connection failure.
pub const EXIT_ERROR: i32 = 1;
/// Exit code: `timeout_secs` passed first.
pub const EXIT_TIMEOUT: i32 = 4;

/// A note for the human at the terminal (stderr). Never panics, even when stderr is gone.
fn note(text: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "pmsctl: {text}");
}

/// How the UA trusts the server's TLS certificate.
#[derive(Clone, Debug)]
pub enum TlsTrust {
    /// Trust certificates signed by this CA (PEM).
    CaFile(PathBuf),
    /// Accept any certificate (development only).
    Insecure,
    /// No TLS at all: SIP over plain TCP (tests and local debugging only).
    PlainTcp,
}

/// Where the UA connects.
#[derive(Clone, Debug)]
pub struct SipTarget {
    /// `HOST:PORT` of the server's SIP TLS listener (its TCP listener with
    /// [`TlsTrust::PlainTcp`]). The host is also the TLS server name; an IP address works.
    pub server: String,
    pub trust: TlsTrust,
    /// SIP domain used in AoRs (`sip:user@domain`).
    pub domain: String,
}

/// The status `send` waits for before it exits 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitFor {
    Enqueued,
    Delivered,
}

#[derive(Clone, Debug)]
pub struct SendOptions {
    pub target: SipTarget,
    pub user: String,
    pub password: String,
    pub to: String,
    pub text: String,
    /// Defaults to `text/plain;charset=UTF-8` (an empty string means the default too).
    pub content_type: String,
    /// Validity in seconds (`Expires` header), when given.
    pub expires_secs: Option<u64>,
    pub wait: WaitFor,
    pub timeout_secs: u64,
}

#[derive(Clone, Debug)]
pub struct ListenOptions {
    pub target: SipTarget,
    pub user: String,
    pub password: String,
    /// Exit 0 after this many messages.
    pub count: Option<usize>,
    /// Exit 2 if `count` messages did not arrive within this time.
    pub timeout_secs: Option<u64>,
}

/// Sends one MESSAGE and prints one JSON line per status change to `out`.
/// Returns the process exit code: 0 awaited status reached, 1 error, 4 timeout.
pub async fn send(options: SendOptions, out: &mut (dyn std::io::Write + Send)) -> i32 {
    send::run(options, out).await
}

/// Registers and prints one JSON line per received MESSAGE to `out`.
/// Returns the process exit code: 0 done (count reached), 1 error, 4 timeout.
pub async fn listen(options: ListenOptions, out: &mut (dyn std::io::Write + Send)) -> i32 {
    listen::run(options, out).await
}
