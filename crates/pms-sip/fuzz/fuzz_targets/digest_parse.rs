//! Fuzz target: arbitrary bytes through `pms_sip::fuzzing::exercise_digest` (no panic; the
//! properties asserted there hold for every input).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pms_sip::fuzzing::exercise_digest(data);
});
