//! Fuzz target: arbitrary bytes through `pms_sip::fuzzing::exercise_framing`: the stream framer
//! fed in input-chosen read splits (and in one piece), with its keep-alives, limits and the
//! datagram check (no panic; same frames however the stream is split; every consumed byte
//! accounted for; buffer within its bound; message frames re-parse and re-frame consistently).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pms_sip::fuzzing::exercise_framing(data);
});
