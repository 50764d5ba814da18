//! A small SIP user agent over TLS (or TCP/UDP for tests): `send` one MESSAGE and follow its
//! status, `listen` for incoming MESSAGEs as a registered device.

use std::path::PathBuf;

/// How the UA trusts the server's TLS certificate.
#[derive(Clone, Debug)]
pub enum TlsTrust {
    /// Trust certificates signed by this CA (PEM).
    CaFile(PathBuf),
    /// Accept any certificate (development only).
    Insecure,
}

/// Where the UA connects.
#[derive(Clone, Debug)]
pub struct SipTarget {
    /// `HOST:PORT` of the server's SIP TLS listener.
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
    /// Defaults to `text/plain;charset=UTF-8`.
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
/// Returns the process exit code: 0 awaited status reached, 1 error, 2 timeout.
pub async fn send(options: SendOptions, out: &mut (dyn std::io::Write + Send)) -> i32 {
    let _ = (options, out);
    1
}

/// Registers and prints one JSON line per received MESSAGE to `out`.
/// Returns the process exit code: 0 done (count reached), 1 error, 2 timeout.
pub async fn listen(options: ListenOptions, out: &mut (dyn std::io::Write + Send)) -> i32 {
    let _ = (options, out);
    1
}
