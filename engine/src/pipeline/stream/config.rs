//! What a stream consumer is configured with ([`StreamConsumer`], [`StreamKey`], [`StartAt`]).

use std::time::Duration;

use bytes::Bytes;

use std::sync::Arc;

use super::StreamPipeline;
use crate::budget::Budget;
use crate::error::Error;
use crate::pipeline::alo::Backoff;
use crate::pipeline::{check_block_timeout, Start, Timing};

/// Where a new consumer group starts reading (`XGROUP CREATE … <id> MKSTREAM`). A group
/// that exists already keeps its position.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartAt {
    /// Only entries added from now on (`$`).
    New,
    /// Every entry in the stream (`0`).
    Beginning,
    /// Entries after this id.
    Id(Bytes),
}

impl StartAt {
    pub(crate) fn arg(&self) -> &[u8] {
        match self {
            StartAt::New => b"$",
            StartAt::Beginning => b"0",
            StartAt::Id(id) => id,
        }
    }
}

/// A stream key to consume, with the tag expression its entries are filtered by.
///
/// (Named `StreamKey`, not `Stream`, so that it never clashes with the `Stream` trait of
/// `futures`/`tokio-stream` that async code has in scope.)
#[derive(Debug, Clone)]
pub struct StreamKey {
    pub(crate) name: Bytes,
    /// Alternatives of `TagA || TagB`; empty for `*` (everything).
    pub(crate) tags: Vec<Bytes>,
    /// Why the tag expression given to [`StreamKey::tags`] does not parse: `start` refuses
    /// the consumer with it.
    pub(crate) bad_tags: Option<String>,
}

impl StreamKey {
    /// The stream `name`, every entry.
    pub fn new(name: impl Into<Bytes>) -> Self {
        Self {
            name: name.into(),
            tags: Vec::new(),
            bad_tags: None,
        }
    }

    /// Only entries whose tag field is one of `expr`'s alternatives (RocketMQ's
    /// `"TagA || TagB"`); `*` is everything. Entries that do not match are acknowledged
    /// without reaching the handler, and counted (`Stats::filtered`). An expression that
    /// does not parse (see [`StreamKey::try_tags`]) makes `start` fail with
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) rather than filter out everything.
    pub fn tags(self, expr: &str) -> Self {
        let name = self.name.clone();
        match self.try_tags(expr) {
            Ok(s) => s,
            Err(e) => Self {
                name,
                tags: Vec::new(),
                bad_tags: Some(e.to_string()),
            },
        }
    }

    /// [`StreamKey::tags`], checked at once: `*`, or tags separated by `||` (a tag is one
    /// word: no white space, none of `|()&!`).
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config), saying what is wrong with `expr`.
    pub fn try_tags(mut self, expr: &str) -> Result<Self, Error> {
        const NOT_IN_A_TAG: &[char] = &['|', '(', ')', '&', '!'];
        let fail = |why: String| {
            Err(Error::config(format!(
                "{why}: a tag expression is `*` or tags separated by `||`, such as 'TagA || TagB'"
            )))
        };
        if expr.trim().is_empty() {
            return fail("the tag expression is empty".into());
        }
        let mut tags = Vec::new();
        for alt in expr.split("||").map(str::trim) {
            if alt.is_empty() {
                return fail(format!("'{expr}' has an empty alternative"));
            }
            if let Some(c) = alt
                .chars()
                .find(|c| c.is_whitespace() || NOT_IN_A_TAG.contains(c))
            {
                return fail(format!("'{alt}' is not a tag ({c:?} cannot be in one)"));
            }
            tags.push(Bytes::copy_from_slice(alt.as_bytes()));
        }
        if tags.iter().any(|t| t.as_ref() == b"*") {
            tags.clear();
        }
        self.tags = tags;
        self.bad_tags = None;
        Ok(self)
    }

    /// The stream's name.
    pub fn name(&self) -> &Bytes {
        &self.name
    }

    /// Whether an entry with this tag (`None`: no tag field) passes the filter.
    pub(crate) fn accepts(&self, tag: Option<&[u8]>) -> bool {
        self.tags.is_empty() || tag.is_some_and(|t| self.tags.iter().any(|x| x.as_ref() == t))
    }
}

