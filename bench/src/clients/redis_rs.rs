//! The common Rust choice: redis-rs on tokio. One multiplexed connection per lane, and
//! `--pipeline` tasks per connection each looping on a blocking pop — `BRPOP keys… 1`
//! (single) or `BLMPOP 1 n keys… RIGHT COUNT batch` (batch) — with replies decoded into
//! owned `Vec<u8>` values, as application code typically does. The multiplexer pipelines
//! the tasks' commands on the connection, so `--pipeline` pops are in flight, as for
//! ringq. The runtime is current-thread for one shard, multi-thread with `--shards`
//! workers otherwise. Response timeout: block timeout + 2 s (the default 500 ms would cut
//! blocking pops short).

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncConnectionConfig;

use super::{Sink, BLOCK_SECS};
use crate::cli::PopMode;
use crate::error::{Error, Result};
use crate::spec::ChildSpec;

pub fn run(spec: &ChildSpec, sink: &Arc<Sink>) -> Result<Option<String>> {
    let rt = runtime(spec)?;
    if spec.url.starts_with("redis+cluster://") {
        return run_cluster(spec, sink, rt);
    }
    sink.watchdog(super::deadline(spec), || {});
    rt.block_on(async {
        let client = client(spec)?;
        let config =
            AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(3)));
        for lane in 0..spec.lanes() {
            let con = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let keys = spec.lane_queues(lane);
            spawn_loops(spec, sink, &con, &keys, "redis-rs");
        }
        sink.ready();
        sink.finished().await;
        Ok::<_, Error>(())
    })?;
    // Tasks still blocked in pops are dropped with the runtime; the process exits next.
    std::mem::forget(rt);
    Ok(None)
}

/// Spawns `--pipeline` tasks on `con`, each running the scenario's loop (consumer group,
/// lease, or pop) over `keys`; a task's error fails the run, named after `who`.
fn spawn_loops<C>(spec: &ChildSpec, sink: &Arc<Sink>, con: &C, keys: &[String], who: &'static str)
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    for _ in 0..spec.pipeline.max(1) {
        let (sink, con, keys) = (sink.clone(), con.clone(), keys.to_vec());
        let (pop, batch, reliable, stream) = (spec.pop, spec.batch, spec.reliable, spec.stream);
        tokio::spawn(async move {
            let r = if stream {
                group_loop(con, keys, batch, &sink).await
            } else if reliable {
                lease_loop(con, keys, batch, &sink).await
            } else {
                pop_loop(con, keys, pop, batch, &sink).await
            };
            if let Err(e) = r {
                sink.fail(format!("{who}: {e}"));
            }
        });
    }
}

/// The runtime: current-thread for one shard, multi-thread with `--shards` workers.
fn runtime(spec: &ChildSpec) -> Result<tokio::runtime::Runtime> {
    if spec.shards <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(spec.shards)
            .enable_all()
            .build()
    }
    .map_err(|e| Error::io("building the tokio runtime", e))
}

/// `--cluster`: redis-rs's cluster client (`cluster-async`: it reads the slot map, keeps
/// one multiplexed connection per node and routes each command by its key), with
/// `--pipeline` tasks per source, each running the scenario's loop over its one source
/// (a multi-key command would span slots).
fn run_cluster(
    spec: &ChildSpec,
    sink: &Arc<Sink>,
    rt: tokio::runtime::Runtime,
) -> Result<Option<String>> {
    let (_, seeds) = crate::cluster::seeds(&spec.url);
    sink.watchdog(super::deadline(spec), || {});
    rt.block_on(async {
        let client = redis::cluster::ClusterClientBuilder::new(seeds)
            .response_timeout(Duration::from_secs(3))
            .build()?;
        let con = client.get_async_connection().await?;
        for q in &spec.queues {
            spawn_loops(
                spec,
                sink,
                &con,
                std::slice::from_ref(q),
                "redis-rs cluster",
            );
        }
        sink.ready();
        sink.finished().await;
        Ok::<_, Error>(())
    })?;
    std::mem::forget(rt);
    Ok(None)
}

