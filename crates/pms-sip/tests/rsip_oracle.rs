//! Differential property test: generated SIP requests and responses are read by pms-sip and by
//! rsip 0.4.0 (a dev-dependency, used only as an oracle), and the fields PMS acts on must agree
//! (method, Request-URI, status code and reason, Call-ID, CSeq, From/To display names and tags,
//! top Via branch, Content-Type, body). The comparison itself lives in
//! `support/rsip_differential.rs`, shared with the corpus test and the `rsip_differential` fuzz
//! target.
//!
//! The generator varies what pms-sip must accept (compact names, folded lines, `Name : value`,
//! name case, spacing); those variations are then normalised away before both parsers get the
//! same bytes, because rsip cannot read them. pms-sip must read the original and the normalised
//! bytes identically.
//!
//! Invariants:
//! - Invariant: every rsip limitation the comparison tolerates is a `Limitation` with a named
//!   test below (`limitation_*`) that asserts rsip still behaves so; `every_limitation_has_a_case`
//!   makes adding a variant without a case a compile error.
//! - Invariant: runs `PROPTEST_CASES` cases per property (2048 by default), seeded by proptest, so
//!   a failure prints a minimal input to turn into a `limitation_*` case or a parser fix.

#[path = "support/rsip_differential.rs"]
mod rsip_differential;

use pms_sip::framing::{Frame, StreamFramer};
use pms_sip::message::{self, Method, SipMessage, parse};
use proptest::prelude::*;
use rsip::headers::untyped::{ToTypedHeader, UntypedHeader};
use rsip::message::HeadersExt;
use rsip_differential::{Field, Limitation, Outcome, check_arbitrary, compare, normalise};

const DEFAULT_CASES: u32 = 2048;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Generators. Values stay inside what rsip can read once normalised (see `Limitation`): no dot in
// a URI user part, no IPv6 hosts, no URI headers, token-only parameter values, no `<` in quoted
// display names, known methods in upper case, a reason phrase after every status code.

const METHODS: [&str; 14] = [
    "REGISTER",
    "MESSAGE",
    "OPTIONS",
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "SUBSCRIBE",
    "NOTIFY",
    "PUBLISH",
    "INFO",
    "REFER",
    "UPDATE",
    "PRACK",
];

fn method() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(&METHODS[..])
}

/// RFC 3261 token characters (rsip's parameter values accept exactly these).
const TOKEN: &str = "[a-zA-Z0-9.!%*_+`'~-]";

fn token(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("{TOKEN}{{1,{max}}}")).expect("valid regex")
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9-]{1,10}(\\.[a-zA-Z0-9-]{1,10}){0,2}",
        (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
    ]
}

fn uri_param() -> BoxedStrategy<String> {
    prop_oneof![
        prop_oneof![
            Just("udp"),
            Just("TCP"),
            Just("tls"),
            Just("Ws"),
            Just("wss"),
            Just("sctp")
        ]
        .prop_map(|transport| format!(";transport={transport}")),
        Just(";lr".to_string()),
        Just(";user=phone".to_string()),
        host().prop_map(|host| format!(";maddr={host}")),
        (0u8..=255).prop_map(|ttl| format!(";ttl={ttl}")),
        method().prop_map(|method| format!(";method={method}")),
        ("x-[a-z0-9]{1,6}", proptest::option::of(token(10))).prop_map(|(name, value)| {
            match value {
                Some(value) => format!(";{name}={value}"),
                None => format!(";{name}"),
            }
        }),
    ]
    .boxed()
}

/// A SIP URI; `with_params` is false for a bare addr-spec, whose `;` parameters would belong to
/// the header rather than the URI.
fn sip_uri(with_params: bool) -> BoxedStrategy<String> {
    (
        prop_oneof![Just("sip"), Just("sips"), Just("SIP")],
        proptest::option::of((
            "[a-zA-Z0-9_+!~*'%-]{1,12}",
            proptest::option::of("[a-zA-Z0-9]{1,8}"),
        )),
        host(),
        proptest::option::of(any::<u16>()),
        proptest::collection::vec(uri_param(), 0..if with_params { 4 } else { 1 }),
    )
        .prop_map(|(scheme, userinfo, host, port, params)| {
            let mut uri = format!("{scheme}:");
            if let Some((user, password)) = userinfo {
                uri.push_str(&user);
                if let Some(password) = password {
                    uri.push(':');
                    uri.push_str(&password);
                }
                uri.push('@');
            }
            uri.push_str(&host);
            if let Some(port) = port {
                uri.push_str(&format!(":{port}"));
            }
            for param in params {
                uri.push_str(&param);
            }
            uri
        })
        .boxed()
}

fn quoted_display_name() -> impl Strategy<Value = String> {
    // Any printable text (emoji included) but `<` and `>`, with `"` and `\` escaped.
    "[^<>\\p{Cc}]{0,16}".prop_map(|text| {
        let mut quoted = String::from("\"");
        for character in text.chars() {
            if character == '"' || character == '\\' {
                quoted.push('\\');
            }
            quoted.push(character);
        }
        quoted.push('"');
        quoted
    })
}

