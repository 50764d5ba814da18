//! Property tests: `parse(build(m)) == m` for generated requests and responses, name-addr and
//! URI `Display`/`parse` round trips, framing of arbitrary chunkings, and "never panics" on
//! arbitrary bytes.
//!
//! Invariant: generated messages are valid by construction (mandatory headers present, CSeq
//! method equal to the request method, values without control characters or surrounding
//! whitespace), so any difference is a parser or builder bug.

use pms_sip::framing::{Frame, StreamFramer};
use pms_sip::message::{Headers, Method, NameAddr, Request, Response, SipMessage, SipUri, parse};
use proptest::prelude::*;

fn known_method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::Register),
        Just(Method::Message),
        Just(Method::Options),
        Just(Method::Invite),
        Just(Method::Ack),
        Just(Method::Bye),
        Just(Method::Cancel),
        Just(Method::Subscribe),
        Just(Method::Notify),
        Just(Method::Publish),
        Just(Method::Info),
        Just(Method::Refer),
        Just(Method::Update),
        Just(Method::Prack),
        "[A-Z][A-Z-]{0,11}".prop_map(|token| Method::parse(&token)),
    ]
}

fn sip_uri() -> impl Strategy<Value = SipUri> {
    (
        prop_oneof![Just("sip"), Just("sips")],
        proptest::option::of("[a-zA-Z0-9_.+-]{1,12}"),
        prop_oneof![
            "[a-z0-9-]{1,10}(\\.[a-z]{2,5}){0,2}".prop_map(|host| host),
            "[0-9a-f:]{2,12}".prop_map(|address| format!("[{address}]")),
        ],
        proptest::option::of(any::<u16>()),
        proptest::collection::vec(
            (
                "[a-z][a-z0-9-]{0,6}",
                proptest::option::of("[a-zA-Z0-9.]{1,8}"),
            ),
            0..3,
        ),
    )
        .prop_map(|(scheme, user, host, port, params)| SipUri {
            scheme: scheme.to_string(),
            user,
            password: None,
            host,
            port,
            params,
            headers: None,
        })
}

fn name_addr() -> impl Strategy<Value = NameAddr> {
    (
        // Display names: any printable text, including quotes, backslashes and emoji.
        proptest::option::of("[^\\p{Cc}]{0,16}"),
        sip_uri(),
        proptest::collection::vec(
            (
                "[a-z+][a-z0-9.-]{0,8}",
                proptest::option::of(prop_oneof![
                    "[a-zA-Z0-9]{1,8}",
                    "\"<urn:uuid:[0-9a-f-]{4,12}>\"",
                ]),
            ),
            0..3,
        ),
    )
        .prop_map(|(display_name, uri, params)| NameAddr {
            display_name,
            uri,
            params,
        })
}

fn extra_headers() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec(
        (
            "X-[A-Za-z0-9-]{1,12}",
            // Printable, no surrounding whitespace.
            "([^\\p{Cc}\\s]([^\\p{Cc}]{0,30}[^\\p{Cc}\\s])?)?",
        ),
        0..6,
    )
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        "\\PC{0,40}".prop_map(String::into_bytes),
    ]
}

fn mandatory(
    headers: &mut Headers,
    from: &NameAddr,
    to: &NameAddr,
    call_id: &str,
    cseq: u32,
    method: &Method,
) {
    headers.push("Via", "SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK1");
    headers.push("From", from.to_string());
    headers.push("To", to.to_string());
    headers.push("Call-ID", call_id);
    headers.push("CSeq", format!("{cseq} {method}"));
}

prop_compose! {
    fn request()(
        method in known_method(),
        uri in sip_uri(),
        from in name_addr(),
        to in name_addr(),
        call_id in "[a-zA-Z0-9@.-]{1,32}",
        cseq in any::<u32>(),
        extra in extra_headers(),
        body in body(),
    ) -> Request {
        let mut request = Request::new(method.clone(), uri.to_string());
        mandatory(&mut request.headers, &from, &to, &call_id, cseq, &method);
        for (name, value) in extra {
            request.headers.push(name, value);
        }
        request.body = body;
        request
    }
}

