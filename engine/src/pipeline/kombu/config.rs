//! What a Kombu-mode consumer is configured with ([`KombuConsumer`]).

use std::time::Duration;

use bytes::Bytes;

use crate::pipeline::pop::{PopConsumer, Queue};

/// A `kombu`-mode consumer: Kombu / Celery queues on Redis, consumed at-least-once the
/// way a Kombu consumer with its default ack emulation does, without its crash window.
///
/// Each queue's keys are Kombu's: the queue's name for priority step 0 and
/// `<queue>\x06\x16<step>` for the others (steps 0, 3, 6, 9 unless set; **step 0 is the
/// highest**, as Kombu serves it). Every message is popped and recorded in Kombu's
/// `unacked` hash and `unacked_index` in one script, so a crash loses nothing; an ack
/// removes the record; [`Outcome::Retry`](crate::Outcome::Retry) puts the message back at
/// the tail of its queue marked redelivered (Kombu's `reject(requeue=True)`; there is no
/// delay); [`Outcome::Dead`](crate::Outcome::Dead) moves it to the dead list `{<queue>}:dead`
/// (`ringq dead` lists, requeues and purges it). An element that is not a Kombu envelope
/// never reaches the handler: it is dead-lettered with the reason. What this consumer still
/// holds is renewed in `unacked_index` every quarter of the visibility timeout, so a
/// Python worker's `restore_visible` never takes a long task back; whatever a killed
/// consumer held is restored by a restart with the same id at once, or by any Kombu
/// worker's `restore_visible` after the visibility timeout. It takes part in
/// `restore_visible` itself ([`KombuConsumer::restore_interval`]), so what a killed Python
/// worker held comes back too. See `docs/kombu-wire.md`.
///
/// The handler gets the element as popped (the JSON envelope):
/// [`kombu::Incoming::parse`](crate::kombu::Incoming::parse) gives the decoded body,
/// headers, properties and Celery task.
#[derive(Debug, Clone)]
pub struct KombuConsumer {
    pub(crate) pop: PopConsumer,
    pub(crate) names: Vec<String>,
    pub(crate) id: Bytes,
    pub(crate) visibility_timeout: Duration,
    pub(crate) prefix: String,
    pub(crate) steps: Vec<u8>,
    pub(crate) max_deliveries: u32,
    pub(crate) dead_max_len: u32,
    pub(crate) restore_interval: Duration,
}

impl KombuConsumer {
    /// A consumer named `id` (unique among the consumers of these queues, the same across
    /// restarts) of the Kombu queues `queues`, with Kombu's defaults: visibility timeout
    /// 1 hour, priority steps 0, 3, 6, 9, no key prefix; at most 25 deliveries, a dead
    /// list of at most 10 000 entries, and pop mode's batch and block timeout.
    pub fn new<S: Into<String>>(id: impl Into<Bytes>, queues: impl IntoIterator<Item = S>) -> Self {
        let mut c = Self {
            pop: PopConsumer::new(Vec::<Queue>::new()),
            names: queues.into_iter().map(Into::into).collect(),
            id: id.into(),
            visibility_timeout: Duration::from_secs(3600),
            prefix: String::new(),
            steps: crate::kombu::STEPS.to_vec(),
            max_deliveries: 25,
            dead_max_len: 10_000,
            restore_interval: Duration::from_secs(10),
        };
        c.rebuild();
        c
    }

    /// Kombu's `visibility_timeout` (at least 1 s; every Kombu worker of these queues must
    /// use the same): a record older than this is restored by any worker's
    /// `restore_visible`. This consumer renews its own every quarter of it.
    pub fn visibility_timeout(mut self, d: Duration) -> Self {
        self.visibility_timeout = d.max(Duration::from_secs(1));
        self
    }

    /// How often this consumer takes part in Kombu's `restore_visible` (default 10 s,
    /// Kombu's `unacked_restore_interval`; zero: never): under Kombu's `unacked_mutex` it
    /// restores records older than the visibility timeout — a killed Python worker's, or
    /// another ringq consumer's that stopped renewing — to their queues, marked
    /// redelivered, as a Kombu worker would.
    pub fn restore_interval(mut self, d: Duration) -> Self {
        self.restore_interval = d;
        self
    }

    /// Kombu's `priority_steps` transport option (sorted; 0 is always a step).
    pub fn priority_steps(mut self, steps: impl IntoIterator<Item = u8>) -> Self {
        let mut s: Vec<u8> = steps.into_iter().collect();
        s.push(0);
        s.sort_unstable();
        s.dedup();
        self.steps = s;
        self.rebuild();
        self
    }

    /// Kombu's `global_keyprefix` transport option: put in front of every key (queues,
    /// `unacked`, `unacked_index`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self.rebuild();
        self
    }

    /// Most messages one pop asks for (default 128).
    pub fn batch(mut self, n: u32) -> Self {
        self.pop = self.pop.batch(n);
        self
    }

    /// Pops in flight per connection (default 2), as pop mode's.
    pub fn pipeline(mut self, n: u32) -> Self {
        self.pop = self.pop.pipeline(n);
        self
    }

    /// How long a dry lane waits on the server before looking again (default 1 s).
    pub fn block_timeout(mut self, d: Duration) -> Self {
        self.pop = self.pop.block_timeout(d);
        self
    }

    /// Most deliveries by ringq of one message (at least 1; restores by Python workers do
    /// not count): a message retried on its last one goes to the dead list instead.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n.max(1);
        self
    }

    /// The dead list's cap: at most `max_len` entries per queue (the oldest go first).
    pub fn dead_letters(mut self, max_len: u32) -> Self {
        self.dead_max_len = max_len.max(1);
        self
    }

    /// The key of a queue's priority step, with the prefix.
    pub(crate) fn level_key(&self, queue: &str, step: u8) -> Bytes {
        let mut k = format!("{}{queue}", self.prefix);
        if step != 0 {
            k.push_str(crate::kombu::SEP);
            k.push_str(&step.to_string());
        }
        Bytes::from(k)
    }

    /// A key of Kombu's with the prefix (`unacked`, `unacked_index`).
    pub(crate) fn kombu_key(&self, name: &str) -> Bytes {
        Bytes::from(format!("{}{name}", self.prefix))
    }

    /// The pop consumer's queues: each Kombu queue with its steps as levels, step 0 first.
    fn rebuild(&mut self) {
        let queues: Vec<Queue> = self
            .names
            .iter()
            .map(|n| Queue {
                name: Bytes::from(n.clone()),
                levels: self
                    .steps
                    .iter()
                    .map(|&s| (s, self.level_key(n, s)))
                    .collect(),
                weight: 1,
            })
            .collect();
        self.pop.queues = queues;
    }
}
