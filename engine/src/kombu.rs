//! Kombu's Redis transport and Celery's message protocol 2, as ringq writes and reads
//! them: the list keys of a queue's priority steps, the JSON envelope Kombu pushes, and
//! the Celery task message inside it. Written for Kombu 5 / Celery 5 (read: 5.7.0); the
//! wire facts are in `docs/kombu-wire.md`.
//!
//! ```
//! use ringq::kombu::{Incoming, Outgoing};
//!
//! // A Celery task `tasks.add(2, 3)` for the queue `celery`, priority 5 (LPUSH it to the
//! // key `ringq::kombu::queue_key("celery", 5)`).
//! let msg = Outgoing::celery_task("tasks.add", serde_json::json!([2, 3]), serde_json::json!({}))
//!     .routing_key("celery")
//!     .priority(5);
//! let element = msg.encode();
//! let read = Incoming::parse(&element).unwrap();
//! let task = read.task().unwrap();
//! assert_eq!((task.name.as_str(), task.args[0].as_i64()), ("tasks.add", Some(2)));
//! ```

use base64::Engine as _;
use serde_json::{json, Map, Value};

/// Kombu's separator between a queue's name and its priority step (`\x06\x16`).
pub const SEP: &str = "\x06\x16";

/// Kombu's default priority steps. Step 0 is the *highest* priority (the reverse of
/// AMQP): Kombu's consumer names the step-0 keys first.
pub const STEPS: [u8; 4] = [0, 3, 6, 9];

/// The step a message priority (0–9, clamped) falls in with Kombu's default steps: the
/// largest step not above it (0–2 → 0, 3–5 → 3, 6–8 → 6, 9 → 9).
pub fn step_of(priority: u8) -> u8 {
    let p = priority.min(9);
    STEPS.iter().rev().copied().find(|&s| s <= p).unwrap_or(0)
}

/// The list key Kombu keeps `queue`'s messages of `priority` in: the queue's name for
/// step 0, else the name, [`SEP`] and the step (`celery\x06\x163`).
pub fn queue_key(queue: &str, priority: u8) -> String {
    match step_of(priority) {
        0 => queue.to_owned(),
        s => format!("{queue}{SEP}{s}"),
    }
}

/// Why an element is not a Kombu message ringq can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMessage(pub String);

impl std::fmt::Display for BadMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a Kombu message: {}", self.0)
    }
}

impl std::error::Error for BadMessage {}

/// A message to push onto a Kombu queue, as Kombu's `Producer.publish` writes it: the
/// body (UTF-8 text, stored base64 as Kombu's Redis transport does by default), its
/// content type and encoding, headers, and properties with a fresh delivery tag.
#[derive(Debug, Clone)]
pub struct Outgoing {
    body: Vec<u8>,
    content_type: String,
    content_encoding: String,
    headers: Map<String, Value>,
    properties: Map<String, Value>,
    exchange: String,
    routing_key: String,
    priority: u8,
}

impl Outgoing {
    /// A message with `body` of `content_type` (`application/json`, `text/plain`…),
    /// encoded `utf-8` (use [`Outgoing::content_encoding`] for `binary`).
    pub fn new(body: impl Into<Vec<u8>>, content_type: &str) -> Self {
        Self {
            body: body.into(),
            content_type: content_type.to_owned(),
            content_encoding: "utf-8".to_owned(),
            headers: Map::new(),
            properties: Map::new(),
            exchange: String::new(),
            routing_key: String::new(),
            priority: 0,
        }
    }

    /// A JSON body (Kombu's and Celery's default serializer).
    pub fn json(value: &Value) -> Self {
        Self::new(value.to_string(), "application/json")
    }

    /// A Celery protocol 2 task message: task `name` with `args` (a JSON array) and
    /// `kwargs` (a JSON object), a fresh task id, no retries, ETA or expiry. Route it with
    /// [`Outgoing::routing_key`] (Celery's default queue is `celery`).
    pub fn celery_task(name: &str, args: Value, kwargs: Value) -> Self {
        let id = uuid4();
        let args_repr = args.to_string();
        let kwargs_repr = kwargs.to_string();
        let body = json!([args, kwargs, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]);
        let mut m = Self::json(&body);
        let h = &mut m.headers;
        for (k, v) in [
            ("lang", json!("py")),
            ("task", json!(name)),
            ("id", json!(id)),
            ("shadow", Value::Null),
            ("eta", Value::Null),
            ("expires", Value::Null),
            ("group", Value::Null),
            ("group_index", Value::Null),
            ("retries", json!(0)),
            ("timelimit", json!([null, null])),
            ("root_id", json!(id)),
            ("parent_id", Value::Null),
            ("argsrepr", json!(args_repr)),
            ("kwargsrepr", json!(kwargs_repr)),
            ("origin", json!("ringq")),
            ("ignore_result", json!(false)),
        ] {
            h.insert(k.to_owned(), v);
        }
        m.properties.insert("correlation_id".to_owned(), json!(id));
        m
    }

