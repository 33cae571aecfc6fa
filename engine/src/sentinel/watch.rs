//! Following failovers as they happen: one thread per engine, subscribed to
//! `+switch-master` on one sentinel at a time (the next one when it is lost). A switch of
//! this engine's master is recorded in [`Sentinels`] and every shard is woken; the shards
//! then close their connections to any other address (see `Shard::follow_failover`).
//!
//! Missing a switch (no sentinel reachable for a while) costs only time: the old master
//! answers READONLY (or closes the connection) and the lookup on reconnect finds the new
//! one anyway.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ringq_resp::Frame;

use super::{socket_addr, Sentinels};
use crate::error::Error;
use crate::wake::Signals;

/// How often a quiet subscription checks whether the engine is stopping.
const POLL: Duration = Duration::from_millis(250);

/// Starts the watcher thread. It ends once the engine stops.
pub(crate) fn watch(sentinels: Arc<Sentinels>, shared: Arc<Signals>) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("ringq-sentinel".into())
        .spawn(move || run(&sentinels, &shared))
        .map(|_| ())
        .map_err(|e| Error::io("spawning the sentinel watcher thread", e))
}

fn stopping(shared: &Signals) -> bool {
    shared.stop.load(Ordering::Acquire)
}

fn run(sentinels: &Sentinels, shared: &Signals) {
    let mut pause = Duration::from_millis(100);
    while !stopping(shared) {
        let mut any = false;
        for (host, port) in sentinels.list() {
            if stopping(shared) {
                return;
            }
            match subscribe(sentinels, shared, &host, port) {
                Ok(()) => return,
                Err(e) => {
                    any = true;
                    tracing::debug!("sentinel watcher: {e}; trying the next sentinel");
                }
            }
        }
        if any {
            // Every sentinel failed: wait a little (up to 2 s) before the next round.
            let until = std::time::Instant::now() + pause;
            while std::time::Instant::now() < until && !stopping(shared) {
                std::thread::sleep(POLL.min(pause));
            }
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

/// Subscribes at one sentinel and follows its switches until the engine stops (`Ok`) or
/// the subscription is lost (`Err`).
fn subscribe(sentinels: &Sentinels, shared: &Signals, host: &str, port: u16) -> Result<(), Error> {
    let mut c = sentinels.connect(host, port)?;
    c.send(&[b"SUBSCRIBE", b"+switch-master"])?;
    // The confirmation, then only messages.
    let _ = c.read_frame()?;
    c.set_read_timeout(Some(POLL))?;
    tracing::debug!(
        "following failovers of master '{}' at sentinel {}",
        sentinels.master(),
        c.peer()
    );
    while !stopping(shared) {
        let Some(f) = c.poll_frame()? else {
            continue;
        };
        let Some(text) = switch_message(&f) else {
            continue;
        };
        // `<name> <old ip> <old port> <new ip> <new port>`
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [name, _, _, ip, port] = parts[..] else {
            continue;
        };
        if name != sentinels.master() {
            continue;
        }
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        match socket_addr(ip, port) {
            Ok(to) => {
                tracing::warn!(
                    "failover: the sentinels moved master '{name}' to {to}; reconnecting there"
                );
                sentinels.note_switch(to);
                shared.wake_all();
            }
            Err(e) => tracing::warn!("failover of master '{name}': {e}"),
        }
    }
    Ok(())
}

/// The payload of a `+switch-master` message push.
fn switch_message(f: &Frame) -> Option<String> {
    let v = f.as_elements()?;
    let kind = v.first()?.as_bytes()?;
    if kind.as_ref() != b"message" {
        return None;
    }
    let payload = v.get(2)?.as_bytes()?;
    Some(String::from_utf8_lossy(payload).into_owned())
}
