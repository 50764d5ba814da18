//! Fresh random identifiers for SIP requests: tags, Call-IDs, Via branches, IMDN message ids and
//! `+sip.instance` URNs, plus the `Date` header value.
//!
//! Invariant: every id comes from the OS-seeded thread RNG and carries at least 64 random bits,
//! so two `pmsctl` runs never collide in practice (the server deduplicates on these ids).

use std::time::{SystemTime, UNIX_EPOCH};

/// `bytes` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::thread_rng(), buffer.as_mut_slice());
    hex::encode(buffer)
}

/// A From/To tag.
pub fn new_tag() -> String {
    random_hex(8)
}

/// A Call-ID (no host part: it is optional and would leak the local address).
pub fn new_call_id() -> String {
    random_hex(16)
}

/// A Via branch with the RFC 3261 magic cookie.
pub fn new_branch() -> String {
    format!("z9hG4bK{}", random_hex(10))
}

/// An `imdn.Message-ID` value (RFC 5438: unique, at least 32 bits of randomness).
pub fn new_imdn_message_id() -> String {
    random_hex(12)
}

/// An RFC 5626 instance id: a version-4 UUID URN.
pub fn new_instance_urn() -> String {
    let mut bytes = [0u8; 16];
    rand::Rng::fill(&mut rand::thread_rng(), &mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The current time as an RFC 1123 date (`Date` header, RFC 3261 §20.17).
pub fn sip_date_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    sip_date(seconds)
}

/// `seconds` since the Unix epoch as `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn sip_date(seconds: u64) -> String {
    pms_types::time::rfc1123(pms_types::UnixMillis(seconds.saturating_mul(1000)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_as_rfc1123() {
        assert_eq!(sip_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(sip_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(sip_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(sip_date(1_735_689_599), "Tue, 31 Dec 2024 23:59:59 GMT");
    }

    #[test]
    fn ids_are_fresh_and_well_formed() {
        assert_ne!(new_call_id(), new_call_id());
        assert!(new_branch().starts_with("z9hG4bK"));
        let urn = new_instance_urn();
        assert_eq!(urn.len(), "urn:uuid:".len() + 36);
        assert_eq!(&urn[23..24], "4", "version nibble in {urn}");
    }
}
