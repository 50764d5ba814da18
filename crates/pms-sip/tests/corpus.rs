//! Crash-regression corpus: every file in `tests/corpus/` is fed through the same entry points
//! as the fuzz targets (`pms_sip::fuzzing`). Files are chosen by extension: `.sip` (framing +
//! parse), `.auth` (digest), `.xml`/`.cpim` (IMDN/CPIM); anything else goes through all three.
//!
//! Invariant: a fuzzer-found crash is fixed by adding its input here first.

use std::path::Path;

use pms_sip::fuzzing::{exercise_digest, exercise_imdn, exercise_sip};

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
            Some("sip") => exercise_sip(&bytes),
            Some("auth") => exercise_digest(&bytes),
            Some("xml" | "cpim") => exercise_imdn(&bytes),
            _ => {
                exercise_sip(&bytes);
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
}
