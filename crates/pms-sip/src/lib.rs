//! `pms-sip`: sans-IO SIP for PMS — stream and datagram framing, message parse/build, digest
//! authentication (both sides), and IMDN/CPIM bodies.
//!
//! Nothing in this crate does IO, reads the clock (time is passed in as
//! [`pms_types::UnixMillis`]) or spawns tasks, so every piece can be fed bytes in a test or a
//! fuzzer.
//!
//! Invariants kept by the whole crate:
//! - Invariant: no input from the network can make this crate panic. There is no `unwrap`,
//!   `expect` or fallible indexing on input bytes; `fuzz/` holds the fuzz targets and
//!   `tests/corpus/` the regression inputs they found.
//! - Invariant: every buffer is bounded by a named maximum (the constants in
//!   [`pms_types::limits`] or the `*_MAX` constants of each module).
//! - Invariant: message bodies are opaque bytes and survive parse → build byte for byte.
//!
//! Parser choice: the parser is our own and rsip is **not used at run time**. rsip 0.4.0 merges
//! pipelined messages, rejects folded headers and `Name : value`, does not expand compact
//! header names and keeps quotes in display names (see the design notes, deps.md); working
//! around each of those cost more than the small grammar subset PMS needs (request/status line,
//! header lines, name-addr, SIP URI, digest parameters). Keeping rsip out also means no
//! third-party SIP type can leak through this crate's API. rsip is a dev-dependency only: the
//! differential oracle (`tests/support/rsip_differential.rs`, run by `tests/rsip_oracle.rs`,
//! `tests/corpus.rs` and the `rsip_differential` fuzz target) reads the same bytes with both
//! parsers and lists every known rsip limitation as a named case.
//!
//! Errors: one `thiserror` enum per module ([`framing::FramingError`],
//! [`message::ParseError`], [`digest::DigestError`], [`imdn::ImdnError`]); each variant carries
//! what is needed to debug (truncated snippets of the offending input, never unbounded copies).

pub mod digest;
pub mod encoding;
pub mod framing;
#[doc(hidden)]
pub mod fuzzing;
mod headers;
pub mod imdn;
pub mod message;
mod method;
mod parse_error;
mod text;
mod uri;

pub use digest::{
    Algorithm, Challenge, DigestCredentials, DigestError, DigestServer, VerifiedUser,
};
pub use framing::{DatagramFrame, Frame, FramingError, StreamFramer};
pub use imdn::{Cpim, Dispositions, ImdnError, ImdnReport, ImdnStatus};
pub use message::{
    Contact, ContentType, Headers, Method, NameAddr, ParseError, Request, Response, SipMessage,
    SipUri, parse, response_to,
};