prop_compose! {
    fn response()(
        status in 100u16..=699,
        reason in "([^\\p{Cc}\\s]([^\\p{Cc}]{0,20}[^\\p{Cc}\\s])?)?",
        method in known_method(),
        from in name_addr(),
        to in name_addr(),
        cseq in any::<u32>(),
        extra in extra_headers(),
        body in body(),
    ) -> Response {
        let mut response = Response::new(status, reason);
        mandatory(&mut response.headers, &from, &to, "cid", cseq, &method);
        for (name, value) in extra {
            response.headers.push(name, value);
        }
        response.body = body;
        response
    }
}

proptest! {
    #[test]
    fn request_round_trips(request in request()) {
        let bytes = request.to_bytes();
        prop_assert_eq!(parse(&bytes), Ok(SipMessage::Request(request.clone())));
        let (_, method) = request.cseq().expect("generated CSeq is valid");
        prop_assert_eq!(method, request.method.clone());
    }

    #[test]
    fn response_round_trips(response in response()) {
        let bytes = response.to_bytes();
        prop_assert_eq!(parse(&bytes), Ok(SipMessage::Response(response)));
    }

    #[test]
    fn name_addr_display_parses_back(name_addr in name_addr()) {
        prop_assert_eq!(NameAddr::parse(&name_addr.to_string()), Ok(name_addr));
    }

    #[test]
    fn uri_display_parses_back(uri in sip_uri()) {
        prop_assert_eq!(SipUri::parse(&uri.to_string()), Ok(uri));
    }

    /// However the stream is chunked, the framer yields the same messages.
    #[test]
    fn framing_is_independent_of_chunking(
        requests in proptest::collection::vec(request(), 1..4),
        cuts in proptest::collection::vec(1usize..64, 1..200),
    ) {
        let stream: Vec<u8> = requests.iter().flat_map(Request::to_bytes).collect();
        let mut framer = StreamFramer::new(64 * 1024, 64 * 1024);
        let mut frames = Vec::new();
        let mut position = 0;
        let mut cut_sizes = cuts.iter().cycle();
        while position < stream.len() {
            let size = *cut_sizes.next().unwrap_or(&1);
            let end = (position + size).min(stream.len());
            framer.push(&stream[position..end]);
            position = end;
            while let Some(frame) = framer.next_frame() {
                frames.push(frame.expect("valid stream"));
            }
        }
        let expected: Vec<Frame> = requests.iter().map(|request| Frame::Message(request.to_bytes())).collect();
        prop_assert_eq!(frames, expected);
        prop_assert_eq!(framer.buffered_len(), 0);
    }

    /// Arbitrary bytes never panic the parser or the framer.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&bytes);
        let mut framer = StreamFramer::new(256, 256);
        framer.push(&bytes);
        for _ in 0..64 {
            if framer.next_frame().is_none() {
                break;
            }
        }
        let _ = pms_sip::framing::datagram(&bytes, 256);
    }
}

#[test]
fn header_injection_is_neutralised_by_to_bytes() {
    let mut request = Request::new(Method::Message, "sip:b@x");
    request.headers.push("Via", "SIP/2.0/UDP h");
    request.headers.push("From", "<sip:a@x>;tag=1");
    request.headers.push("To", "<sip:b@x>");
    request.headers.push("Call-ID", "c");
    request.headers.push("CSeq", "1 MESSAGE");
    request.headers.push("Subject", "hi\r\nX-Injected: yes");
    request.headers.push("Content-Length", "999");
    let message = parse(&request.to_bytes()).expect("still one valid message");
    assert_eq!(message.headers().get("X-Injected"), None);
    assert_eq!(
        message.headers().get("Subject"),
        Some("hi  X-Injected: yes")
    );
}
