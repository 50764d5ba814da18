//! Abuse by authenticated and unauthenticated clients, against a real `pmsd` on loopback
//! (issue 8): password guessing is throttled per source and per account without locking the
//! real user out (item 8), and one sender can neither fill a recipient's mailbox nor flood it
//! faster than its rate, while everyone else still gets through (item 13).
//!
//! Sources are distinct loopback addresses (`127.0.0.x`): each client binds its own before it
//! connects.

mod common;

use std::time::{Duration, Instant};

use common::{Node, PASSWORD, SipSource};
use pms_sip::message::Response;
use pms_types::limits::{AUTH_FAILURES_PER_ACCOUNT_MAX, AUTH_FAILURES_PER_SOURCE_MAX};

const WRONG_PASSWORD: &str = "Tr0ub4dor&3";
const THROTTLED: &str = "403 Too Many Failed Authentications";

fn node_with_users(extra: &[&str], users: &[&str]) -> Node {
    let node = Node::start_with(extra.iter().map(|arg| (*arg).to_owned()).collect());
    for user in users {
        node.add_user(user);
    }
    node
}

fn source(node: &Node, last_octet: u8) -> SipSource {
    SipSource::connect([127, 0, 0, last_octet], node.sip_tcp_addr())
}

fn status_line(response: &Response) -> String {
    format!("{} {}", response.status, response.reason)
}

/// The `Retry-After` seconds of `response`, which must have one.
fn retry_after(response: &Response) -> u64 {
    response
        .headers
        .get("Retry-After")
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in {response:?}"))
}