/// From/To value: display name (none, tokens or quoted), `<uri>` or bare addr-spec, optional
/// tag and other parameters.
fn name_addr(tag: bool) -> BoxedStrategy<String> {
    (
        prop_oneof![
            2 => Just(None),
            1 => "[A-Za-z0-9]{1,8}( [A-Za-z0-9]{1,8}){0,2}".prop_map(Some),
            2 => quoted_display_name().prop_map(Some),
        ],
        any::<bool>(),
        sip_uri(true),
        sip_uri(false),
        proptest::option::of(token(16)),
        proptest::collection::vec(("x-[a-z]{1,5}", token(8)), 0..2),
        any::<bool>(),
    )
        .prop_map(
            move |(display_name, bare, uri, bare_uri, tag_value, params, tag_first)| {
                let mut value = match (display_name, bare) {
                    (None, true) => bare_uri,
                    (None, false) => format!("<{uri}>"),
                    (Some(display_name), _) => format!("{display_name} <{uri}>"),
                };
                let tag_param = tag_value
                    .filter(|_| tag)
                    .map(|tag| format!(";tag={tag}"))
                    .unwrap_or_default();
                if tag_first {
                    value.push_str(&tag_param);
                }
                for (name, param_value) in params {
                    value.push_str(&format!(";{name}={param_value}"));
                }
                if !tag_first {
                    value.push_str(&tag_param);
                }
                value
            },
        )
        .boxed()
}

fn via_element() -> BoxedStrategy<String> {
    (
        prop_oneof![
            Just("UDP"),
            Just("TCP"),
            Just("TLS"),
            Just("WS"),
            Just("WSS"),
            Just("SCTP"),
            Just("tls")
        ],
        host(),
        proptest::option::of(1u16..),
        prop_oneof![
            9 => token(20).prop_map(|branch| Some(format!("z9hG4bK{branch}"))),
            1 => Just(None),
        ],
        any::<bool>(),
        proptest::option::of(host()),
    )
        .prop_map(|(transport, host, port, branch, rport, received)| {
            let mut via = format!("SIP/2.0/{transport} {host}");
            if let Some(port) = port {
                via.push_str(&format!(":{port}"));
            }
            if rport {
                via.push_str(";rport");
            }
            if let Some(received) = received {
                via.push_str(&format!(";received={received}"));
            }
            if let Some(branch) = branch {
                via.push_str(&format!(";branch={branch}"));
            }
            via
        })
        .boxed()
}

fn content_type() -> BoxedStrategy<String> {
    (
        prop_oneof![
            Just("text/plain"),
            Just("Text/Plain"),
            Just("message/cpim"),
            Just("message/imdn+xml"),
            Just("application/im-iscomposing+xml"),
            Just("application/sdp"),
            Just("application/vnd.gsma.rcs-ft-http+xml"),
        ],
        proptest::option::of((
            prop_oneof![Just(";"), Just("; "), Just(" ; ")],
            prop_oneof![
                Just("UTF-8"),
                Just("utf-8"),
                Just("\"UTF-8\""),
                Just("us-ascii")
            ],
        )),
    )
        .prop_map(|(mime_type, charset)| match charset {
            Some((separator, charset)) => format!("{mime_type}{separator}charset={charset}"),
            None => mime_type.to_string(),
        })
        .boxed()
}

fn body() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "\\PC{0,60}",
        // Emoji, other scripts, and line breaks (even an empty line) inside the body.
        "([😀-🙏🚀-🛿é漢字]|[a-z ]|\r\n){0,40}",
    ]
}

/// One header line before its spelling is chosen.
#[derive(Clone, Debug)]
struct HeaderLine {
    name: &'static str,
    value: String,
}

fn header(
    name: &'static str,
    value: impl Strategy<Value = String>,
) -> impl Strategy<Value = HeaderLine> {
    value.prop_map(move |value| HeaderLine { name, value })
}

fn extra_header() -> BoxedStrategy<HeaderLine> {
    prop_oneof![
        header(
            "Max-Forwards",
            (0u8..=255).prop_map(|hops| hops.to_string())
        ),
        header("Subject", "[^\\p{Cc}\\s]([^\\p{Cc}]{0,30}[^\\p{Cc}\\s])?"),
        header(
            "User-Agent",
            "[A-Za-z]{1,8}/[0-9.]{1,5}( \\([a-z ]{1,10}\\))?"
        ),
        header(
            "Expires",
            (0u32..100_000).prop_map(|seconds| seconds.to_string())
        ),
        header(
            "Contact",
            (sip_uri(true), proptest::option::of(0u32..7200)).prop_map(|(uri, expires)| {
                match expires {
                    Some(expires) => format!("<{uri}>;expires={expires}"),
                    None => format!("<{uri}>"),
                }
            })
        ),
        header("X-PMS-Test", "[^\\p{Cc}\\s]{1,20}"),
        header("Allow", Just("INVITE, ACK, MESSAGE, OPTIONS".to_string())),
    ]
    .boxed()
}

/// How one header line is written: compact form, name case, whitespace around the colon, and
/// an optional fold at one of the value's spaces. Only the compact form, the whitespace before
/// the colon and the fold are normalised away before rsip reads it.
#[derive(Clone, Debug)]
struct Spelling {
    compact: bool,
    name_case: u8,
    space_before_colon: bool,
    after_colon: &'static str,
    fold_at: Option<prop::sample::Index>,
    fold_with: &'static str,
}

fn spelling() -> BoxedStrategy<Spelling> {
    (
        any::<bool>(),
        0u8..3,
        prop::bool::weighted(0.1),
        prop_oneof![Just(": "), Just(":"), Just(":  "), Just(":\t")],
        prop::option::weighted(0.15, any::<prop::sample::Index>()),
        prop_oneof![Just("\r\n "), Just("\r\n\t"), Just("\r\n   ")],
    )
        .prop_map(
            |(compact, name_case, space_before_colon, after_colon, fold_at, fold_with)| Spelling {
                compact,
                name_case,
                space_before_colon,
                after_colon,
                fold_at,
                fold_with,
            },
        )
        .boxed()
}

