//! Crash-regression corpus: every file in `tests/corpus/` is fed through the same entry points
//! as the fuzz targets (`pms_sip::fuzzing`, and the rsip differential oracle shared with the
//! `rsip_differential` target). Files are chosen by extension: `.sip` (framing + parse + rsip
//! comparison), `.framing` (the `framing` target: limits and read splits chosen by the first
//! bytes), `.auth` (digest), `.xml`/`.cpim` (IMDN/CPIM); anything else goes through all.
//!
//! Invariant: a fuzzer-found crash or disagreement is fixed by adding its input here first.

#[path = "support/rsip_differential.rs"]
mod rsip_differential;

use std::path::Path;

use pms_sip::fuzzing::{exercise_digest, exercise_framing, exercise_imdn, exercise_sip};
use rsip_differential::check_arbitrary;

#[test]
fn corpus_inputs_do_not_panic() {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut count = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&directory)
        .expect("corpus directory exists")
        .map(|entry| entry.expect("readable entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let bytes = std::fs::read(&path).expect("readable corpus file");
        match path.extension().and_then(|extension| extension.to_str()) {
            Some("sip") => {
                exercise_sip(&bytes);
                check_arbitrary(&bytes);
            }
            Some("framing") => exercise_framing(&bytes),
            Some("auth") => exercise_digest(&bytes),
            Some("xml" | "cpim") => exercise_imdn(&bytes),
            _ => {
                exercise_sip(&bytes);
                exercise_framing(&bytes);
                check_arbitrary(&bytes);
                exercise_digest(&bytes);
                exercise_imdn(&bytes);
            }
        }
        count += 1;
    }
    assert!(count >= 10, "corpus went missing: only {count} files");
}

/// The valid seed really is valid, so the fuzzer's round-trip property runs on it.
#[test]
fn valid_seed_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/valid-cpim-message.sip");
    let bytes = std::fs::read(path).expect("seed exists");
    let message = pms_sip::message::parse(&bytes).expect("seed parses");
    let pms_sip::message::SipMessage::Request(request) = message else {
        panic!("seed is a request");
    };
    let fields = pms_sip::imdn::imdn_fields(&request).expect("CPIM parses");
    assert_eq!(fields.message_id.as_deref(), Some("m1"));
    assert!(fields.dispositions.positive_delivery);
    // rsip reads it too, so the differential check really compares on the corpus.
    assert!(matches!(
        check_arbitrary(&bytes),
        rsip_differential::Outcome::Compared(_)
    ));
}
