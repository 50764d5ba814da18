//! HTTP digest authentication for SIP (RFC 7616, RFC 8760 for SHA-256 in SIP, RFC 2617 for
//! MD5), server and client side, sans-IO: time comes in as [`UnixMillis`], nothing here
//! reads a clock or does IO.
//!
//! Nonce format (server-generated, opaque to clients): lower hex of
//! `created_ms (8 bytes BE) || algorithm (1 byte) || random (8 bytes) || HMAC-SHA-256(secret,
//! those 17 bytes)[..16]`.
//!
//! Invariants:
//! - Invariant: a nonce is accepted only if its MAC verifies under this server's secret (forged
//!   or altered nonces → [`DigestError::InvalidNonce`]), it is younger than
//!   [`DIGEST_NONCE_LIFETIME_SECS`] (else [`DigestError::StaleNonce`]), it was issued for the
//!   algorithm the client answers with (no downgrade), and it is still in the server's table.
//! - Invariant: per nonce, an accepted `nc` is strictly greater than every `nc` accepted before
//!   (replay protection). The table holds at most [`DIGEST_NONCES_MAX`] nonces; the oldest is
//!   evicted first, and an evicted (or other node's, or pre-restart) nonce is answered as
//!   stale so the client simply retries with a fresh one — never accepted without a table
//!   entry, so eviction cannot re-open a replay.
//! - Invariant: `qop=auth` is required (RFC 2069-style answers without `nc` cannot be replay
//!   checked), and response comparison is constant-time.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;

use md5::Md5;
use pms_types::UnixMillis;
use pms_types::limits::{DIGEST_NONCE_LIFETIME_SECS, DIGEST_NONCES_MAX};
use rand::RngCore;
use sha2::{Digest as _, Sha256};

use crate::text::{find_param, is_token, quote, snippet, split_outside_quotes, unquote};

/// Most `name=value` pairs accepted in one challenge or credentials header.
pub const DIGEST_PARAMS_MAX: usize = 32;

/// Digest algorithms PMS supports (the `-sess` variants are not supported).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Md5,
}

