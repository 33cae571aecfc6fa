#!/usr/bin/env bash
# Fuzzes ringq-resp's decoder for a bounded time.
#
# Usage: scripts/fuzz.sh [SECONDS]      (default 60)
#
# Fuzzer: cargo-fuzz (libFuzzer, coverage-guided) with `--sanitizer none`, which builds and
# runs on stable Rust; the sanitizers need nightly, and the codec is `#![forbid(unsafe_code)]`
# so AddressSanitizer would find little. Built with debug assertions, so an arithmetic
# overflow is a crash too. The target (resp/fuzz/fuzz_targets/decode.rs) runs the oracle in
# resp/tests/common/oracle.rs: no panic, typed errors, the same result in one read or one
# byte per read, and a round trip of every decoded frame.
#
# Installs what it needs: cargo-fuzz (`cargo install --locked`) when missing. libfuzzer-sys
# builds libFuzzer from source, so a C++ compiler must be present (Debian: g++).
#
# Corpus: the committed seeds in resp/fuzz/seeds/decode are read-only input; what a run
# finds goes to resp/fuzz/corpus/decode (git-ignored) and is reused by the next run.
# Crashes land in resp/fuzz/artifacts/decode/; reproduce one with
#   (cd resp && cargo fuzz run --sanitizer none -a decode fuzz/artifacts/decode/<file>)
# then add it to the seeds once fixed (resp/tests/fuzz_corpus.rs replays them in cargo test).
#
# Not part of scripts/test.sh: a fuzz run costs minutes of CI time.
# Environment: RINGQ_JOBS build jobs (default 2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-60}
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds == 0)); then
    echo "usage: $0 [SECONDS]   (a positive number of seconds, default 60)" >&2
    exit 2
fi
export CARGO_BUILD_JOBS=${RINGQ_JOBS:-2}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz not found: installing it (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
fi
if ! command -v c++ >/dev/null 2>&1; then
    echo "no C++ compiler (c++) found: libfuzzer-sys needs one to build libFuzzer;" \
        "install g++ (Debian: apt-get install g++) and run again" >&2
    exit 1
fi

cd resp
mkdir -p fuzz/corpus/decode fuzz/artifacts/decode
echo "fuzzing ringq-resp's decoder for ${seconds}s with $(cargo fuzz --version) (--sanitizer none, stable $(rustc --version | cut -d' ' -f2))"
# -max_len: replies longer than this add no new code paths, only slower iterations.
# -timeout: one input taking over 10 s is a hang (quadratic behaviour), reported as a crash.
cargo fuzz run --sanitizer none --debug-assertions decode \
    fuzz/corpus/decode fuzz/seeds/decode -- \
    -max_total_time="$seconds" -max_len=4096 -timeout=10 -print_final_stats=1
echo "fuzzing finished: no crash in ${seconds}s (corpus: resp/fuzz/corpus/decode)"
