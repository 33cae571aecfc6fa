//! The naive io_uring baseline: tokio-uring (the design's named package), written the
//! straightforward way. Each lane's connection is a task that writes `--pipeline` blocking
//! pops, then loops: `read` into an owned 64 KiB buffer, append to a `BytesMut`, decode
//! whole replies with ringq-resp's `Decoder` into `Frame`s, hand their payloads to the
//! sink, and write one new pop per reply. One runtime (thread) per shard; lanes are spread
//! over them. The connection and AUTH/SELECT are done with a blocking socket first, then
//! handed to tokio-uring (`TcpStream::from_std`).

use std::sync::Arc;

use bytes::BytesMut;
use ringq_resp::Decoder;

use super::{bulk_bytes, pop_values, Sink};
use crate::conn::{RawConn, Stream};
use crate::error::{Error, Result};
use crate::spec::ChildSpec;

const READ_BUF: usize = 64 * 1024;

pub fn run(spec: &ChildSpec, sink: &Arc<Sink>) -> Result<Option<String>> {
    let shards = spec.shards.clamp(1, spec.lanes());
    // Connect (blocking) before starting the runtimes, so `ready` means connected.
    let mut per_shard: Vec<Vec<(std::net::TcpStream, Vec<String>)>> =
        (0..shards).map(|_| Vec::new()).collect();
    for lane in 0..spec.lanes() {
        let stream =
            match RawConn::connect(&spec.url)?.into_stream()? {
                Stream::Tcp(s) => s,
                Stream::Unix(_) | Stream::Tls(..) => return Err(Error::new(
                    "the tokio-uring baseline supports plain TCP URLs only (not unix:// or TLS)",
                )),
            };
        per_shard[lane % shards].push((stream, spec.lane_queues(lane)));
    }
    sink.watchdog(super::deadline(spec), || {});
    let mut threads = Vec::new();
    for conns in per_shard {
        let sink = sink.clone();
        let (pop, batch, pipeline) = (spec.pop, spec.batch, spec.pipeline.max(1));
        let t = std::thread::Builder::new()
            .name("tokio-uring".into())
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    tokio_uring::start(async {
                        for (stream, keys) in conns {
                            let sink = sink.clone();
                            tokio_uring::spawn(async move {
                                let stream = tokio_uring::net::TcpStream::from_std(stream);
                                if let Err(e) =
                                    conn_loop(stream, keys, pop, batch, pipeline, &sink).await
                                {
                                    sink.fail(format!("tokio-uring: {e}"));
                                }
                            });
                        }
                        sink.finished().await;
                    })
                }));
                if result.is_err() {
                    sink.fail("tokio-uring: the runtime panicked (is io_uring available?)");
                }
            })
            .map_err(|e| Error::io("spawning a tokio-uring thread", e))?;
        threads.push(t);
    }
    sink.ready();
    // Every runtime returns once the sink is done (or failed).
    for t in threads {
        let _ = t.join();
    }
    Ok(None)
}

async fn conn_loop(
    stream: tokio_uring::net::TcpStream,
    keys: Vec<String>,
    pop: crate::cli::PopMode,
    batch: u32,
    pipeline: u32,
    sink: &Sink,
) -> Result<()> {
    let mut out = BytesMut::new();
    for _ in 0..pipeline {
        super::encode_blocking_pop(&mut out, pop, &keys, batch);
    }
    let (res, _) = stream.write_all(out.to_vec()).await;
    res.map_err(|e| Error::io("writing", e))?;
    let mut decoder = Decoder::new();
    let mut inbuf = BytesMut::with_capacity(READ_BUF);
    let mut rbuf = Vec::with_capacity(READ_BUF);
    while !sink.is_done() {
        rbuf.clear();
        let (res, buf) = stream.read(rbuf).await;
        rbuf = buf;
        let n = res.map_err(|e| Error::io("reading", e))?;
        if n == 0 {
            return Err(Error::new("the server closed the connection"));
        }
        inbuf.extend_from_slice(&rbuf[..n]);
        let mut replies = 0;
        while let Some(frame) = decoder.decode(&mut inbuf)? {
            if sink.consume(bulk_bytes(pop_values(&frame)?)) {
                return Ok(());
            }
            replies += 1;
        }
        if replies > 0 {
            out.clear();
            for _ in 0..replies {
                super::encode_blocking_pop(&mut out, pop, &keys, batch);
            }
            let (res, _) = stream.write_all(out.to_vec()).await;
            res.map_err(|e| Error::io("writing", e))?;
        }
    }
    Ok(())
}