fn compact_letter(name: &str) -> Option<&'static str> {
    Some(match name {
        "Call-ID" => "i",
        "From" => "f",
        "To" => "t",
        "Via" => "v",
        "Content-Type" => "c",
        "Content-Length" => "l",
        "Contact" => "m",
        "Subject" => "s",
        _ => return None,
    })
}

fn write_line(out: &mut String, line: &HeaderLine, spelling: &Spelling) {
    let name = match compact_letter(line.name) {
        Some(letter) if spelling.compact => letter.to_string(),
        _ => match spelling.name_case {
            0 => line.name.to_string(),
            1 => line.name.to_ascii_lowercase(),
            _ => line.name.to_ascii_uppercase(),
        },
    };
    out.push_str(&name);
    if spelling.space_before_colon {
        out.push(' ');
    }
    out.push_str(spelling.after_colon);
    let spaces: Vec<usize> = line
        .value
        .match_indices(' ')
        .map(|(index, _)| index)
        .collect();
    match spelling.fold_at.as_ref().filter(|_| !spaces.is_empty()) {
        Some(index) => {
            let at = spaces[index.index(spaces.len())];
            out.push_str(&line.value[..at]);
            out.push_str(spelling.fold_with);
            out.push_str(line.value[at..].trim_start());
        }
        None => out.push_str(&line.value),
    }
    out.push_str("\r\n");
}

/// A generated message: its bytes as a peer might send them, and what the generator put in.
#[derive(Clone, Debug)]
struct Generated {
    raw: Vec<u8>,
    call_id: String,
    cseq_number: u32,
    body: String,
}

/// Header lines with how each is written.
type SpelledLines = Vec<(HeaderLine, Spelling)>;

/// Header lines (shuffled), the Call-ID, the CSeq number and the body.
fn headers_and_body(
    cseq_method: impl Strategy<Value = &'static str> + 'static,
) -> BoxedStrategy<(SpelledLines, String, u32, String)> {
    let call_id = proptest::string::string_regex(&format!("{TOKEN}{{1,24}}(@[a-z0-9.-]{{1,12}})?"))
        .expect("valid regex");
    (
        (
            proptest::collection::vec(via_element(), 1..4),
            any::<bool>(),
            name_addr(true),
            name_addr(true),
            call_id,
            any::<u32>(),
            cseq_method,
        ),
        (
            proptest::option::of(content_type()),
            body(),
            prop::bool::weighted(0.8),
            proptest::collection::vec(extra_header(), 0..4),
            proptest::collection::vec(spelling(), 16),
        ),
    )
        .prop_flat_map(
            |(
                (vias, vias_in_one_line, from, to, call_id, cseq_number, cseq_method),
                (content_type, body, content_length, extra, spellings),
            )| {
                let mut lines = Vec::new();
                // `Limitation::ViaSentByMisread`: rsip reads a comma right after a sent-by into
                // it, so a one-line list needs parameters on its first Via.
                if vias_in_one_line && vias.first().is_some_and(|via| via.contains(';')) {
                    lines.push(HeaderLine {
                        name: "Via",
                        value: vias.join(", "),
                    });
                } else {
                    for via in vias {
                        lines.push(HeaderLine {
                            name: "Via",
                            value: via,
                        });
                    }
                }
                lines.push(HeaderLine {
                    name: "From",
                    value: from,
                });
                lines.push(HeaderLine {
                    name: "To",
                    value: to,
                });
                lines.push(HeaderLine {
                    name: "Call-ID",
                    value: call_id.clone(),
                });
                lines.push(HeaderLine {
                    name: "CSeq",
                    value: format!("{cseq_number} {cseq_method}"),
                });
                if let Some(content_type) = content_type {
                    lines.push(HeaderLine {
                        name: "Content-Type",
                        value: content_type,
                    });
                }
                if content_length {
                    lines.push(HeaderLine {
                        name: "Content-Length",
                        value: body.len().to_string(),
                    });
                }
                // pms-sip refuses a second Max-Forwards, Expires or Content-Type: one of each.
                for line in extra {
                    if lines.iter().all(|existing| existing.name != line.name) {
                        lines.push(line);
                    }
                }
                let lines: SpelledLines = lines.into_iter().zip(spellings).collect();
                (
                    Just(lines).prop_shuffle(),
                    Just(call_id),
                    Just(cseq_number),
                    Just(body),
                )
            },
        )
        .boxed()
}

fn assemble(start_line: &str, lines: &SpelledLines, body: &str) -> Vec<u8> {
    let mut out = format!("{start_line}\r\n");
    for (line, spelling) in lines {
        write_line(&mut out, line, spelling);
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

fn request() -> BoxedStrategy<Generated> {
    (method(), sip_uri(true))
        .prop_flat_map(|(method, uri)| {
            headers_and_body(Just(method)).prop_map(move |(lines, call_id, cseq_number, body)| {
                Generated {
                    raw: assemble(&format!("{method} {uri} SIP/2.0"), &lines, &body),
                    call_id,
                    cseq_number,
                    body,
                }
            })
        })
        .boxed()
}

/// Registered codes (rsip drops their reason, see `Limitation::ReasonPhraseReplaced`) and any
/// other code (whose reason rsip keeps).
fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        proptest::sample::select(vec![
            100u16, 180, 200, 202, 400, 401, 403, 404, 407, 408, 413, 415, 416, 480, 486, 488, 500,
            503, 505, 600, 603,
        ]),
        100u16..=699,
    ]
}