async fn pop_loop<C: redis::aio::ConnectionLike>(
    mut con: C,
    keys: Vec<String>,
    pop: PopMode,
    batch: u32,
    sink: &Sink,
) -> redis::RedisResult<()> {
    while !sink.is_done() {
        match pop {
            PopMode::Single => {
                let reply: Option<(Vec<u8>, Vec<u8>)> = redis::cmd("BRPOP")
                    .arg(&keys)
                    .arg(BLOCK_SECS)
                    .query_async(&mut con)
                    .await?;
                if let Some((_key, value)) = reply {
                    sink.consume([&value[..]]);
                }
            }
            PopMode::Batch => {
                let reply: Option<(Vec<u8>, Vec<Vec<u8>>)> = redis::cmd("BLMPOP")
                    .arg(BLOCK_SECS)
                    .arg(keys.len())
                    .arg(&keys)
                    .arg("RIGHT")
                    .arg("COUNT")
                    .arg(batch)
                    .query_async(&mut con)
                    .await?;
                if let Some((_key, values)) = reply {
                    sink.consume(values.iter().map(Vec::as_slice));
                }
            }
        }
    }
    Ok(())
}

/// `reliable`: at-least-once the way a careful redis-rs user writes it — a pipeline of
/// `batch` × `LMOVE q {q}:processing:<id> RIGHT LEFT`, handle what came, then a pipeline
/// of `LREM {q}:processing:<id> -1 element` for each; `BLMOVE` when the queue is empty.
/// The `--pipeline` tasks are multiplexed on the connection. The first queue of the lane
/// only: this baseline is measured with one queue.
async fn lease_loop<C: redis::aio::ConnectionLike>(
    mut con: C,
    keys: Vec<String>,
    batch: u32,
    sink: &Sink,
) -> redis::RedisResult<()> {
    let Some(q) = keys.first() else {
        return Ok(());
    };
    let processing = format!("{{{q}}}:processing:{}", crate::spec::RELIABLE_ID);
    while !sink.is_done() {
        let mut lease = redis::pipe();
        for _ in 0..batch.max(1) {
            lease
                .cmd("LMOVE")
                .arg(q)
                .arg(&processing)
                .arg("RIGHT")
                .arg("LEFT");
        }
        let got: Vec<Option<Vec<u8>>> = lease.query_async(&mut con).await?;
        let mut values: Vec<Vec<u8>> = got.into_iter().flatten().collect();
        if values.is_empty() {
            let v: Option<Vec<u8>> = redis::cmd("BLMOVE")
                .arg(q)
                .arg(&processing)
                .arg("RIGHT")
                .arg("LEFT")
                .arg(BLOCK_SECS)
                .query_async(&mut con)
                .await?;
            values.extend(v);
        }
        if values.is_empty() {
            continue;
        }
        let mut ack = redis::pipe();
        for v in &values {
            ack.cmd("LREM").arg(&processing).arg(-1).arg(v).ignore();
        }
        ack.query_async::<()>(&mut con).await?;
        sink.consume(values.iter().map(Vec::as_slice));
    }
    Ok(())
}