    /// The content encoding (`utf-8`, or `binary` for a body that is not text).
    pub fn content_encoding(mut self, e: &str) -> Self {
        self.content_encoding = e.to_owned();
        self
    }

    /// A header.
    pub fn header(mut self, name: &str, value: Value) -> Self {
        self.headers.insert(name.to_owned(), value);
        self
    }

    /// The priority, 0 (highest, Kombu's default) to 9: push the element onto
    /// [`queue_key`]`(queue, priority)`.
    pub fn priority(mut self, p: u8) -> Self {
        self.priority = p.min(9);
        self
    }

    /// The exchange and routing key recorded in `delivery_info` (Kombu re-routes a
    /// restored message by them; for the default exchange `""` the routing key is the
    /// queue's name).
    pub fn routing_key(mut self, key: &str) -> Self {
        self.routing_key = key.to_owned();
        self
    }

    /// The exchange recorded in `delivery_info` (default `""`).
    pub fn exchange(mut self, name: &str) -> Self {
        self.exchange = name.to_owned();
        self
    }

    /// The list element: the envelope as JSON, the body base64-encoded.
    pub fn encode(&self) -> Vec<u8> {
        let mut props = self.properties.clone();
        props.insert("delivery_mode".to_owned(), json!(2));
        props.insert(
            "delivery_info".to_owned(),
            json!({"exchange": self.exchange, "routing_key": self.routing_key}),
        );
        props.insert("priority".to_owned(), json!(self.priority));
        props.insert("body_encoding".to_owned(), json!("base64"));
        props.insert("delivery_tag".to_owned(), json!(uuid4()));
        let envelope = json!({
            "body": base64::engine::general_purpose::STANDARD.encode(&self.body),
            "content-encoding": self.content_encoding,
            "content-type": self.content_type,
            "headers": self.headers,
            "properties": props,
        });
        envelope.to_string().into_bytes()
    }
}

/// A message read from a Kombu queue: the envelope parsed and the body decoded.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The body, decoded from base64 when `properties.body_encoding` says so.
    pub body: Vec<u8>,
    /// `content-type` (`application/json` for Celery's default serializer).
    pub content_type: String,
    /// `content-encoding` (`utf-8`, `binary`).
    pub content_encoding: String,
    /// The headers (a JSON object; Celery's task fields for protocol 2).
    pub headers: Map<String, Value>,
    /// The properties (`delivery_tag`, `delivery_info`, `priority`, `body_encoding`…).
    pub properties: Map<String, Value>,
}

impl Incoming {
    /// Parses one list element.
    ///
    /// # Errors
    /// [`BadMessage`] saying what is wrong: not JSON, not an object, no `body`, no
    /// `properties.delivery_tag` (Kombu itself refuses those), a body that is not valid
    /// base64 where `body_encoding` is `base64`, or an encoding ringq does not read.
    pub fn parse(element: &[u8]) -> Result<Self, BadMessage> {
        let v: Value =
            serde_json::from_slice(element).map_err(|e| BadMessage(format!("not JSON ({e})")))?;
        let Value::Object(mut top) = v else {
            return Err(BadMessage("JSON, but not an object".into()));
        };
        let mut object = |name: &str| -> Result<Map<String, Value>, BadMessage> {
            match top.remove(name) {
                Some(Value::Object(m)) => Ok(m),
                None | Some(Value::Null) => Ok(Map::new()),
                Some(_) => Err(BadMessage(format!("`{name}` is not an object"))),
            }
        };
        let headers = object("headers")?;
        let properties = object("properties")?;
        if !properties
            .get("delivery_tag")
            .is_some_and(|t| t.is_string() || t.is_number())
        {
            return Err(BadMessage("no `properties.delivery_tag`".into()));
        }
        let text = |top: &Map<String, Value>, name: &str| {
            top.get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (content_type, content_encoding) =
            (text(&top, "content-type"), text(&top, "content-encoding"));
        let body = match top.get("body") {
            Some(Value::String(s)) => match properties.get("body_encoding").and_then(Value::as_str)
            {
                Some("base64") => base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| BadMessage(format!("the body is not valid base64 ({e})")))?,
                None | Some("utf-8") => s.clone().into_bytes(),
                Some(other) => {
                    return Err(BadMessage(format!(
                        "body_encoding {other:?} is not one ringq reads"
                    )));
                }
            },
            Some(_) => return Err(BadMessage("`body` is not a string".into())),
            None => return Err(BadMessage("no `body`".into())),
        };
        Ok(Self {
            body,
            content_type,
            content_encoding,
            headers,
            properties,
        })
    }

