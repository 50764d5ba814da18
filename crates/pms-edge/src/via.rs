//! The top `Via` of a response: `received` and `rport` (RFC 3261 §18.2.1, RFC 3581 §4), so a
//! client behind NAT learns the address PMS saw and its responses find their way back.
//!
//! Invariant: only the topmost Via value changes; every other header keeps its place and bytes.

use std::net::{IpAddr, SocketAddr};

use pms_sip::message::{Headers, Response};

/// Adds `received=<source IP>` to the top Via when its sent-by host is not that address (or
/// when the client asked for `rport`, which requires it), and fills an empty `rport` with the
/// source port.
pub fn stamp_top_via(response: &mut Response, peer: SocketAddr) {
    let mut rebuilt = Headers::new();
    let mut stamped = false;
    for (name, value) in response.headers.iter() {
        let is_via = name.eq_ignore_ascii_case("Via") || name.eq_ignore_ascii_case("v");
        if is_via && !stamped {
            stamped = true;
            rebuilt.push(name, stamp_via_value(value, peer));
        } else {
            rebuilt.push(name, value);
        }
    }
    response.headers = rebuilt;
}

/// `value` may hold several comma-separated Via values; only the first changes.
fn stamp_via_value(value: &str, peer: SocketAddr) -> String {
    let (first, rest) = match value.split_once(',') {
        Some((first, rest)) => (first, Some(rest)),
        None => (value, None),
    };
    let mut parts = first.trim().split(';');
    let sent = parts.next().unwrap_or_default().trim();
    let host = sent_by_host(sent);
    let mut rport_requested = false;
    let mut params: Vec<String> = Vec::new();
    for param in parts.map(str::trim).filter(|param| !param.is_empty()) {
        let name = param.split('=').next().unwrap_or_default().trim();
        if name.eq_ignore_ascii_case("received") {
            continue;
        }
        if name.eq_ignore_ascii_case("rport") && !param.contains('=') {
            rport_requested = true;
            params.push(format!("rport={}", peer.port()));
            continue;
        }
        params.push(param.to_string());
    }
    let same_host = host
        .parse::<IpAddr>()
        .is_ok_and(|address| address == peer.ip());
    if rport_requested || !same_host {
        params.push(format!("received={}", peer.ip()));
    }
    let mut out = sent.to_string();
    for param in params {
        out.push(';');
        out.push_str(&param);
    }
    if let Some(rest) = rest {
        out.push(',');
        out.push_str(rest);
    }
    out
}

/// The host of `SIP/2.0/UDP host[:port]` (brackets of an IPv6 reference removed).
fn sent_by_host(sent: &str) -> &str {
    let sent_by = sent.split_whitespace().nth(1).unwrap_or_default();
    if let Some(bracketed) = sent_by.strip_prefix('[') {
        return bracketed.split(']').next().unwrap_or_default();
    }
    sent_by.split(':').next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(via: &str, peer: &str) -> String {
        let mut response = Response::new(200, "OK");
        response.headers.push("Via", via);
        response
            .headers
            .push("Via", "SIP/2.0/UDP proxy.example;branch=z9hG4bKp");
        response.headers.push("Call-ID", "c");
        stamp_top_via(&mut response, peer.parse().unwrap());
        let vias = response.headers.get_all("Via");
        assert_eq!(vias[1], "SIP/2.0/UDP proxy.example;branch=z9hG4bKp");
        assert_eq!(response.headers.get("Call-ID"), Some("c"));
        vias[0].to_string()
    }

    #[test]
    fn received_is_added_when_sent_by_is_another_address() {
        assert_eq!(
            stamped(
                "SIP/2.0/UDP phone.invalid:5060;branch=z9hG4bK1",
                "192.0.2.7:4000"
            ),
            "SIP/2.0/UDP phone.invalid:5060;branch=z9hG4bK1;received=192.0.2.7"
        );
        assert_eq!(
            stamped(
                "SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK1",
                "127.0.0.1:5070"
            ),
            "SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK1"
        );
    }

    #[test]
    fn an_empty_rport_is_filled_and_received_always_added() {
        assert_eq!(
            stamped(
                "SIP/2.0/UDP 127.0.0.1:5070;rport;branch=z9hG4bK1",
                "127.0.0.1:40001"
            ),
            "SIP/2.0/UDP 127.0.0.1:5070;rport=40001;branch=z9hG4bK1;received=127.0.0.1"
        );
        assert_eq!(
            stamped(
                "SIP/2.0/UDP [::1]:5070;branch=z9hG4bK1, SIP/2.0/UDP x;branch=y",
                "[::1]:5070"
            ),
            "SIP/2.0/UDP [::1]:5070;branch=z9hG4bK1, SIP/2.0/UDP x;branch=y"
        );
    }
}