fn response() -> BoxedStrategy<Generated> {
    (status(), "[^\\p{Cc}]{0,24}")
        .prop_flat_map(|(status, reason)| {
            headers_and_body(method()).prop_map(move |(lines, call_id, cseq_number, body)| {
                Generated {
                    // Always a space after the code, even before an empty reason
                    // (`Limitation::StatusLineNeedsReason`).
                    raw: assemble(&format!("SIP/2.0 {status} {reason}"), &lines, &body),
                    call_id,
                    cseq_number,
                    body,
                }
            })
        })
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// Properties.

/// What both parsers must do with one generated message.
fn check_generated(generated: &Generated) -> Result<(), TestCaseError> {
    let raw = &generated.raw;
    let normalised = normalise(raw);
    let ours = parse(raw);
    prop_assert!(
        ours.is_ok(),
        "pms-sip refused a generated message: {:?}",
        ours
    );
    // Normalising only rewrites what pms-sip already reads the same way.
    prop_assert_eq!(
        &parse(&normalised),
        &ours,
        "normalising changed what pms-sip reads"
    );
    let ours = ours.expect("checked above");
    prop_assert_eq!(ours.headers().call_id(), Ok(generated.call_id.as_str()));
    prop_assert_eq!(
        ours.headers().cseq().map(|(number, _)| number),
        Ok(generated.cseq_number)
    );
    prop_assert_eq!(ours.body(), generated.body.as_bytes());

    match compare(&normalised) {
        Outcome::Compared(comparison) => {
            prop_assert!(
                comparison.disagreements.is_empty(),
                "disagreements {:?}\ninput: {:?}",
                comparison.disagreements,
                String::from_utf8_lossy(&normalised)
            );
            // On normalised input rsip reads every field, except the reason phrase of a
            // registered status code (`Limitation::ReasonPhraseReplaced`).
            for (field, why) in &comparison.not_compared {
                prop_assert!(
                    *field == Field::ReasonPhrase,
                    "rsip could not read {:?}: {}\ninput: {:?}",
                    field,
                    why,
                    String::from_utf8_lossy(&normalised)
                );
            }
        }
        other => prop_assert!(
            false,
            "not compared: {:?}\ninput: {:?}",
            other,
            String::from_utf8_lossy(&normalised)
        ),
    }
    Ok(())
}

/// Small edits that push a valid message towards the edges of the grammar.
fn mutated() -> BoxedStrategy<Vec<u8>> {
    let insertions = prop_oneof![
        Just(" "),
        Just("\t"),
        Just(";"),
        Just(":"),
        Just("<"),
        Just(">"),
        Just("\""),
        Just("\\"),
        Just(","),
        Just("="),
        Just("@"),
        Just("."),
        Just("["),
        Just("]"),
        Just("?"),
        Just("%"),
        Just("\r\n"),
        Just("\r\n "),
        Just("é"),
        Just("😀"),
        Just("a"),
        Just("0"),
        Just(";tag=x"),
        Just(";branch=z9hG4bKq"),
    ];
    (
        prop_oneof![request(), response()],
        proptest::collection::vec((any::<prop::sample::Index>(), insertions), 1..4),
    )
        .prop_map(|(generated, edits)| {
            let mut bytes = generated.raw;
            for (position, insertion) in edits {
                let at = position.index(bytes.len() + 1);
                bytes.splice(at..at, insertion.bytes());
            }
            bytes
        })
        .boxed()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn generated_requests_read_the_same_by_both(generated in request()) {
        check_generated(&generated)?;
    }

    #[test]
    fn generated_responses_read_the_same_by_both(generated in response()) {
        check_generated(&generated)?;
    }

    /// Near-valid input: whatever both accept, they must read alike (or differ only by a
    /// named limitation).
    #[test]
    fn mutated_messages_differ_only_by_known_limitations(bytes in mutated()) {
        check_arbitrary(&bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Known limitations of rsip 0.4.0, one named case each. Every case asserts that rsip still
// behaves so (if one fails, rsip changed: update `Limitation` and the comparison) and shows what
// pms-sip does instead.

const VIA: &str = "Via: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK776\r\n";
const FROM: &str = "From: \"Alice\" <sip:alice@pms.test>;tag=1928\r\n";
const TO: &str = "To: <sip:bob@pms.test>\r\n";
const CALL_ID: &str = "Call-ID: a84b4c76e66710\r\n";

/// A MESSAGE with the usual headers, `extra` header lines (each ending in CRLF) and a body.
fn message_with(start_line: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "{start_line}\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn standard_request(extra: &str) -> Vec<u8> {
    message_with(
        "MESSAGE sip:bob@pms.test SIP/2.0",
        &format!("{VIA}{FROM}{TO}{CALL_ID}CSeq: 1 MESSAGE\r\n{extra}"),
        "hi",
    )
}

fn rsip_parse(bytes: &[u8]) -> Result<rsip::SipMessage, rsip::Error> {
    rsip::SipMessage::try_from(bytes)
}

fn rsip_request(bytes: &[u8]) -> rsip::Request {
    match rsip_parse(bytes) {
        Ok(rsip::SipMessage::Request(request)) => request,
        other => panic!("rsip should read a request: {other:?}"),
    }
}

fn ours(bytes: &[u8]) -> SipMessage {
    parse(bytes).expect("pms-sip reads it")
}

fn ours_request(bytes: &[u8]) -> message::Request {
    match ours(bytes) {
        SipMessage::Request(request) => request,
        SipMessage::Response(_) => panic!("expected a request"),
    }
}

/// Limitation::NoStreamFraming — rsip takes everything after the first CRLFCRLF as the body and
/// ignores Content-Length, so two pipelined messages read as one. pms-sip's framer splits them,
/// and its parser refuses a body that does not match Content-Length.
#[test]
fn limitation_no_stream_framing() {
    let first = standard_request("");
    let second = standard_request("");
    let stream = [first.clone(), second.clone()].concat();
    let request = rsip_request(&stream);
    assert_eq!(request.body, [b"hi".as_slice(), &second].concat());
    assert!(matches!(
        parse(&stream),
        Err(message::ParseError::ContentLengthMismatch { declared: 2, .. })
    ));
    let mut framer = StreamFramer::new(64 * 1024, 64 * 1024);
    framer.push(&stream);
    assert_eq!(framer.next_frame(), Some(Ok(Frame::Message(first))));
    assert_eq!(framer.next_frame(), Some(Ok(Frame::Message(second))));
}

/// Limitation::FoldedHeadersRejected — a continuation line makes the message unreadable for
/// rsip; pms-sip joins it with one space (RFC 3261 §7.3.1). `normalise` unfolds for rsip.
#[test]
fn limitation_folded_headers_rejected() {
    let folded = standard_request("Subject: lunch\r\n  today?\r\n");
    assert!(rsip_parse(&folded).is_err());
    assert_eq!(ours(&folded).headers().get("Subject"), Some("lunch today?"));
    let normalised = normalise(&folded);
    assert_eq!(parse(&normalised), parse(&folded));
    assert!(
        matches!(compare(&normalised), Outcome::Compared(comparison) if comparison.disagreements.is_empty())
    );
}

/// Limitation::SpaceBeforeColonRejected — `Call-ID : x` (allowed by RFC 3261 §7.3.1's HCOLON)
/// makes the message unreadable for rsip.
#[test]
fn limitation_space_before_colon_rejected() {
    let list = message_with(
        "MESSAGE sip:bob@pms.test SIP/2.0",
        &format!(
            "Via: SIP/2.0/UDP a:1, SIP/2.0/UDP b;branch=z9hG4bKb\r\n{FROM}{TO}{CALL_ID}CSeq: 1 MESSAGE\r\n"
        ),
        "",
    );
    assert!(
        rsip_request(&list)
            .via_header()
            .and_then(|via| via.typed())
            .is_err()
    );
    assert_eq!(ours(&list).headers().get_list("Via").len(), 2);

    let spaced = message_with(
        "MESSAGE sip:bob@pms.test SIP/2.0",
        &format!("{VIA}{FROM}{TO}Call-ID : spaced\r\nCSeq: 1 MESSAGE\r\n"),
        "",
    );
    assert!(rsip_parse(&spaced).is_err());
    assert_eq!(ours(&spaced).headers().call_id(), Ok("spaced"));
    assert!(rsip_parse(&normalise(&spaced)).is_ok());
}

/// Limitation::CompactNamesUnknown — `i:` is an unknown header to rsip, so it finds no Call-ID;
/// pms-sip expands compact names on parse.
#[test]
fn limitation_compact_names_unknown() {
    let compact = message_with(
        "MESSAGE sip:bob@pms.test SIP/2.0",
        &format!("{VIA}{FROM}{TO}i: compact-id\r\nCSeq: 1 MESSAGE\r\n"),
        "",
    );
    let request = rsip_request(&compact);
    assert!(request.call_id_header().is_err());
    assert!(request.headers.iter().any(|header| matches!(
        header,
        rsip::Header::Other(name, value) if name == "i" && value == "compact-id"
    )));
    assert_eq!(ours(&compact).headers().call_id(), Ok("compact-id"));
    match compare(&compact) {
        Outcome::Compared(comparison) => {
            assert!(
                comparison
                    .not_compared
                    .iter()
                    .any(|(field, _)| *field == Field::CallId)
            );
        }
        other => panic!("both should accept: {other:?}"),
    }
    let normalised = normalise(&compact);
    assert_eq!(
        rsip_request(&normalised)
            .call_id_header()
            .map(|call_id| call_id.value().to_string())
            .ok(),
        Some("compact-id".to_string())
    );
}

/// Limitation::DisplayNameKeepsQuotes — rsip returns `"Alice \"A\""` with its quotes and
/// escapes; pms-sip returns the text. The comparison unquotes rsip's value.
#[test]
fn limitation_display_name_keeps_quotes() {
    let bytes = message_with(
        "MESSAGE sip:bob@pms.test SIP/2.0",
        &format!(
            "{VIA}From: \"Alice \\\"A\\\"\" <sip:alice@pms.test>;tag=1\r\n{TO}{CALL_ID}CSeq: 1 MESSAGE\r\n"
        ),
        "",
    );
    let from = rsip_request(&bytes)
        .from_header()
        .and_then(|from| from.typed())
        .expect("typed From");
    assert_eq!(from.display_name.as_deref(), Some("\"Alice \\\"A\\\"\""));
    let ours_from = ours(&bytes).headers().from_header().expect("From");
    assert_eq!(ours_from.display_name.as_deref(), Some("Alice \"A\""));
    assert!(
        matches!(compare(&bytes), Outcome::Compared(comparison) if comparison.disagreements.is_empty())
    );
}

/// Limitation::ReasonPhraseReplaced — for a registered code rsip keeps only the code (and
/// prints its own reason); pms-sip keeps the reason phrase as received.
#[test]
fn limitation_reason_phrase_replaced() {
    let bytes = message_with(
        "SIP/2.0 200 Fine, thanks",
        &format!("{VIA}{FROM}{TO}{CALL_ID}CSeq: 1 MESSAGE\r\n"),
        "",
    );
    let Ok(rsip::SipMessage::Response(response)) = rsip_parse(&bytes) else {
        panic!("rsip reads a response");
    };
    assert_eq!(response.status_code, rsip::StatusCode::OK);
    assert!(!response.to_string().contains("Fine, thanks"));
    let SipMessage::Response(ours_response) = ours(&bytes) else {
        panic!("a response");
    };
    assert_eq!(ours_response.reason, "Fine, thanks");
}

/// Limitation::MethodsCaseInsensitive — rsip reads `message` as MESSAGE; RFC 3261 §7.1 methods
/// are case-sensitive, and pms-sip keeps `message` as an unknown method.
#[test]
fn limitation_methods_case_insensitive() {
    let bytes = message_with(
        "message sip:bob@pms.test SIP/2.0",
        &format!("{VIA}{FROM}{TO}{CALL_ID}CSeq: 1 message\r\n"),
        "",
    );
    assert_eq!(rsip_request(&bytes).method, rsip::Method::Message);
    assert_eq!(
        ours_request(&bytes).method,
        Method::Other("message".to_string())
    );
    // The disagreement is attributed to this limitation, not reported as a bug.
    check_arbitrary(&bytes);
}

/// Limitation::ExtensionMethodsRejected — rsip knows 14 methods; any other token (legal in
/// RFC 3261) makes the message unreadable. pms-sip keeps it as `Method::Other`.
#[test]
fn limitation_extension_methods_rejected() {
    let bytes = message_with(
        "FETCH sip:bob@pms.test SIP/2.0",
        &format!("{VIA}{FROM}{TO}{CALL_ID}CSeq: 1 FETCH\r\n"),
        "",
    );
    assert!(rsip_parse(&bytes).is_err());
    assert_eq!(
        ours_request(&bytes).method,
        Method::Other("FETCH".to_string())
    );
}

/// Limitation::UserWithDotMisparsed — rsip stops the user part at the first `.`, finds no `@`
/// there, and takes `alice.smith@pms.test` as the host.
#[test]
fn limitation_user_with_dot_misparsed() {
    let bytes = message_with(
        "MESSAGE sip:alice.smith@pms.test SIP/2.0",
        &format!("{VIA}{FROM}{TO}{CALL_ID}CSeq: 1 MESSAGE\r\n"),
        "",
    );
    let uri = rsip_request(&bytes).uri;
    assert_eq!(uri.auth, None);
    assert_eq!(uri.host_with_port.host.to_string(), "alice.smith@pms.test");
    let ours_uri = ours_request(&bytes).request_uri().expect("SIP URI");
    assert_eq!(ours_uri.user.as_deref(), Some("alice.smith"));
    assert_eq!(ours_uri.host, "pms.test");
    check_arbitrary(&bytes);
}

/// Limitation::Ipv6ReferenceRejected — rsip splits host and port at the first `:`, so an IPv6
/// reference makes the Request-URI (and the message) unreadable.
#[test]
fn limitation_ipv6_reference_rejected() {
    let bytes = message_with(
        "MESSAGE sip:bob@[2001:db8::1]:5061 SIP/2.0",
        &format!("{VIA}{FROM}{TO}{CALL_ID}CSeq: 1 MESSAGE\r\n"),
        "",
    );
    assert!(rsip_parse(&bytes).is_err());
    let ours_uri = ours_request(&bytes).request_uri().expect("SIP URI");
    assert_eq!(
        (ours_uri.host.as_str(), ours_uri.port),
        ("[2001:db8::1]", Some(5061))
    );
}

/// Limitation::UriHeadersReadAsHost — rsip does not know URI headers: `?subject=hi` ends up in
/// the host.
#[test]
fn limitation_uri_headers_read_as_host() {
    let bytes = message_with(
        "MESSAGE sip:bob@pms.test?subject=hi SIP/2.0",
        &format!("{VIA}{FROM}{TO}{CALL_ID}CSeq: 1 MESSAGE\r\n"),
        "",
    );
    let uri = rsip_request(&bytes).uri;
    assert_eq!(uri.host_with_port.host.to_string(), "pms.test?subject=hi");
    let ours_uri = ours_request(&bytes).request_uri().expect("SIP URI");
    assert_eq!(
        (ours_uri.host.as_str(), ours_uri.headers.as_deref()),
        ("pms.test", Some("subject=hi"))
    );
    check_arbitrary(&bytes);
}

/// Limitation::TrailingWhitespaceKept — rsip keeps whitespace at the end of a header value
/// (RFC 3261 §7.3.1 says it is not part of the value); pms-sip trims it.
#[test]
fn limitation_trailing_whitespace_kept() {
    let bytes = message_with(
        "MESSAGE sip:bob@pms.test SIP/2.0",
        &format!("{VIA}{FROM}{TO}Call-ID: trailing \t\r\nCSeq: 1 MESSAGE\r\n"),
        "",
    );
    let request = rsip_request(&bytes);
    assert_eq!(
        request
            .call_id_header()
            .map(|call_id| call_id.value().to_string())
            .ok(),
        Some("trailing \t".to_string())
    );
    assert_eq!(ours(&bytes).headers().call_id(), Ok("trailing"));
    check_arbitrary(&bytes);
}

/// Limitation::ParamsTokenOnly — rsip reads parameters as bare tokens. A quoted value (RFC 3261
/// gen-value allows quoted-string) makes the From header unreadable; an IPv6 `maddr` makes the
/// Request-URI (and the message) unreadable; in a Via, rsip stops at `; ` (SEMI allows the
/// space) or at a non-token character and silently drops the rest, branch included.
#[test]
fn limitation_params_token_only() {
    let quoted = message_with(
        "MESSAGE sip:bob@pms.test SIP/2.0",
        &format!(
            "{VIA}From: <sip:alice@pms.test>;tag=1;x-note=\"a b\"\r\n{TO}{CALL_ID}CSeq: 1 MESSAGE\r\n"
        ),
        "",
    );
    assert!(
        rsip_request(&quoted)
            .from_header()
            .and_then(|from| from.typed())
            .is_err()
    );
    assert_eq!(
        ours(&quoted).headers().from_header().expect("From").tag(),
        Some("1")
    );
    let maddr = message_with(
        "MESSAGE sip:bob@pms.test;maddr=[2001:db8::1] SIP/2.0",
        &format!("{VIA}{FROM}{TO}{CALL_ID}CSeq: 1 MESSAGE\r\n"),
        "",
    );
    assert!(rsip_parse(&maddr).is_err());
    assert!(ours_request(&maddr).request_uri().is_ok());
    for via in [
        "Via: SIP/2.0/UDP 192.0.2.1; branch=z9hG4bKspace\r\n",
        "Via: SIP/2.0/UDP 192.0.2.1;received=2001:db8::1;branch=z9hG4bKspace\r\n",
    ] {
        let bytes = message_with(
            "MESSAGE sip:bob@pms.test SIP/2.0",
            &format!("{via}{FROM}{TO}{CALL_ID}CSeq: 1 MESSAGE\r\n"),
            "",
        );
        let their_via = rsip_request(&bytes)
            .via_header()
            .and_then(|via| via.typed())
            .expect("typed Via");
        assert_eq!(their_via.branch(), None, "{via}");
        assert_eq!(
            ours(&bytes).headers().via_branch().as_deref(),
            Some("z9hG4bKspace")
        );
        check_arbitrary(&bytes);
    }
}

/// Limitation::MediaTypeReadLoosely — rsip keeps the spaces of `text / plain` and reads
/// `charset;x=y` as one parameter named `charset;x`.
#[test]
fn limitation_media_type_read_loosely() {
    for (content_type, their_name) in [
        ("text / plain", "text / plain"),
        ("text/plain;flag;charset=utf-8", "text/plain"),
    ] {
        let bytes = message_with(
            "MESSAGE sip:bob@pms.test SIP/2.0",
            &format!("{VIA}{FROM}{TO}{CALL_ID}CSeq: 1 MESSAGE\r\nContent-Type: {content_type}\r\n"),
            "",
        );
        let request = rsip_request(&bytes);
        let their = request
            .headers
            .iter()
            .find_map(|header| match header {
                rsip::Header::ContentType(content_type) => Some(content_type.typed()),
                _ => None,
            })
            .expect("Content-Type")
            .expect("typed");
        let rsip::typed::MediaType::Other(name, params) = their.0 else {
            panic!("not SDP");
        };
        assert_eq!(name, their_name);
        if content_type.contains("flag") {
            assert_eq!(
                params.first().map(|param| param.0.as_str()),
                Some("flag;charset")
            );
        }
        let ours_type = ours(&bytes).headers().content_type().expect("Content-Type");
        assert_eq!(ours_type.mime_type, "text/plain");
        check_arbitrary(&bytes);
    }
}

/// Limitation::ValuelessTagOrBranchUnknown — `;tag;tag=x`: rsip skips the valueless `tag` (an
/// unknown parameter to it) and finds `x`; pms-sip reads the first `tag` parameter, which has
/// no value, so the From has no tag.
#[test]
fn limitation_valueless_tag_or_branch_unknown() {
    let bytes = message_with(
        "MESSAGE sip:bob@pms.test SIP/2.0",
        &format!("{VIA}From: <sip:alice@pms.test>;tag;tag=x\r\n{TO}{CALL_ID}CSeq: 1 MESSAGE\r\n"),
        "",
    );
    let from = rsip_request(&bytes)
        .from_header()
        .and_then(|from| from.typed())
        .expect("typed From");
    assert_eq!(from.tag().map(ToString::to_string).as_deref(), Some("x"));
    assert_eq!(
        ours(&bytes).headers().from_header().expect("From").tag(),
        None
    );
    check_arbitrary(&bytes);
}

/// Limitation::ViaSentByMisread — rsip reads a sent-by up to the first space or `;`. With a
/// comma inside the first sent-by, pms-sip reads two Via elements (the first without a branch)
/// while rsip reads one; with `host : 5060` (allowed by RFC 3261's COLON) rsip ignores the
/// parameters and finds no branch.
#[test]
fn limitation_via_sent_by_misread() {
    let comma = message_with(
        "MESSAGE sip:bob@pms.test SIP/2.0",
        &format!("Via: SIP/2.0/UDP a,b;branch=z9hG4bKc\r\n{FROM}{TO}{CALL_ID}CSeq: 1 MESSAGE\r\n"),
        "",
    );
    let via = rsip_request(&comma)
        .via_header()
        .and_then(|via| via.typed())
        .expect("typed Via");
    assert_eq!(
        via.branch().map(ToString::to_string).as_deref(),
        Some("z9hG4bKc")
    );
    let message = ours(&comma);
    assert_eq!(
        message.headers().get_list("Via"),
        vec!["SIP/2.0/UDP a", "b;branch=z9hG4bKc"]
    );
    assert_eq!(message.headers().via_branch(), None);
    check_arbitrary(&comma);

    let list = message_with(
        "MESSAGE sip:bob@pms.test SIP/2.0",
        &format!(
            "Via: SIP/2.0/UDP a:1, SIP/2.0/UDP b;branch=z9hG4bKb\r\n{FROM}{TO}{CALL_ID}CSeq: 1 MESSAGE\r\n"
        ),
        "",
    );
    assert!(
        rsip_request(&list)
            .via_header()
            .and_then(|via| via.typed())
            .is_err()
    );
    assert_eq!(ours(&list).headers().get_list("Via").len(), 2);

    let spaced = message_with(
        "MESSAGE sip:bob@pms.test SIP/2.0",
        &format!(
            "Via: SIP/2.0/UDP host : 5060;branch=z9hG4bKc\r\n{FROM}{TO}{CALL_ID}CSeq: 1 MESSAGE\r\n"
        ),
        "",
    );
    let via = rsip_request(&spaced)
        .via_header()
        .and_then(|via| via.typed())
        .expect("typed Via");
    assert_eq!(via.branch(), None);
    assert_eq!(
        ours(&spaced).headers().via_branch().as_deref(),
        Some("z9hG4bKc")
    );
    check_arbitrary(&spaced);
}

/// Limitation::AngleBracketInQuotedDisplayName — rsip cuts a name-addr at its first `<`, even
/// inside the quoted display name.
#[test]
fn limitation_angle_bracket_in_quoted_display_name() {
    let bytes = message_with(
        "MESSAGE sip:bob@pms.test SIP/2.0",
        &format!(
            "{VIA}From: \"a<b\" <sip:alice@pms.test>;tag=1\r\n{TO}{CALL_ID}CSeq: 1 MESSAGE\r\n"
        ),
        "",
    );
    let their_display_name = rsip_request(&bytes)
        .from_header()
        .and_then(|from| from.typed())
        .map(|from| from.display_name);
    assert_ne!(
        their_display_name.ok().flatten().as_deref(),
        Some("\"a<b\"")
    );
    let ours_from = ours(&bytes).headers().from_header().expect("From");
    assert_eq!(ours_from.display_name.as_deref(), Some("a<b"));
    check_arbitrary(&bytes);
}

/// Limitation::StatusLineNeedsReason — `SIP/2.0 200` without the space and reason (an empty
/// reason needs `SIP/2.0 200 ` in RFC 3261 §7.2) is unreadable for rsip; pms-sip accepts it
/// with an empty reason.
#[test]
fn limitation_status_line_needs_reason() {
    let bytes = message_with(
        "SIP/2.0 200",
        &format!("{VIA}{FROM}{TO}{CALL_ID}CSeq: 1 MESSAGE\r\n"),
        "",
    );
    assert!(rsip_parse(&bytes).is_err());
    let SipMessage::Response(response) = ours(&bytes) else {
        panic!("a response");
    };
    assert_eq!((response.status, response.reason.as_str()), (200, ""));
}

/// Limitation::UnknownViaTransportUnreadable — rsip's typed Via knows only UDP, TCP, TLS, SCTP,
/// TLS-SCTP, WS and WSS; pms-sip reads the branch of any Via.
#[test]
fn limitation_unknown_via_transport_unreadable() {
    let bytes = message_with(
        "MESSAGE sip:bob@pms.test SIP/2.0",
        &format!(
            "Via: SIP/2.0/QUIC 192.0.2.1;branch=z9hG4bKq\r\n{FROM}{TO}{CALL_ID}CSeq: 1 MESSAGE\r\n"
        ),
        "",
    );
    assert!(
        rsip_request(&bytes)
            .via_header()
            .and_then(|via| via.typed())
            .is_err()
    );
    assert_eq!(
        ours(&bytes).headers().via_branch().as_deref(),
        Some("z9hG4bKq")
    );
}

/// Every `Limitation` has its case above: adding a variant without one does not compile.
#[test]
fn every_limitation_has_a_case() {
    for limitation in Limitation::ALL {
        let case: fn() = match limitation {
            Limitation::NoStreamFraming => limitation_no_stream_framing,
            Limitation::FoldedHeadersRejected => limitation_folded_headers_rejected,
            Limitation::SpaceBeforeColonRejected => limitation_space_before_colon_rejected,
            Limitation::CompactNamesUnknown => limitation_compact_names_unknown,
            Limitation::DisplayNameKeepsQuotes => limitation_display_name_keeps_quotes,
            Limitation::ReasonPhraseReplaced => limitation_reason_phrase_replaced,
            Limitation::MethodsCaseInsensitive => limitation_methods_case_insensitive,
            Limitation::ExtensionMethodsRejected => limitation_extension_methods_rejected,
            Limitation::UserWithDotMisparsed => limitation_user_with_dot_misparsed,
            Limitation::Ipv6ReferenceRejected => limitation_ipv6_reference_rejected,
            Limitation::UriHeadersReadAsHost => limitation_uri_headers_read_as_host,
            Limitation::TrailingWhitespaceKept => limitation_trailing_whitespace_kept,
            Limitation::ParamsTokenOnly => limitation_params_token_only,
            Limitation::MediaTypeReadLoosely => limitation_media_type_read_loosely,
            Limitation::ValuelessTagOrBranchUnknown => limitation_valueless_tag_or_branch_unknown,
            Limitation::ViaSentByMisread => limitation_via_sent_by_misread,
            Limitation::AngleBracketInQuotedDisplayName => {
                limitation_angle_bracket_in_quoted_display_name
            }
            Limitation::StatusLineNeedsReason => limitation_status_line_needs_reason,
            Limitation::UnknownViaTransportUnreadable => {
                limitation_unknown_via_transport_unreadable
            }
        };
        case();
    }
}
