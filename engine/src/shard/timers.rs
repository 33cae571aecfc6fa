//! What the shard does on its timers: reply deadlines, reconnect backoffs, the drain limit
//! of a stalled connection, idle PINGs, queue depth sampling, the pipeline's and the
//! user's periodic callbacks, and publishing its counters, gauges and histograms to the
//! shared stats every 100 ms.

use std::sync::atomic::Ordering;
use std::time::Instant;

use ringq_resp::CommandWriter;

use super::{Shard, STATS_PERIOD};
use crate::backend::Backend;
use crate::conn::{Phase, Tag};
use crate::pipeline::Pipeline;
use crate::timer::TimerEvent;

impl<P: Pipeline, B: Backend> Shard<P, B> {
    pub(super) fn on_timer(&mut self, ev: TimerEvent, now: Instant) {
        match ev {
            TimerEvent::Deadline { conn, gen } => self.on_deadline(conn as usize, gen, now),
            TimerEvent::DrainLimit { conn, gen } => self.on_drain_limit(conn as usize, gen, now),
            TimerEvent::Reconnect { conn, gen } => {
                let id = conn as usize;
                if self
                    .io
                    .conns
                    .get(id)
                    .is_some_and(|c| c.gen() == gen && c.phase() == Phase::Idle)
                    && !self.io.stopping
                {
                    self.reconnect(id, now);
                }
            }
            TimerEvent::PublishStats => {
                self.publish_stats();
                self.retire_idle_controls(now);
                self.io
                    .timers
                    .add(now + STATS_PERIOD, TimerEvent::PublishStats);
            }
            TimerEvent::IdlePing => {
                if !self.io.stopping {
                    let allow = self.io.reply_timeout;
                    for conn in &mut self.io.conns {
                        if conn.serves() && conn.is_idle() && !conn.reading_paused() {
                            conn.command(Tag::Ping, now, allow, |buf| {
                                CommandWriter::new(buf, 1).arg("PING").finish();
                            });
                        }
                    }
                }
                self.io
                    .timers
                    .add(now + self.idle_ping, TimerEvent::IdlePing);
            }
            TimerEvent::SampleDepth => self.on_depth_timer(now),
            TimerEvent::Pipeline(n) => self.pipeline.on_timer(&mut self.io, n, now),
            TimerEvent::User(n) => {
                if let Some((period, f)) = self.periodic.get_mut(n as usize) {
                    f();
                    let next = now + *period;
                    self.io.timers.add(next, TimerEvent::User(n));
                }
            }
        }
    }

    pub(super) fn publish_stats(&mut self) {
        let s = &self.io.stats;
        s.merge_latency(&mut self.latency);
        s.merge_process(&mut self.process);
        s.merge_rtt(&mut self.rtt_fetch, &mut self.rtt_control);
        let (n, bytes) = self.io.credits.in_flight();
        s.in_flight.store(n, Ordering::Relaxed);
        s.in_flight_bytes.store(bytes, Ordering::Relaxed);
        let io = self.driver.counters();
        s.syscalls.store(io.syscalls, Ordering::Relaxed);
        s.completions.store(io.completions, Ordering::Relaxed);
        let mut conns = [0u64; 4];
        for (i, c) in self.io.conns.iter().enumerate() {
            if c.phase() == Phase::Done || c.retired() {
                continue;
            }
            let control = self.io.is_control(i);
            conns[usize::from(control) * 2 + usize::from(!c.serves())] += 1;
        }
        for (slot, n) in s.conns.iter().zip(conns) {
            slot.store(n, Ordering::Relaxed);
        }
        s.max_in_flight
            .fetch_max(self.io.credits.high_water(), Ordering::Relaxed);
        s.max_in_flight_bytes
            .fetch_max(self.io.credits.high_water_bytes(), Ordering::Relaxed);
    }
}