    /// `properties.delivery_tag`: Kombu's identity of this delivery.
    pub fn delivery_tag(&self) -> Option<&str> {
        self.properties.get("delivery_tag").and_then(Value::as_str)
    }

    /// `properties.priority` (0 when absent).
    pub fn priority(&self) -> u8 {
        self.properties
            .get("priority")
            .and_then(Value::as_u64)
            .map_or(0, |p| p.min(9) as u8)
    }

    /// Whether Kombu marked it redelivered (restored after its visibility timeout).
    pub fn redelivered(&self) -> bool {
        let flag = |m: &Map<String, Value>| m.get("redelivered").and_then(Value::as_bool);
        flag(&self.headers)
            .or_else(|| {
                self.properties
                    .get("delivery_info")
                    .and_then(Value::as_object)
                    .and_then(flag)
            })
            .unwrap_or(false)
    }

    /// The Celery protocol 2 task it carries (`headers.task` set, a JSON body of `[args,
    /// kwargs, embed]`), or `None` for another message.
    pub fn task(&self) -> Option<Task> {
        let name = self.headers.get("task")?.as_str()?.to_owned();
        let id = self
            .headers
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let retries = self
            .headers
            .get("retries")
            .and_then(Value::as_u64)
            .unwrap_or(0) as u32;
        let body: Value = if self.content_type == "application/json" {
            serde_json::from_slice(&self.body).ok()?
        } else {
            return None;
        };
        let mut parts = match body {
            Value::Array(v) => v.into_iter(),
            _ => return None,
        };
        let args = parts.next().unwrap_or(Value::Array(Vec::new()));
        let kwargs = parts.next().unwrap_or(Value::Object(Map::new()));
        Some(Task {
            name,
            id,
            args,
            kwargs,
            retries,
        })
    }
}

/// A Celery task read from a message ([`Incoming::task`]). Arguments are JSON as Celery
/// wrote them; Kombu's tagged types (`{"__type__": "datetime", "__value__": …}`) are left
/// as those objects.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// The task's registered name (`tasks.add`).
    pub name: String,
    /// The task id (a UUID).
    pub id: String,
    /// Positional arguments: a JSON array.
    pub args: Value,
    /// Keyword arguments: a JSON object.
    pub kwargs: Value,
    /// How many times it was retried before this delivery.
    pub retries: u32,
}