impl From<&str> for StreamKey {
    fn from(s: &str) -> Self {
        StreamKey::new(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for StreamKey {
    fn from(s: String) -> Self {
        StreamKey::new(Bytes::from(s))
    }
}

/// A `stream`-mode consumer: one consumer of a Redis Streams consumer group over one or
/// more streams (RocketMQ's CLUSTERING model: each entry goes to one consumer of the
/// group; entries pending with a consumer survive its crash).
#[derive(Debug, Clone)]
pub struct StreamConsumer {
    pub(crate) streams: Vec<StreamKey>,
    pub(crate) group: Bytes,
    pub(crate) id: Bytes,
    pub(crate) start: StartAt,
    pub(crate) batch: u32,
    pub(crate) block_timeout: Duration,
    pub(crate) pipeline: u32,
    pub(crate) lease: Duration,
    pub(crate) max_deliveries: u32,
    pub(crate) backoff: Backoff,
    pub(crate) dead_max_len: u32,
    pub(crate) delete_on_ack: bool,
    pub(crate) payload_field: Bytes,
    pub(crate) tag_field: Bytes,
}

impl StreamConsumer {
    /// Consumer `id` of group `group` on `streams`, with defaults: groups created at
    /// [`StartAt::New`], COUNT 128, block 1 s, pipeline 2, lease 30 s, at most 25
    /// deliveries, reliable mode's default backoff, a dead stream capped near 10 000
    /// entries, the payload in field `payload` and the tag in field `tag`.
    pub fn new<S: Into<StreamKey>>(
        group: impl Into<Bytes>,
        id: impl Into<Bytes>,
        streams: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            streams: streams.into_iter().map(Into::into).collect(),
            group: group.into(),
            id: id.into(),
            start: StartAt::New,
            batch: 128,
            block_timeout: Duration::from_secs(1),
            pipeline: 2,
            lease: Duration::from_secs(30),
            max_deliveries: 25,
            backoff: Backoff::default(),
            dead_max_len: 10_000,
            delete_on_ack: false,
            payload_field: Bytes::from_static(b"payload"),
            tag_field: Bytes::from_static(b"tag"),
        }
    }

    /// Where a group that does not exist yet starts.
    pub fn start_at(mut self, s: StartAt) -> Self {
        self.start = s;
        self
    }

    /// Most entries one XREADGROUP asks for per stream (COUNT).
    pub fn batch(mut self, n: u32) -> Self {
        self.batch = n.max(1);
        self
    }

    /// How long a blocking XREADGROUP waits (BLOCK, at least 1 ms).
    pub fn block_timeout(mut self, d: Duration) -> Self {
        self.block_timeout = d.max(Duration::from_millis(1));
        self
    }

    /// How many XREADGROUPs one connection keeps in flight while there is backlog.
    pub fn pipeline(mut self, depth: u32) -> Self {
        self.pipeline = depth.max(1);
        self
    }

    /// How long an entry may stay pending with a consumer that does not settle it
    /// before another consumer of the group claims it (XAUTOCLAIM's min-idle; at least
    /// 1 s). It bounds how long a dead consumer's entries wait, and must be longer than
    /// a handler takes.
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d.max(Duration::from_secs(1));
        self
    }

    /// Most deliveries of one entry (at least 1); a `Retry` on the last one sends it to
    /// the dead stream.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n.max(1);
        self
    }

    /// The delay before a retried entry is delivered again, capped at half the lease (a
    /// longer wait would let the group's claim loop take it first).
    pub fn backoff(mut self, b: Backoff) -> Self {
        self.backoff = b;
        self
    }

    /// The dead stream `{s}:dead` is trimmed to about this many entries (`MAXLEN ~`).
    pub fn dead_letters(mut self, max_len: u32) -> Self {
        self.dead_max_len = max_len.max(1);
        self
    }

    /// Acknowledge and delete in one atomic step (XACKDEL where the server has it, else
    /// a script doing XACK and XDEL), so the stream does not grow with settled entries.
    pub fn delete_on_ack(mut self, on: bool) -> Self {
        self.delete_on_ack = on;
        self
    }

    /// The field holding the payload (default `payload`); an entry without it has an
    /// empty payload.
    pub fn payload_field(mut self, f: impl Into<Bytes>) -> Self {
        self.payload_field = f.into();
        self
    }

    /// The field holding the tag (default `tag`).
    pub fn tag_field(mut self, f: impl Into<Bytes>) -> Self {
        self.tag_field = f.into();
        self
    }

    /// The streams, in configuration order.
    pub fn streams(&self) -> &[StreamKey] {
        &self.streams
    }
}

impl Start for StreamConsumer {
    type Pipeline = StreamPipeline;
    const SOURCES: &'static str = "streams";
    const MODE: &'static str = "stream";

    fn group_name(&self) -> Option<String> {
        Some(String::from_utf8_lossy(&self.group).into_owned())
    }

    fn check(&self) -> Result<(), Error> {
        if self.streams.is_empty() {
            return Err(Error::config("no streams to consume: give at least one"));
        }
        crate::pipeline::alo::check_lease(self.lease)?;
        if let Some((s, why)) = self
            .streams
            .iter()
            .find_map(|s| Some((s, s.bad_tags.as_ref()?)))
        {
            return Err(Error::config(format!(
                "stream {:?}: {why}",
                String::from_utf8_lossy(&s.name)
            )));
        }
        for (what, v) in [("group", &self.group), ("consumer id", &self.id)] {
            if v.is_empty() {
                return Err(Error::config(format!("stream mode needs a {what}")));
            }
        }
        check_block_timeout(self.block_timeout)
    }

    fn source_names(&self) -> Vec<String> {
        self.streams
            .iter()
            .map(|s| String::from_utf8_lossy(s.name()).into_owned())
            .collect()
    }

    /// The stream and its dead-letter stream.
    fn source_keys(&self, i: usize) -> Option<Vec<Bytes>> {
        let s = self.streams.get(i)?;
        Some(vec![
            s.name().clone(),
            crate::envelope::keys::dead(s.name()).into(),
        ])
    }

    fn pipeline(
        &self,
        lanes: Vec<Vec<u32>>,
        budget: Option<Arc<Budget>>,
        timing: Timing,
    ) -> StreamPipeline {
        StreamPipeline::new(self, budget, lanes, timing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_expressions_that_do_not_parse_are_refused() {
        for bad in ["((", "", "a ||", "a b", "a && b", "!a"] {
            let e = StreamKey::new("s").try_tags(bad).expect_err(bad);
            assert_eq!(e.kind(), crate::ErrorKind::Config, "{bad}");
            let c = StreamConsumer::new("g", "c", [StreamKey::new("s").tags(bad)]);
            let e = c.check().expect_err(bad);
            assert!(e.to_string().contains("tag expression"), "{e}");
        }
        assert!(StreamKey::new("s").try_tags(" A || B ").is_ok());
    }

    #[test]
    fn tag_expressions() {
        let s = StreamKey::new("s").tags("A || B");
        assert!(s.accepts(Some(b"A")) && s.accepts(Some(b"B")));
        assert!(!s.accepts(Some(b"C")) && !s.accepts(None));
        let all = StreamKey::new("s").tags("*");
        assert!(all.accepts(None) && all.accepts(Some(b"x")));
    }
}
