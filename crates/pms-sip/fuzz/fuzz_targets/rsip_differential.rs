//! Fuzz target: arbitrary bytes through the rsip differential oracle
//! (`../tests/support/rsip_differential.rs`, shared with `tests/rsip_oracle.rs` and
//! `tests/corpus.rs`). Whatever both pms-sip and rsip 0.4.0 accept must read the same, up to a
//! named rsip limitation; anything else panics, which is what the fuzzer reports.
#![no_main]

#[path = "../../tests/support/rsip_differential.rs"]
mod rsip_differential;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rsip_differential::check_arbitrary(data);
});
