//! Fuzz target: any bytes through every decoder entry point, checked by the oracle the
//! regular tests share (`resp/tests/common/oracle.rs`): no panic, typed errors with
//! in-bounds offsets, the same frames and verdict in one read or one byte per read, and
//! every decoded frame round-trips through the encoder and the token reader.
//!
//! Run with `scripts/fuzz.sh`; `resp/tests/fuzz_corpus.rs` replays the seed corpus through
//! the same oracle in every `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/oracle.rs"]
#[allow(dead_code, reason = "the oracle also serves the regular tests")]
mod oracle;

fuzz_target!(|data: &[u8]| oracle::check(data));