/// The value of the metric sample `series` (name with its labels) on `/metrics`.
fn metric(node: &Node, series: &str) -> Option<f64> {
    let (_, body) = common::http_get(node.ports.http, "/metrics")?;
    body.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `failures` REGISTERs of `user` with a wrong password from `from`, each refused as a wrong
/// password (not yet throttled).
fn guess(from: &mut SipSource, user: &str, failures: u32) {
    for attempt in 1..=failures {
        let answer = from.register(user, WRONG_PASSWORD);
        assert_eq!(
            status_line(&answer),
            "403 Authentication failed",
            "guess {attempt} for {user}: {answer:?}"
        );
    }
}

fn assert_throttled(answer: &Response, what: &str) {
    assert_eq!(status_line(answer), THROTTLED, "{what}: {answer:?}");
    let seconds = retry_after(answer);
    assert!(
        (1..=60).contains(&seconds),
        "{what}: Retry-After {seconds} is the rest of a 60 s window"
    );
}

#[test]
fn guessing_an_account_is_throttled_without_locking_the_user_out_from_elsewhere() {
    let node = node_with_users(&[], &["alice", "bob"]);
    let mut attacker = source(&node, 1);
    guess(&mut attacker, "alice", AUTH_FAILURES_PER_ACCOUNT_MAX);
    // The next guess is not checked at all; nor is the right password from the same source,
    // which gets the very same answer (the throttle does not confirm a lucky guess).
    assert_throttled(
        &attacker.register("alice", WRONG_PASSWORD),
        "a further guess",
    );
    assert_throttled(
        &attacker.register("alice", PASSWORD),
        "the right password from the guessing source",
    );
    assert_throttled(
        &attacker.message("alice", PASSWORD, "bob", "hello"),
        "a MESSAGE as alice from the guessing source",
    );
    // The real alice, from another address, registers and sends as usual.
    let mut alice = source(&node, 2);
    assert_eq!(status_line(&alice.register("alice", PASSWORD)), "200 OK");
    assert_eq!(
        status_line(&alice.message("alice", PASSWORD, "bob", "hi bob")),
        "202 Accepted"
    );
    // The guessing source is refused for alice only: bob's own password still works there.
    assert_eq!(status_line(&attacker.register("bob", PASSWORD)), "200 OK");
    assert!(
        metric(&node, "pms_auth_throttled_total{method=\"REGISTER\"}").is_some_and(|n| n >= 2.0),
        "throttled attempts are counted"
    );
}

#[test]
fn sources_that_guessed_an_account_are_refused_for_it_and_a_new_source_gets_in() {
    let node = node_with_users(&[], &["carol", "dave"]);
    // Three sources share the account's allowance of failures.
    let per_source = AUTH_FAILURES_PER_ACCOUNT_MAX / 3;
    let mut guessers: Vec<SipSource> = (10..13).map(|octet| source(&node, octet)).collect();
    let mut failures = 0;
    for guesser in &mut guessers {
        guess(guesser, "carol", per_source);
        failures += per_source;
    }
    guess(
        &mut guessers[0],
        "carol",
        AUTH_FAILURES_PER_ACCOUNT_MAX - failures,
    );
    for (index, guesser) in guessers.iter_mut().enumerate() {
        assert_throttled(
            &guesser.register("carol", PASSWORD),
            &format!("carol's password from guessing source {index}"),
        );
        // Below its own maximum, each source may still authenticate as someone else.
        assert_eq!(
            status_line(&guesser.register("dave", PASSWORD)),
            "200 OK",
            "dave from guessing source {index}"
        );
    }
    let mut carol = source(&node, 13);
    assert_eq!(status_line(&carol.register("carol", PASSWORD)), "200 OK");
}

#[test]
fn a_source_guessing_many_accounts_is_refused_for_every_account() {
    let node = node_with_users(&[], &["erin"]);
    let mut scanner = source(&node, 20);
    // Names that are no account count like wrong passwords (and are answered alike), so
    // the throttle does not tell which accounts exist.
    for n in 0..AUTH_FAILURES_PER_SOURCE_MAX {
        guess(&mut scanner, &format!("ghost{n}"), 1);
    }
    assert_throttled(
        &scanner.register("erin", PASSWORD),
        "an account this source never tried",
    );
    let mut erin = source(&node, 21);
    assert_eq!(status_line(&erin.register("erin", PASSWORD)), "200 OK");
}

#[test]
fn one_sender_cannot_fill_a_mailbox_and_others_still_reach_it() {
    let node = node_with_users(
        &["--mailbox-messages-per-sender-max", "3"],
        &["alice", "bob", "carol"],
    );
    let mut alice = source(&node, 1);
    for n in 1..=3 {
        assert_eq!(
            status_line(&alice.message("alice", PASSWORD, "bob", &format!("flood {n}"))),
            "202 Accepted",
            "message {n} within alice's quota for offline bob"
        );
    }
    let refused = alice.message("alice", PASSWORD, "bob", "flood 4");
    assert_eq!(
        status_line(&refused),
        "480 Too Many Messages Queued From You",
        "{refused:?}"
    );
    assert!(retry_after(&refused) > 0);
    // Only alice is refused, and only for bob.
    let mut carol = source(&node, 2);
    assert_eq!(
        status_line(&carol.message("carol", PASSWORD, "bob", "hi bob")),
        "202 Accepted"
    );
    assert_eq!(
        status_line(&alice.message("alice", PASSWORD, "carol", "hi carol")),
        "202 Accepted"
    );
    assert_eq!(
        metric(&node, "pms_messages_sender_limited_total{limit=\"queued\"}"),
        Some(1.0)
    );
    // Once bob's device takes the messages, alice's quota frees up again.
    let (code, received) = node.receive("bob", 4, 30);
    assert_eq!(
        code, 0,
        "bob receives alice's 3 and carol's 1: {received:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = alice.message("alice", PASSWORD, "bob", "after delivery");
        if answer.status / 100 == 2 {
            break;
        }
        assert_eq!(status_line(&answer), status_line(&refused));
        assert!(
            Instant::now() < deadline,
            "alice's quota was not freed by the deliveries"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn one_sender_cannot_send_to_one_recipient_faster_than_its_rate() {
    let node = node_with_users(
        &[
            "--sender-recipient-burst",
            "2",
            "--sender-recipient-interval-ms",
            "600000",
        ],
        &["alice", "bob", "carol"],
    );
    let mut alice = source(&node, 1);
    for n in 1..=2 {
        assert_eq!(
            status_line(&alice.message("alice", PASSWORD, "bob", &format!("burst {n}"))),
            "202 Accepted"
        );
    }
    let refused = alice.message("alice", PASSWORD, "bob", "one too many");
    assert_eq!(status_line(&refused), "480 Sending Too Fast", "{refused:?}");
    let seconds = retry_after(&refused);
    assert!(
        (590..=600).contains(&seconds),
        "Retry-After {seconds}: when the next message is allowed"
    );
    let mut carol = source(&node, 2);
    assert_eq!(
        status_line(&carol.message("carol", PASSWORD, "bob", "hi bob")),
        "202 Accepted"
    );
    assert_eq!(
        status_line(&alice.message("alice", PASSWORD, "carol", "hi carol")),
        "202 Accepted"
    );
    assert_eq!(
        metric(&node, "pms_messages_sender_limited_total{limit=\"rate\"}"),
        Some(1.0)
    );
}
