//! Replays the fuzz target's seed corpus (`resp/fuzz/seeds/decode`) through the same
//! oracle the fuzz target runs, so its logic is exercised by every `cargo test` without
//! libFuzzer. Inputs the fuzzer finds worth keeping (crashes once fixed, new coverage) are
//! added to the seeds and replayed here from then on.

mod common;

use std::path::Path;

#[test]
fn every_seed_of_the_fuzz_corpus_passes_the_fuzz_oracle() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/decode");
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    seeds.sort();
    assert!(
        seeds.len() >= 30,
        "only {} seeds in {}",
        seeds.len(),
        dir.display()
    );
    for path in &seeds {
        let data = std::fs::read(path).expect("a readable seed");
        let outcome = std::panic::catch_unwind(|| common::oracle::check(&data));
        assert!(outcome.is_ok(), "seed {} fails the oracle", path.display());
    }
}

#[test]
fn the_oracle_sees_frames_errors_and_waiting_in_the_seeds() {
    // Guards the corpus itself: it must keep reaching all three outcomes.
    use common::oracle::decode_all_whole;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/decode");
    let (mut frames, mut errors, mut waiting) = (0, 0, 0);
    for entry in std::fs::read_dir(dir).expect("the seed directory") {
        let data = std::fs::read(entry.expect("an entry").path()).expect("a seed");
        let outcome = decode_all_whole(&data, ringq_resp::Limits::default());
        frames += outcome.frames.len();
        match outcome.end {
            Err(_) => errors += 1,
            Ok(()) if outcome.frames.is_empty() => waiting += 1,
            Ok(()) => {}
        }
    }
    assert!(
        frames >= 25 && errors >= 6 && waiting >= 1,
        "{frames} frames, {errors} errors, {waiting} waiting"
    );
}