impl Algorithm {
    /// The token used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Md5 => "MD5",
        }
    }

    /// Parses an `algorithm=` token; absent means MD5 (RFC 2617 §3.2.1).
    pub fn parse(token: Option<&str>) -> Result<Algorithm, DigestError> {
        match token {
            None => Ok(Algorithm::Md5),
            Some(token) if token.eq_ignore_ascii_case("MD5") => Ok(Algorithm::Md5),
            Some(token) if token.eq_ignore_ascii_case("SHA-256") => Ok(Algorithm::Sha256),
            Some(token) => Err(DigestError::UnsupportedAlgorithm {
                algorithm: snippet(token),
            }),
        }
    }

    fn code(self) -> u8 {
        match self {
            Algorithm::Sha256 => 1,
            Algorithm::Md5 => 2,
        }
    }

    fn hash_hex(self, input: &str) -> String {
        match self {
            Algorithm::Sha256 => hex::encode(Sha256::digest(input.as_bytes())),
            Algorithm::Md5 => hex::encode(Md5::digest(input.as_bytes())),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("malformed digest header: {detail} in {value:?}")]
    Malformed { value: String, detail: &'static str },
    #[error("digest parameter {name} is missing")]
    MissingParameter { name: &'static str },
    #[error("unsupported or refused digest algorithm {algorithm:?}")]
    UnsupportedAlgorithm { algorithm: String },
    #[error("unsupported qop {qop:?}")]
    UnsupportedQop { qop: String },
    #[error("nonce is stale")]
    StaleNonce,
    #[error("nonce {nonce:?} was not issued by this server: {detail}")]
    InvalidNonce { nonce: String, detail: &'static str },
    #[error("nonce count {nc} for user {username:?} was already used")]
    Replay { username: String, nc: u32 },
    #[error("realm {realm:?} is not ours")]
    WrongRealm { realm: String },
    #[error("opaque value does not match")]
    WrongOpaque,
    #[error("wrong digest response for user {username:?}")]
    BadResponse { username: String },
    #[error("unknown user {username:?}")]
    UnknownUser { username: String },
    #[error("digest uri {uri:?} is not the Request-URI")]
    UriMismatch { uri: String },
}

/// The policy without repeats, in the given order.
fn dedup_policy(algorithms: &[Algorithm]) -> Vec<Algorithm> {
    let mut policy = Vec::new();
    for algorithm in algorithms {
        if !policy.contains(algorithm) {
            policy.push(*algorithm);
        }
    }
    policy
}

/// Checks that the credentials' `uri` names the Request-URI (RFC 7616 §3.4.6: a server
/// must not accept credentials computed for another URI). SIP URIs are compared by scheme,
/// user, host (case-insensitively) and port; anything else must match exactly.
pub fn check_uri(credentials: &DigestCredentials, request_uri: &str) -> Result<(), DigestError> {
    if credentials.uri == request_uri {
        return Ok(());
    }
    let same = match (
        crate::message::SipUri::parse(&credentials.uri),
        crate::message::SipUri::parse(request_uri),
    ) {
        (Ok(given), Ok(request)) => {
            given.scheme.eq_ignore_ascii_case(&request.scheme)
                && given.user == request.user
                && given.host.eq_ignore_ascii_case(&request.host)
                && given.port == request.port
        }
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(DigestError::UriMismatch {
            uri: snippet(&credentials.uri),
        })
    }
}

/// H(A1) = H(username:realm:password), lower hex.
pub fn ha1(algorithm: Algorithm, user: &str, realm: &str, password: &str) -> String {
    algorithm.hash_hex(&format!("{user}:{realm}:{password}"))
}

/// The `response` value (RFC 7616 §3.4.1). With `qop` = `None` the RFC 2069 form is used.
pub fn compute_response(
    algorithm: Algorithm,
    ha1: &str,
    nonce: &str,
    qop: Option<(&str, &str, &str)>, // (nc, cnonce, qop)
    method: &str,
    uri: &str,
) -> String {
    let ha2 = algorithm.hash_hex(&format!("{method}:{uri}"));
    match qop {
        Some((nc, cnonce, qop)) => {
            algorithm.hash_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}"))
        }
        None => algorithm.hash_hex(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// Parses `Digest name=value, name="value", ...` into (name, unquoted value) pairs.
fn parse_digest_params(value: &str) -> Result<Vec<(String, Option<String>)>, DigestError> {
    let malformed = |detail| DigestError::Malformed {
        value: snippet(value),
        detail,
    };
    let trimmed = value.trim_start();
    let scheme = trimmed.get(..6).ok_or_else(|| malformed("no scheme"))?;
    if !scheme.eq_ignore_ascii_case("digest")
        || !trimmed
            .get(6..7)
            .is_some_and(|space| space == " " || space == "\t")
    {
        return Err(malformed("scheme is not Digest"));
    }
    let mut params = Vec::new();
    for part in split_outside_quotes(trimmed.get(7..).unwrap_or_default(), ',') {
        if part.is_empty() {
            continue;
        }
        if params.len() >= DIGEST_PARAMS_MAX {
            return Err(malformed("too many parameters"));
        }
        let (name, raw) = part
            .split_once('=')
            .ok_or_else(|| malformed("parameter without value"))?;
        let name = name.trim();
        if !is_token(name) {
            return Err(malformed("parameter name is not a token"));
        }
        let unquoted =
            unquote(raw.trim()).ok_or_else(|| malformed("unterminated quoted string"))?;
        params.push((name.to_ascii_lowercase(), Some(unquoted)));
    }
    Ok(params)
}

fn required(
    params: &[(String, Option<String>)],
    name: &'static str,
) -> Result<String, DigestError> {
    find_param(params, name)
        .flatten()
        .map(str::to_string)
        .ok_or(DigestError::MissingParameter { name })
}

fn optional(params: &[(String, Option<String>)], name: &str) -> Option<String> {
    find_param(params, name).flatten().map(str::to_string)
}

/// Credentials from an `Authorization` / `Proxy-Authorization` header (values unquoted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestCredentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub cnonce: Option<String>,
    pub opaque: Option<String>,
    pub qop: Option<String>,
    /// The 8-hex-digit nonce count as sent.
    pub nc: Option<String>,
}

/// Parses credentials; only presence of the always-required parameters is checked here.
pub fn parse_credentials(value: &str) -> Result<DigestCredentials, DigestError> {
    let params = parse_digest_params(value)?;
    Ok(DigestCredentials {
        username: required(&params, "username")?,
        realm: required(&params, "realm")?,
        nonce: required(&params, "nonce")?,
        uri: required(&params, "uri")?,
        response: required(&params, "response")?,
        algorithm: optional(&params, "algorithm"),
        cnonce: optional(&params, "cnonce"),
        opaque: optional(&params, "opaque"),
        qop: optional(&params, "qop"),
        nc: optional(&params, "nc"),
    })
}

/// A successful verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedUser {
    pub username: String,
    pub algorithm: Algorithm,
}

const NONCE_PAYLOAD_BYTES: usize = 17;
const NONCE_MAC_BYTES: usize = 16;
const NONCE_BYTES: usize = NONCE_PAYLOAD_BYTES + NONCE_MAC_BYTES;

type NonceKey = [u8; NONCE_PAYLOAD_BYTES];

fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut inner_key = [0x36u8; 64];
    let mut outer_key = [0x5cu8; 64];
    for (index, byte) in key.iter().enumerate() {
        if let (Some(inner), Some(outer)) = (inner_key.get_mut(index), outer_key.get_mut(index)) {
            *inner ^= byte;
            *outer ^= byte;
        }
    }
    let inner = Sha256::new()
        .chain_update(inner_key)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(outer_key)
        .chain_update(inner)
        .finalize()
        .into()
}

fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

/// Server side: issues challenges and verifies credentials for one realm.
#[derive(Debug)]
pub struct DigestServer {
    realm: String,
    secret: [u8; 32],
    algorithms: Vec<Algorithm>,
    opaque: String,
    /// Highest accepted nc per issued nonce (0 = none yet).
    nonces: HashMap<NonceKey, u32>,
    /// Issue order, for eviction.
    issued: VecDeque<NonceKey>,
    nonces_max: usize,
}

impl DigestServer {
    /// `algorithms` is the node's default policy: the algorithms offered (in this order) and
    /// accepted for accounts without a policy of their own; duplicates are ignored.
    pub fn new(realm: String, secret: [u8; 32], algorithms: Vec<Algorithm>) -> DigestServer {
        DigestServer::with_nonces_max(realm, secret, algorithms, DIGEST_NONCES_MAX)
    }

    /// Same as [`DigestServer::new`] with a smaller nonce table (tests, small deployments).
    pub fn with_nonces_max(
        realm: String,
        secret: [u8; 32],
        algorithms: Vec<Algorithm>,
        nonces_max: usize,
    ) -> DigestServer {
        let policy = dedup_policy(&algorithms);
        let opaque = hex::encode(
            hmac_sha256(&secret, b"pms-digest-opaque")
                .get(..16)
                .unwrap_or_default(),
        );
        DigestServer {
            realm,
            secret,
            algorithms: policy,
            opaque,
            nonces: HashMap::new(),
            issued: VecDeque::new(),
            nonces_max: nonces_max.max(1),
        }
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Nonces currently remembered.
    pub fn nonces_len(&self) -> usize {
        self.nonces.len()
    }

    fn make_nonce(&mut self, algorithm: Algorithm, now: UnixMillis) -> String {
        let mut payload: NonceKey = [0; NONCE_PAYLOAD_BYTES];
        let mut random = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut random);
        for (slot, byte) in payload.iter_mut().zip(
            now.0
                .to_be_bytes()
                .into_iter()
                .chain([algorithm.code()])
                .chain(random),
        ) {
            *slot = byte;
        }
        let mac = hmac_sha256(&self.secret, &payload);
        while self.issued.len() >= self.nonces_max {
            if let Some(oldest) = self.issued.pop_front() {
                self.nonces.remove(&oldest);
            }
        }
        self.issued.push_back(payload);
        self.nonces.insert(payload, 0);
        let mut nonce = hex::encode(payload);
        nonce.push_str(&hex::encode(mac.get(..NONCE_MAC_BYTES).unwrap_or_default()));
        nonce
    }

    /// The node's default policy, in offer order.
    pub fn default_policy(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// One `WWW-Authenticate` / `Proxy-Authenticate` value per algorithm of the default
    /// policy, in its order, each with a fresh nonce. `stale` tells the client its previous
    /// nonce expired (it retries without asking the user for the password again).
    pub fn challenges(&mut self, now: UnixMillis, stale: bool) -> Vec<String> {
        let policy = self.algorithms.clone();
        self.challenges_for(now, stale, &policy)
    }

    /// Like [`DigestServer::challenges`] for an account's own policy (in its order: clients
    /// such as libre 1.1 answer only the first challenge, so an account that must use MD5
    /// lists it first). An empty policy means the default one.
    pub fn challenges_for(
        &mut self,
        now: UnixMillis,
        stale: bool,
        policy: &[Algorithm],
    ) -> Vec<String> {
        self.forget_expired(now);
        let policy = if policy.is_empty() {
            self.algorithms.clone()
        } else {
            dedup_policy(policy)
        };
        policy
            .into_iter()
            .map(|algorithm| {
                let nonce = self.make_nonce(algorithm, now);
                let mut value = format!(
                    "Digest realm={}, qop=\"auth\", algorithm={}, nonce=\"{}\", opaque=\"{}\"",
                    quote(&self.realm),
                    algorithm.as_str(),
                    nonce,
                    self.opaque
                );
                if stale {
                    value.push_str(", stale=true");
                }
                value
            })
            .collect()
    }

    fn forget_expired(&mut self, now: UnixMillis) {
        while let Some(oldest) = self.issued.front() {
            if nonce_age_ok(nonce_created(oldest), now) {
                break;
            }
            self.nonces.remove(oldest);
            self.issued.pop_front();
        }
    }

    /// Checks the MAC and age of a nonce; returns its table key and algorithm.
    fn check_nonce(&self, nonce: &str, now: UnixMillis) -> Result<(NonceKey, u8), DigestError> {
        let invalid = |detail| DigestError::InvalidNonce {
            nonce: snippet(nonce),
            detail,
        };
        if nonce.len() != NONCE_BYTES * 2 {
            return Err(invalid("wrong length"));
        }
        let bytes = hex::decode(nonce).map_err(|_| invalid("not hex"))?;
        let (payload, mac) = bytes.split_at(NONCE_PAYLOAD_BYTES.min(bytes.len()));
        let expected = hmac_sha256(&self.secret, payload);
        if !constant_time_eq(mac, expected.get(..NONCE_MAC_BYTES).unwrap_or_default()) {
            return Err(invalid("bad MAC"));
        }
        let key: NonceKey = payload.try_into().map_err(|_| invalid("wrong length"))?;
        if !nonce_age_ok(nonce_created(&key), now) {
            return Err(DigestError::StaleNonce);
        }
        Ok((key, key.get(8).copied().unwrap_or_default()))
    }

    /// Verifies credentials against `method` (the request method). `ha1_for` returns the
    /// stored H(A1) of `credentials.username` for an algorithm, or `None` if the user (or that
    /// algorithm's hash) does not exist. The caller still checks that `credentials.uri`
    /// matches the Request-URI and that the user may act as the From user.
    pub fn verify(
        &mut self,
        credentials: &DigestCredentials,
        method: &str,
        ha1_for: impl Fn(Algorithm) -> Option<String>,
        now: UnixMillis,
    ) -> Result<VerifiedUser, DigestError> {
        let policy = self.algorithms.clone();
        self.verify_for(credentials, method, &policy, ha1_for, now)
    }

    /// Like [`DigestServer::verify`] under an account's own policy (empty: the default one):
    /// an algorithm outside it is `UnsupportedAlgorithm`.
    pub fn verify_for(
        &mut self,
        credentials: &DigestCredentials,
        method: &str,
        policy: &[Algorithm],
        ha1_for: impl Fn(Algorithm) -> Option<String>,
        now: UnixMillis,
    ) -> Result<VerifiedUser, DigestError> {
        let algorithm = Algorithm::parse(credentials.algorithm.as_deref())?;
        let allowed = if policy.is_empty() {
            self.algorithms.contains(&algorithm)
        } else {
            policy.contains(&algorithm)
        };
        if !allowed {
            return Err(DigestError::UnsupportedAlgorithm {
                algorithm: algorithm.as_str().to_string(),
            });
        }
        let qop = credentials
            .qop
            .as_deref()
            .ok_or(DigestError::MissingParameter { name: "qop" })?;
        if !qop.eq_ignore_ascii_case("auth") {
            return Err(DigestError::UnsupportedQop { qop: snippet(qop) });
        }
        let nc_text = credentials
            .nc
            .as_deref()
            .ok_or(DigestError::MissingParameter { name: "nc" })?;
        let cnonce = credentials
            .cnonce
            .as_deref()
            .ok_or(DigestError::MissingParameter { name: "cnonce" })?;
        let nc = (nc_text.len() == 8)
            .then(|| u32::from_str_radix(nc_text, 16).ok())
            .flatten()
            .ok_or(DigestError::Malformed {
                value: snippet(nc_text),
                detail: "nc is not 8 hex digits",
            })?;
        if credentials.realm != self.realm {
            return Err(DigestError::WrongRealm {
                realm: snippet(&credentials.realm),
            });
        }
        if credentials
            .opaque
            .as_ref()
            .is_some_and(|opaque| opaque != &self.opaque)
        {
            return Err(DigestError::WrongOpaque);
        }
        let (key, algorithm_code) = self.check_nonce(&credentials.nonce, now)?;
        if algorithm_code != algorithm.code() {
            return Err(DigestError::InvalidNonce {
                nonce: snippet(&credentials.nonce),
                detail: "issued for another algorithm",
            });
        }
        let last_nc = *self.nonces.get(&key).ok_or(DigestError::StaleNonce)?;
        if nc <= last_nc {
            return Err(DigestError::Replay {
                username: snippet(&credentials.username),
                nc,
            });
        }
        let ha1 = ha1_for(algorithm).ok_or_else(|| DigestError::UnknownUser {
            username: snippet(&credentials.username),
        })?;
        let expected = compute_response(
            algorithm,
            &ha1,
            &credentials.nonce,
            Some((nc_text, cnonce, qop)),
            method,
            &credentials.uri,
        );
        if !constant_time_eq(
            expected.as_bytes(),
            credentials.response.to_ascii_lowercase().as_bytes(),
        ) {
            return Err(DigestError::BadResponse {
                username: snippet(&credentials.username),
            });
        }
        self.nonces.insert(key, nc);
        Ok(VerifiedUser {
            username: credentials.username.clone(),
            algorithm,
        })
    }
}

fn nonce_created(key: &NonceKey) -> u64 {
    let mut created = [0u8; 8];
    for (slot, byte) in created.iter_mut().zip(key.iter()) {
        *slot = *byte;
    }
    u64::from_be_bytes(created)
}

fn nonce_age_ok(created_ms: u64, now: UnixMillis) -> bool {
    now.0.saturating_sub(created_ms) < DIGEST_NONCE_LIFETIME_SECS.saturating_mul(1000)
}

/// A parsed `WWW-Authenticate` / `Proxy-Authenticate` digest challenge (client side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// The qop options offered (e.g. `["auth"]`); empty for RFC 2069 challenges.
    pub qop: Vec<String>,
    pub stale: bool,
}

pub fn parse_challenge(header_value: &str) -> Result<Challenge, DigestError> {
    let params = parse_digest_params(header_value)?;
    let qop = optional(&params, "qop")
        .map(|qop| {
            qop.split(',')
                .map(|option| option.trim().to_ascii_lowercase())
                .filter(|option| !option.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Ok(Challenge {
        realm: required(&params, "realm")?,
        nonce: required(&params, "nonce")?,
        opaque: optional(&params, "opaque"),
        algorithm: Algorithm::parse(optional(&params, "algorithm").as_deref())?,
        qop,
        stale: optional(&params, "stale").is_some_and(|stale| stale.eq_ignore_ascii_case("true")),
    })
}

/// Picks the strongest supported challenge among header values (SHA-256 over MD5); values
/// that do not parse (other schemes, unsupported algorithms) are skipped.
pub fn select_challenge<'a>(header_values: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
    header_values
        .into_iter()
        .filter_map(|value| parse_challenge(value).ok())
        .min_by_key(|challenge| challenge.algorithm.code())
}

/// The `Authorization` / `Proxy-Authorization` value answering `challenge`. Uses `qop=auth`
/// when the challenge offers it (the RFC 2069 form otherwise). `nc` counts requests made with
/// this nonce, starting at 1.
pub fn authorization(
    challenge: &Challenge,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    cnonce: &str,
    nc: u32,
) -> String {
    let ha1 = ha1(challenge.algorithm, user, &challenge.realm, password);
    let use_qop = challenge.qop.iter().any(|option| option == "auth");
    let nc_text = format!("{nc:08x}");
    let response = compute_response(
        challenge.algorithm,
        &ha1,
        &challenge.nonce,
        use_qop.then_some((nc_text.as_str(), cnonce, "auth")),
        method,
        uri,
    );
    let mut value = format!(
        "Digest username={}, realm={}, nonce={}, uri={}, response=\"{}\", algorithm={}",
        quote(user),
        quote(&challenge.realm),
        quote(&challenge.nonce),
        quote(uri),
        response,
        challenge.algorithm.as_str()
    );
    if use_qop {
        let _ = write!(value, ", cnonce={}, qop=auth, nc={nc_text}", quote(cnonce));
    }
    if let Some(opaque) = &challenge.opaque {
        let _ = write!(value, ", opaque={}", quote(opaque));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixMillis = UnixMillis(1_700_000_000_000);
    const SECRET: [u8; 32] = [7; 32];

    #[test]
    fn rfc2617_md5_vector() {
        let ha1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let response = compute_response(
            Algorithm::Md5,
            &ha1,
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some(("00000001", "0a4f113b", "auth")),
            "GET",
            "/dir/index.html",
        );
        assert_eq!(response, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn rfc7616_sha256_and_md5_vectors_through_the_client() {
        let challenge = parse_challenge(
            r#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#,
        )
        .expect("valid challenge");
        assert_eq!(challenge.qop, vec!["auth", "auth-int"]);
        let value = authorization(
            &challenge,
            "Mufasa",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            1,
        );
        let credentials = parse_credentials(&value).expect("own output parses");
        assert_eq!(
            credentials.response,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        assert_eq!(credentials.nc.as_deref(), Some("00000001"));
        assert_eq!(credentials.opaque, challenge.opaque);
        let md5 = Challenge {
            algorithm: Algorithm::Md5,
            ..challenge
        };
        let value = authorization(
            &md5,
            "Mufasa",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            1,
        );
        assert_eq!(
            parse_credentials(&value).expect("parses").response,
            "8ca523f5e9506fed4657c9700eebdbec"
        );
    }

    fn login(
        server: &mut DigestServer,
        challenge_value: &str,
        password: &str,
        nc: u32,
        now: UnixMillis,
    ) -> Result<VerifiedUser, DigestError> {
        let challenge = parse_challenge(challenge_value).expect("server challenge parses");
        let value = authorization(
            &challenge,
            "alice",
            password,
            "REGISTER",
            "sip:pms.test",
            "c1",
            nc,
        );
        let credentials = parse_credentials(&value).expect("client value parses");
        server.verify(
            &credentials,
            "REGISTER",
            |algorithm| Some(ha1(algorithm, "alice", "pms.test", "pw")),
            now,
        )
    }

    fn server(algorithms: Vec<Algorithm>) -> DigestServer {
        DigestServer::new("pms.test".to_string(), SECRET, algorithms)
    }

    #[test]
    fn challenges_follow_the_policy_order() {
        let mut md5_first = server(vec![Algorithm::Md5, Algorithm::Sha256, Algorithm::Md5]);
        let offered = |values: &[String]| -> Vec<Algorithm> {
            values
                .iter()
                .map(|value| parse_challenge(value).expect("parses").algorithm)
                .collect()
        };
        assert_eq!(
            offered(&md5_first.challenges(NOW, false)),
            vec![Algorithm::Md5, Algorithm::Sha256]
        );
        let mut both = server(vec![Algorithm::Sha256, Algorithm::Md5]);
        let values = both.challenges(NOW, false);
        assert_eq!(offered(&values), vec![Algorithm::Sha256, Algorithm::Md5]);
        assert_eq!(
            offered(&both.challenges_for(NOW, false, &[Algorithm::Md5])),
            vec![Algorithm::Md5]
        );
        assert_eq!(
            offered(&both.challenges_for(NOW, false, &[])),
            offered(&values)
        );
        assert!(values.iter().all(|value| !value.contains("stale")));
        let stale = both.challenges(NOW, true);
        assert!(
            stale
                .iter()
                .all(|value| parse_challenge(value).expect("parses").stale)
        );
        assert_eq!(
            select_challenge(values.iter().map(String::as_str))
                .map(|challenge| challenge.algorithm),
            Some(Algorithm::Sha256)
        );
    }

    #[test]
    fn round_trip_then_replay_then_next_nc() {
        let mut server = server(vec![Algorithm::Sha256, Algorithm::Md5]);
        let values = server.challenges(NOW, false);
        for value in &values {
            assert!(login(&mut server, value, "pw", 1, NOW).is_ok());
            assert!(matches!(
                login(&mut server, value, "pw", 1, NOW),
                Err(DigestError::Replay { nc: 1, .. })
            ));
            assert!(login(&mut server, value, "pw", 2, NOW).is_ok());
        }
    }

    #[test]
    fn wrong_password_and_unknown_user() {
        let mut server = server(vec![Algorithm::Sha256]);
        let value = server.challenges(NOW, false).remove(0);
        assert!(matches!(
            login(&mut server, &value, "wrong", 1, NOW),
            Err(DigestError::BadResponse { .. })
        ));
        // A failed attempt does not burn the nonce count.
        assert!(login(&mut server, &value, "pw", 1, NOW).is_ok());
        let challenge = parse_challenge(&value).expect("parses");
        let credentials = parse_credentials(&authorization(
            &challenge, "eve", "pw", "REGISTER", "sip:x", "c", 5,
        ))
        .expect("parses");
        assert!(matches!(
            server.verify(&credentials, "REGISTER", |_| None, NOW),
            Err(DigestError::UnknownUser { .. })
        ));
    }

    #[test]
    fn stale_nonce_after_lifetime() {
        let mut server = server(vec![Algorithm::Sha256]);
        let value = server.challenges(NOW, false).remove(0);
        let later = NOW.saturating_add_ms(DIGEST_NONCE_LIFETIME_SECS * 1000);
        assert_eq!(
            login(&mut server, &value, "pw", 1, later),
            Err(DigestError::StaleNonce)
        );
        let just_before = NOW.saturating_add_ms(DIGEST_NONCE_LIFETIME_SECS * 1000 - 1);
        assert!(login(&mut server, &value, "pw", 1, just_before).is_ok());
    }

    #[test]
    fn forged_and_foreign_nonces_are_rejected() {
        let mut server = server(vec![Algorithm::Sha256]);
        let value = server.challenges(NOW, false).remove(0);
        let mut challenge = parse_challenge(&value).expect("parses");
        // Flip one hex digit of the timestamp (tries to extend the lifetime).
        let mut forged = challenge.nonce.clone().into_bytes();
        if let Some(first) = forged.get_mut(10) {
            *first = if *first == b'0' { b'1' } else { b'0' };
        }
        challenge.nonce = String::from_utf8(forged).expect("hex is ASCII");
        let credentials = parse_credentials(&authorization(
            &challenge, "alice", "pw", "REGISTER", "sip:x", "c", 1,
        ))
        .expect("parses");
        assert!(matches!(
            server.verify(
                &credentials,
                "REGISTER",
                |a| Some(ha1(a, "alice", "pms.test", "pw")),
                NOW
            ),
            Err(DigestError::InvalidNonce {
                detail: "bad MAC",
                ..
            })
        ));
        // A nonce from a server with another secret.
        let mut other = DigestServer::new("pms.test".to_string(), [8; 32], vec![Algorithm::Sha256]);
        let foreign = other.challenges(NOW, false).remove(0);
        let foreign = foreign.replace(&other.opaque, &server.opaque);
        assert!(matches!(
            login(&mut server, &foreign, "pw", 1, NOW),
            Err(DigestError::InvalidNonce { .. })
        ));
        // Same secret, but never issued here (e.g. before a restart): stale, not accepted.
        let mut twin = DigestServer::new("pms.test".to_string(), SECRET, vec![Algorithm::Sha256]);
        let twin_value = twin.challenges(NOW, false).remove(0);
        assert_eq!(
            login(&mut server, &twin_value, "pw", 1, NOW),
            Err(DigestError::StaleNonce)
        );
    }

    #[test]
    fn an_account_policy_narrows_what_is_accepted() {
        let mut server = server(vec![Algorithm::Sha256, Algorithm::Md5]);
        let md5 = server
            .challenges_for(NOW, false, &[Algorithm::Md5])
            .remove(0);
        let challenge = parse_challenge(&md5).expect("parses");
        let value = authorization(
            &challenge,
            "alice",
            "pw",
            "REGISTER",
            "sip:pms.test",
            "c",
            1,
        );
        let credentials = parse_credentials(&value).expect("parses");
        let ha1_for = |algorithm| Some(ha1(algorithm, "alice", "pms.test", "pw"));
        assert!(matches!(
            server.verify_for(&credentials, "REGISTER", &[Algorithm::Sha256], ha1_for, NOW),
            Err(DigestError::UnsupportedAlgorithm { .. })
        ));
        assert!(
            server
                .verify_for(&credentials, "REGISTER", &[Algorithm::Md5], ha1_for, NOW)
                .is_ok()
        );
    }

    #[test]
    fn the_digest_uri_must_name_the_request_uri() {
        let credentials = |uri: &str| DigestCredentials {
            uri: uri.to_string(),
            ..parse_credentials(
                "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"sip:x\", response=\"0\"",
            )
            .expect("parses")
        };
        assert_eq!(
            check_uri(&credentials("sip:bob@localhost"), "sip:bob@localhost"),
            Ok(())
        );
        assert_eq!(
            check_uri(
                &credentials("sip:bob@LOCALHOST"),
                "SIP:bob@localhost;transport=tls"
            ),
            Ok(())
        );
        for other in [
            "sip:carol@localhost",
            "sip:bob@localhost:5070",
            "sip:127.0.0.1:5060",
        ] {
            assert_eq!(
                check_uri(&credentials(other), "sip:bob@localhost"),
                Err(DigestError::UriMismatch {
                    uri: other.to_string()
                }),
                "{other}"
            );
        }
    }

    #[test]
    fn md5_refused_by_policy_and_no_downgrade() {
        let mut sha_only = server(vec![Algorithm::Sha256]);
        let value = sha_only.challenges(NOW, false).remove(0);
        let md5_value = value.replace("algorithm=SHA-256", "algorithm=MD5");
        assert_eq!(
            login(&mut sha_only, &md5_value, "pw", 1, NOW),
            Err(DigestError::UnsupportedAlgorithm {
                algorithm: "MD5".to_string()
            })
        );
        let mut both = server(vec![Algorithm::Sha256, Algorithm::Md5]);
        let sha_value = both.challenges(NOW, false).remove(0);
        assert!(matches!(
            login(
                &mut both,
                &sha_value.replace("algorithm=SHA-256", "algorithm=MD5"),
                "pw",
                1,
                NOW
            ),
            Err(DigestError::InvalidNonce {
                detail: "issued for another algorithm",
                ..
            })
        ));
    }

    #[test]
    fn nonce_table_is_bounded_and_evicted_nonces_are_stale() {
        let mut server = DigestServer::with_nonces_max(
            "pms.test".to_string(),
            SECRET,
            vec![Algorithm::Sha256],
            2,
        );
        let first = server.challenges(NOW, false).remove(0);
        let _second = server.challenges(NOW, false);
        let third = server.challenges(NOW, false).remove(0);
        assert_eq!(server.nonces_len(), 2);
        assert_eq!(
            login(&mut server, &first, "pw", 1, NOW),
            Err(DigestError::StaleNonce)
        );
        assert!(login(&mut server, &third, "pw", 1, NOW).is_ok());
    }

    #[test]
    fn missing_parameters_and_bad_realm() {
        assert_eq!(
            parse_credentials(r#"Digest username="a", realm="r", nonce="n", uri="u""#),
            Err(DigestError::MissingParameter { name: "response" })
        );
        assert!(matches!(
            parse_credentials("Basic YWxhZGRpbjpvcGVuc2VzYW1l"),
            Err(DigestError::Malformed { .. })
        ));
        assert!(matches!(
            parse_credentials("Digest username=\"a"),
            Err(DigestError::Malformed { .. })
        ));
        let mut server = server(vec![Algorithm::Sha256]);
        let value = server.challenges(NOW, false).remove(0);
        let challenge = parse_challenge(&value).expect("parses");
        let mut credentials = parse_credentials(&authorization(
            &challenge, "alice", "pw", "REGISTER", "sip:x", "c", 1,
        ))
        .expect("parses");
        credentials.realm = "other".to_string();
        assert!(matches!(
            server.verify(&credentials, "REGISTER", |_| None, NOW),
            Err(DigestError::WrongRealm { .. })
        ));
        credentials.realm = "pms.test".to_string();
        credentials.qop = None;
        assert_eq!(
            server.verify(&credentials, "REGISTER", |_| None, NOW),
            Err(DigestError::MissingParameter { name: "qop" })
        );
    }
}
