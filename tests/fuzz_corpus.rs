//! Replays the fuzz corpus (fuzz/corpus/agent_input) through the same entry point as the fuzz
//! target, so every input the fuzzer ever kept is checked on each CI run.

use std::path::Path;

#[test]
fn every_corpus_input_is_decoded_without_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/agent_input");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz corpus directory") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| keytap::agent::exercise_decoders(&data));
        assert!(outcome.is_ok(), "decoder panicked on {}", path.display());
        count += 1;
    }
    assert!(count >= 15, "corpus has only {count} inputs");
}