/// A random (version 4) UUID, as Kombu and Celery make delivery tags and task ids: from a
/// per-thread SplitMix64 stream seeded with 128 bits from `/dev/urandom` (time and
/// address where it cannot be read).
fn uuid4() -> String {
    use std::cell::Cell;
    use std::io::Read;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed));
            if read.is_ok() {
                u64::from_le_bytes(seed)
            } else {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
                    ^ (&seed as *const _ as u64)
            }
        });
    }
    let next = || {
        STATE.with(|s| {
            let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            s.set(x);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
    };
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&next().to_le_bytes());
    b[8..].copy_from_slice(&next().to_le_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The pub/sub channel Kombu publishes a fanout exchange's messages on when they carry no
/// routing key (`/<db>.<exchange>`, Kombu's default `fanout_prefix`), and the pattern of
/// those that do (`/<db>.<exchange>/*`, with the default `fanout_patterns`).
pub fn fanout_topics(db: u32, exchange: &str) -> (String, String) {
    let channel = format!("/{db}.{exchange}");
    let pattern = format!("{channel}/*");
    (channel, pattern)
}

/// A listen-mode consumer of Kombu fanout exchange `exchange` in database `db`: both of
/// [`fanout_topics`]. Each message's payload is the Kombu envelope
/// ([`Incoming::parse`]); delivery is pub/sub's, at-most-once, as Kombu's own fanout.
pub fn fanout_consumer(db: u32, exchange: &str) -> crate::ListenConsumer {
    let (channel, pattern) = fanout_topics(db, exchange);
    crate::ListenConsumer::new()
        .channel(channel)
        .pattern(pattern)
}

/// The header in which ringq keeps how many times it handed a message to a handler
/// (Kombu itself keeps only `redelivered`).
pub const DELIVERIES_HEADER: &str = "x-ringq-deliveries";

/// How many times ringq delivered `element` before (its [`DELIVERIES_HEADER`], 0 when
/// absent).
pub(crate) fn deliveries_of(m: &Incoming) -> u32 {
    m.headers
        .get(DELIVERIES_HEADER)
        .and_then(Value::as_u64)
        .map_or(0, |n| n.min(u64::from(u32::MAX)) as u32)
}

/// `element` as Kombu restores a message: `headers.redelivered` and
/// `properties.delivery_info.redelivered` set, and ringq's delivery count written, or
/// `None` when it is not a JSON object.
pub(crate) fn redelivered(element: &[u8], deliveries: u32) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(element).ok()?;
    mark_redelivered(&mut v, Some(deliveries)).then(|| serde_json::to_vec(&v).ok())?
}

/// Marks the envelope `v` as Kombu's restore does (`headers.redelivered`,
/// `properties.delivery_info.redelivered`), with ringq's delivery count when given;
/// false when `v` is not an object.
pub(crate) fn mark_redelivered(v: &mut Value, deliveries: Option<u32>) -> bool {
    let Some(top) = v.as_object_mut() else {
        return false;
    };
    let headers = top
        .entry("headers")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(h) = headers.as_object_mut() {
        h.insert("redelivered".into(), Value::Bool(true));
        if let Some(d) = deliveries {
            h.insert(DELIVERIES_HEADER.into(), json!(d));
        }
    }
    if let Some(info) = top
        .get_mut("properties")
        .and_then(Value::as_object_mut)
        .and_then(|p| p.get_mut("delivery_info"))
        .and_then(Value::as_object_mut)
    {
        info.insert("redelivered".into(), Value::Bool(true));
    }
    true
}

/// A queue's name as the JSON string Kombu's records carry it in, with the record's tail
/// after the element: `, "", "<queue>"]`.
pub(crate) fn record_tail(queue: &str) -> Vec<u8> {
    let mut t = b", \"\", ".to_vec();
    t.extend(serde_json::to_vec(queue).unwrap_or_else(|_| b"\"\"".to_vec()));
    t.push(b']');
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_steps_follow_kombus_defaults() {
        let keys: Vec<String> = (0..=10).map(|p| queue_key("q", p)).collect();
        assert_eq!(keys[0], "q");
        assert_eq!(keys[2], "q");
        assert_eq!(keys[3], "q\x06\x163");
        assert_eq!(keys[8], "q\x06\x166");
        assert_eq!(keys[9], "q\x06\x169");
        assert_eq!(keys[10], "q\x06\x169", "clamped");
    }

    #[test]
    fn an_encoded_message_parses_back() {
        let m = Outgoing::new("héllo", "text/plain")
            .routing_key("q")
            .priority(7);
        let e = m.encode();
        let v: Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v["properties"]["body_encoding"], "base64");
        assert_eq!(v["properties"]["delivery_info"]["routing_key"], "q");
        let r = Incoming::parse(&e).unwrap();
        assert_eq!(r.body, "héllo".as_bytes());
        assert_eq!((r.priority(), r.redelivered()), (7, false));
        assert_eq!(r.delivery_tag().unwrap().len(), 36);
        assert!(r.task().is_none());
    }

    #[test]
    fn bad_elements_say_what_is_wrong() {
        let why = |e: &[u8]| Incoming::parse(e).unwrap_err().0;
        assert!(why(b"plain").contains("not JSON"));
        assert!(why(b"[1]").contains("not an object"));
        assert!(why(br#"{"properties": {"delivery_tag": "t"}}"#).contains("no `body`"));
        assert!(why(br#"{"body": "x"}"#).contains("delivery_tag"));
        assert!(why(
            br#"{"body": "!!", "properties": {"delivery_tag": "t", "body_encoding": "base64"}}"#
        )
        .contains("base64"));
    }

    #[test]
    fn uuids_are_version_4_and_differ() {
        let (a, b) = (uuid4(), uuid4());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