/// `stream`: the consumer-group loop as redis-rs users write it — `XREADGROUP GROUP g c
/// COUNT batch STREAMS s >` (with `BLOCK` once empty) decoded into owned values, handle
/// each entry's payload, then one `XACK` with every id. The `--pipeline` tasks are
/// multiplexed on the connection.
async fn group_loop<C: redis::aio::ConnectionLike>(
    mut con: C,
    keys: Vec<String>,
    batch: u32,
    sink: &Sink,
) -> redis::RedisResult<()> {
    use redis::Value;
    let consumer = format!("redis-rs-{}", std::process::id());
    let read = |block: bool| {
        let mut c = redis::cmd("XREADGROUP");
        c.arg("GROUP")
            .arg(crate::spec::STREAM_GROUP)
            .arg(&consumer)
            .arg("COUNT")
            .arg(batch);
        if block {
            c.arg("BLOCK").arg(1000);
        }
        c.arg("STREAMS").arg(&keys);
        for _ in &keys {
            c.arg(">");
        }
        c
    };
    /// (stream, [(id, payload)])
    type Entries = Vec<(Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>)>;
    // [[stream, [[id, [field, value, …]], …]], …]
    fn entries(v: Value) -> Entries {
        let Value::Array(streams) = v else {
            return Vec::new();
        };
        streams
            .into_iter()
            .filter_map(|s| {
                let Value::Array(mut kv) = s else { return None };
                let list = kv.pop()?;
                let Value::BulkString(key) = kv.pop()? else {
                    return None;
                };
                let Value::Array(list) = list else {
                    return None;
                };
                let got = list
                    .into_iter()
                    .filter_map(|e| {
                        let Value::Array(mut e) = e else { return None };
                        let fields = e.pop()?;
                        let Value::BulkString(id) = e.pop()? else {
                            return None;
                        };
                        let Value::Array(fields) = fields else {
                            return None;
                        };
                        let mut payload = Vec::new();
                        let mut it = fields.into_iter();
                        while let (Some(Value::BulkString(f)), Some(Value::BulkString(v))) =
                            (it.next(), it.next())
                        {
                            if f == b"payload" {
                                payload = v;
                            }
                        }
                        Some((id, payload))
                    })
                    .collect();
                Some((key, got))
            })
            .collect()
    }
    while !sink.is_done() {
        let mut got = entries(read(false).query_async(&mut con).await?);
        if got.iter().all(|(_, e)| e.is_empty()) {
            got = entries(read(true).query_async(&mut con).await?);
        }
        for (key, list) in got {
            if list.is_empty() {
                continue;
            }
            let done = sink.consume(list.iter().map(|(_, p)| p.as_slice()));
            let mut ack = redis::cmd("XACK");
            ack.arg(&key).arg(crate::spec::STREAM_GROUP);
            for (id, _) in &list {
                ack.arg(id);
            }
            let _: i64 = ack.query_async(&mut con).await?;
            if done {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// redis-rs spells Unix sockets `redis+unix://`; ringq's `unix://path?db=N` maps onto it.
/// redis-rs's client for `spec`: over TLS (its `tls-rustls` support, trusting the run's
/// CA) when the spec says so.
fn client(spec: &ChildSpec) -> Result<redis::Client> {
    let url = redis_url(&spec.url);
    let Some(ca) = &spec.tls_ca else {
        return Ok(redis::Client::open(url)?);
    };
    // redis-rs builds its rustls config from the process-wide default provider: install
    // the one ringq uses, or it has none to pick and panics.
    #[allow(deprecated)]
    let _ = ringq::rustls::crypto::ring::default_provider().install_default();
    let root = std::fs::read(ca).map_err(|e| Error::io(format!("reading {}", ca.display()), e))?;
    Ok(redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root),
        },
    )?)
}

fn redis_url(url: &str) -> String {
    match url.strip_prefix("unix://") {
        Some(rest) => format!("redis+unix://{rest}"),
        None => url.to_owned(),
    }
}

/// `pubsub`: redis-rs's async `PubSub` connection, subscribed to the channel, each
/// message's payload handed to the sink as application code would (`get_payload_bytes`).
pub fn listen(spec: &ChildSpec, sink: &Arc<Sink>) -> Result<Option<String>> {
    use futures_util::StreamExt as _;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("building the tokio runtime", e))?;
    sink.watchdog(super::deadline(spec), || {});
    if spec.sharded {
        rt.block_on(listen_cluster(spec, sink))?;
        std::mem::forget(rt);
        return Ok(None);
    }
    // Fan-in over many channels (`--connections N`): every channel on its one connection.
    let channels = if spec.queues.is_empty() {
        vec![spec.channel.clone().unwrap_or_default()]
    } else {
        spec.queues.clone()
    };
    rt.block_on(async {
        let client = client(spec)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&channels).await?;
        sink.ready();
        sink.stop_when_quiet();
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                () = sink.finished() => break,
                m = messages.next() => match m {
                    Some(m) => {
                        if sink.consume([m.get_payload_bytes()]) {
                            break;
                        }
                    }
                    None => {
                        sink.fail("redis-rs: the pub/sub connection ended");
                        break;
                    }
                },
            }
        }
        Ok::<_, Error>(())
    })?;
    std::mem::forget(rt);
    Ok(None)
}

/// `pubsub --cluster`: redis-rs's cluster client over RESP3, `SSUBSCRIBE`d to the sharded
/// channels (it routes each to its slot's primary); messages arrive as pushes on the
/// client's push channel.
async fn listen_cluster(spec: &ChildSpec, sink: &Arc<Sink>) -> Result<()> {
    let (_, seeds) = crate::cluster::seeds(&spec.url);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client = redis::cluster::ClusterClientBuilder::new(seeds)
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(tx)
        .build()?;
    let mut con = client.get_async_connection().await?;
    // One command per channel: a multi-channel SSUBSCRIBE must stay in one slot.
    for ch in &spec.queues {
        con.ssubscribe(ch).await?;
    }
    sink.ready();
    sink.stop_when_quiet();
    loop {
        tokio::select! {
            () = sink.finished() => break,
            m = rx.recv() => match m {
                Some(p) if p.kind == redis::PushKind::SMessage => {
                    if let Some(redis::Value::BulkString(payload)) = p.data.get(1) {
                        if sink.consume([&payload[..]]) {
                            break;
                        }
                    }
                }
                Some(_) => {}
                None => {
                    sink.fail("redis-rs: the cluster connection's pushes ended");
                    break;
                }
            },
        }
    }
    drop(con);
    Ok(())
}
