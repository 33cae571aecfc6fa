//! One picture of a cluster: which primary owns each hash slot, read from `CLUSTER
//! SHARDS` (Redis 7.0+, Valkey; it carries each node's health) or `CLUSTER SLOTS` (the
//! fallback), and the majority of several nodes' pictures.
//!
//! Both replies are read by field name and both RESP2 (flat arrays) and RESP3 (maps) are
//! accepted; slot numbers may be integers or strings (Redis 7.0.0 and 7.2.0–7.2.1 sent
//! strings); unknown fields (Valkey 9's shard `id`, `availability-zone`) are ignored.
//! An endpoint of `""` (a server announcing `unknown-endpoint`) means the node that was
//! asked; `?` means unknown, and such a node owns nothing in the view.

use std::collections::HashMap;

use ringq_resp::Frame;

use super::slot::SLOTS;

/// Where a primary is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Node {
    /// The node id (40 hex digits), or `host:port` when the reply had none.
    pub id: String,
    pub host: String,
    pub port: u16,
}

impl Node {
    /// `host:port`, with brackets around an IPv6 host.
    pub(crate) fn addr(&self) -> String {
        crate::url::HostPort(&self.host, self.port).to_string()
    }
}

const NONE: u16 = u16::MAX;

/// A view as `(first slot, last slot, owner)` ranges in slot order.
type Ranges<'a> = Vec<(u16, u16, &'a Node)>;

/// Which primary owns each slot.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct View {
    /// Index into `nodes` per slot, `NONE` where no primary serves it.
    owner: Box<[u16]>,
    nodes: Vec<Node>,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("nodes", &self.nodes)
            .field("covered", &self.covered())
            .finish()
    }
}

impl Default for View {
    fn default() -> Self {
        Self {
            owner: vec![NONE; SLOTS].into_boxed_slice(),
            nodes: Vec::new(),
        }
    }
}

impl View {
    /// The primary that owns `slot`, if any.
    pub(crate) fn owner(&self, slot: u16) -> Option<&Node> {
        let i = *self.owner.get(usize::from(slot))?;
        self.nodes.get(usize::from(i))
    }

    /// Every primary that owns at least one slot.
    pub(crate) fn primaries(&self) -> &[Node] {
        &self.nodes
    }

    /// How many slots have an owner.
    pub(crate) fn covered(&self) -> usize {
        self.owner.iter().filter(|&&o| o != NONE).count()
    }

    /// Gives `slot` to `node` (a MOVED names the new owner before a refresh confirms it).
    pub(crate) fn assign(&mut self, slot: u16, node: Node) {
        let i = match self
            .nodes
            .iter()
            .position(|n| n.host == node.host && n.port == node.port)
        {
            Some(i) => i,
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        if let Some(o) = self.owner.get_mut(usize::from(slot)) {
            *o = i as u16;
        }
    }

    fn set_range(&mut self, start: u16, end: u16, node: &Node) {
        let i = match self.nodes.iter().position(|n| n == node) {
            Some(i) => i,
            None => {
                self.nodes.push(node.clone());
                self.nodes.len() - 1
            }
        };
        for s in start..=end.min(SLOTS as u16 - 1) {
            self.owner[usize::from(s)] = i as u16;
        }
    }

    /// The view in a form that two nodes' answers can be compared by: the owner of every
    /// range of slots, in slot order.
    fn ranges(&self) -> Ranges<'_> {
        let mut out: Ranges<'_> = Vec::new();
        for (s, &o) in self.owner.iter().enumerate() {
            let Some(n) = self.nodes.get(usize::from(o)) else {
                continue;
            };
            match out.last_mut() {
                Some((_, end, last)) if *last == n && usize::from(*end) + 1 == s => {
                    *end = s as u16;
                }
                _ => out.push((s as u16, s as u16, n)),
            }
        }
        out
    }

    /// A `CLUSTER SHARDS` reply from the node at `asked` (the host an empty endpoint
    /// stands for); `tls`: the connection was TLS, so the nodes' `tls-port` is theirs.
    pub(crate) fn from_shards(f: &Frame, asked: &str, tls: bool) -> Result<Self, String> {
        let shards = f.as_elements().ok_or("CLUSTER SHARDS: not an array")?;
        let mut view = Self::default();
        for shard in shards {
            let fields = Fields::of(shard);
            let slots = fields
                .get(b"slots")
                .and_then(Frame::as_elements)
                .ok_or("CLUSTER SHARDS: a shard without slots")?;
            if slots.is_empty() {
                continue;
            }
            let nodes = fields
                .get(b"nodes")
                .and_then(Frame::as_elements)
                .ok_or("CLUSTER SHARDS: a shard without nodes")?;
            let primary = nodes.iter().map(Fields::of).find(|n| {
                n.text(b"role").as_deref() == Some("master")
                    && n.text(b"health").as_deref() != Some("fail")
            });
            let Some(p) = primary else {
                // Its primary failed and no replica took over yet: those slots wait.
                continue;
            };
            let port = if tls { p.int(b"tls-port") } else { None }.or_else(|| p.int(b"port"));
            let Some(node) = node(
                p.text(b"id"),
                p.text(b"endpoint").or_else(|| p.text(b"ip")),
                port,
                asked,
            ) else {
                continue;
            };
            for pair in slots.chunks(2) {
                let (Some(a), Some(b)) = (pair.first().and_then(int), pair.get(1).and_then(int))
                else {
                    return Err("CLUSTER SHARDS: a slot range that is not two numbers".into());
                };
                view.set_range(slot_of(a)?, slot_of(b)?, &node);
            }
        }
        Ok(view)
    }

    /// A `CLUSTER SLOTS` reply (`[start, end, [endpoint, port, id, …], replicas…]` per
    /// range) from the node at `asked`.
    pub(crate) fn from_slots(f: &Frame, asked: &str) -> Result<Self, String> {
        let ranges = f.as_elements().ok_or("CLUSTER SLOTS: not an array")?;
        let mut view = Self::default();
        for r in ranges {
            let e = r
                .as_elements()
                .ok_or("CLUSTER SLOTS: an entry that is not an array")?;
            let (Some(a), Some(b), Some(p)) = (
                e.first().and_then(int),
                e.get(1).and_then(int),
                e.get(2).and_then(Frame::as_elements),
            ) else {
                return Err("CLUSTER SLOTS: an entry without start, end and primary".into());
            };
            let host = match p.first() {
                Some(Frame::Null) | None => Some(String::new()),
                Some(f) => f
                    .as_bytes()
                    .map(|b| String::from_utf8_lossy(b).into_owned()),
            };
            let id = p
                .get(2)
                .and_then(Frame::as_bytes)
                .map(|b| String::from_utf8_lossy(b).into_owned());
            let port = p.get(1).and_then(int).and_then(|v| u16::try_from(v).ok());
            let Some(node) = node(id, host, port, asked) else {
                continue;
            };
            view.set_range(slot_of(a)?, slot_of(b)?, &node);
        }
        Ok(view)
    }

    /// The view most of `views` agree on (compared slot range by slot range, owners by
    /// node id and address); on a tie, the one that covers the most slots.
    pub(crate) fn majority(views: Vec<View>) -> Option<View> {
        // Per distinct view: how many agree, and the first of them.
        let mut counts: HashMap<Ranges<'_>, (usize, usize)> = HashMap::new();
        for (i, v) in views.iter().enumerate() {
            counts.entry(v.ranges()).or_insert((0, i)).0 += 1;
        }
        let best = counts
            .values()
            .max_by_key(|(n, i)| (*n, views[*i].covered(), std::cmp::Reverse(*i)))
            .map(|&(_, i)| i)?;
        views.into_iter().nth(best)
    }
}

/// A node from a reply's fields; `None` for an unknown endpoint (`?`) or no port.
fn node(id: Option<String>, host: Option<String>, port: Option<u16>, asked: &str) -> Option<Node> {
    let port = port.filter(|&p| p != 0)?;
    let host = match host?.as_str() {
        "?" => return None,
        "" => asked.to_owned(),
        h => h.to_owned(),
    };
    let id = id.unwrap_or_else(|| crate::url::HostPort(&host, port).to_string());
    Some(Node { id, host, port })
}

fn slot_of(v: i64) -> Result<u16, String> {
    u16::try_from(v)
        .ok()
        .filter(|&s| usize::from(s) < SLOTS)
        .ok_or_else(|| format!("slot {v} is out of range"))
}

/// An integer, sent as one or as its digits.
fn int(f: &Frame) -> Option<i64> {
    f.as_integer().or_else(|| {
        f.as_bytes()
            .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
    })
}

/// The fields of a RESP3 map or a RESP2 flat field/value array.
struct Fields<'a>(Vec<(&'a Frame, &'a Frame)>);

impl<'a> Fields<'a> {
    fn of(f: &'a Frame) -> Self {
        match f {
            Frame::Map(m) => Self(m.iter().map(|(k, v)| (k, v)).collect()),
            other => Self(
                other
                    .as_elements()
                    .unwrap_or_default()
                    .chunks(2)
                    .filter_map(|kv| Some((kv.first()?, kv.get(1)?)))
                    .collect(),
            ),
        }
    }

    fn get(&self, name: &[u8]) -> Option<&'a Frame> {
        self.0
            .iter()
            .find(|(k, _)| k.as_bytes().is_some_and(|k| k.as_ref() == name))
            .map(|(_, v)| *v)
    }

    fn text(&self, name: &[u8]) -> Option<String> {
        self.get(name)?
            .as_bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    fn int(&self, name: &[u8]) -> Option<u16> {
        self.get(name)
            .and_then(int)
            .and_then(|v| u16::try_from(v).ok())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn bulk(s: &str) -> Frame {
        Frame::BulkString(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// A RESP2 `CLUSTER SHARDS` entry.
    fn shard(slots: &[Frame], nodes: Vec<Vec<(&str, Frame)>>) -> Frame {
        Frame::Array(vec![
            bulk("slots"),
            Frame::Array(slots.to_vec()),
            bulk("nodes"),
            Frame::Array(
                nodes
                    .into_iter()
                    .map(|n| Frame::Array(n.into_iter().flat_map(|(k, v)| [bulk(k), v]).collect()))
                    .collect(),
            ),
        ])
    }

    fn primary(id: &str, endpoint: &str, port: i64, health: &str) -> Vec<(&'static str, Frame)> {
        vec![
            ("id", bulk(id)),
            ("port", Frame::Integer(port)),
            ("ip", bulk("127.0.0.1")),
            ("endpoint", bulk(endpoint)),
            ("role", bulk("master")),
            ("replication-offset", Frame::Integer(42)),
            ("health", bulk(health)),
            ("availability-zone", bulk("az1")),
        ]
    }

    #[test]
    fn shards_are_read_with_integer_or_string_slots() {
        let f = Frame::Array(vec![
            shard(
                &[Frame::Integer(0), Frame::Integer(5460)],
                vec![primary("a", "127.0.0.1", 7000, "online")],
            ),
            // 7.0.0 and 7.2.0 sent slot numbers as strings.
            shard(
                &[bulk("5461"), bulk("16383")],
                vec![primary("b", "", 7001, "online")],
            ),
            // A shard without slots (a new primary) owns nothing.
            shard(&[], vec![primary("c", "127.0.0.1", 7002, "online")]),
        ]);
        let v = View::from_shards(&f, "10.0.0.9", false).unwrap();
        assert_eq!(v.covered(), SLOTS);
        assert_eq!(v.owner(0).unwrap().port, 7000);
        assert_eq!(v.owner(5460).unwrap().id, "a");
        // An empty endpoint is the host that was asked.
        let b = v.owner(16383).unwrap();
        assert_eq!((b.host.as_str(), b.port), ("10.0.0.9", 7001));
        assert_eq!(v.primaries().len(), 2);
    }

    #[test]
    fn a_failed_primary_or_unknown_endpoint_owns_nothing() {
        let f = Frame::Array(vec![
            shard(
                &[Frame::Integer(0), Frame::Integer(99)],
                vec![primary("a", "127.0.0.1", 7000, "fail")],
            ),
            shard(
                &[Frame::Integer(100), Frame::Integer(199)],
                vec![primary("b", "?", 7001, "online")],
            ),
        ]);
        let v = View::from_shards(&f, "h", false).unwrap();
        assert_eq!(v.covered(), 0);
        assert!(v.owner(0).is_none());
    }

    #[test]
    fn tls_connections_use_the_tls_port() {
        let mut p = primary("a", "127.0.0.1", 7000, "online");
        p.push(("tls-port", Frame::Integer(8000)));
        let f = Frame::Array(vec![shard(
            &[Frame::Integer(0), Frame::Integer(16383)],
            vec![p],
        )]);
        assert_eq!(
            View::from_shards(&f, "h", true)
                .unwrap()
                .owner(7)
                .unwrap()
                .port,
            8000
        );
        assert_eq!(
            View::from_shards(&f, "h", false)
                .unwrap()
                .owner(7)
                .unwrap()
                .port,
            7000
        );
    }

    #[test]
    fn cluster_slots_is_the_fallback() {
        let f = Frame::Array(vec![
            Frame::Array(vec![
                Frame::Integer(0),
                Frame::Integer(8191),
                Frame::Array(vec![bulk("127.0.0.1"), Frame::Integer(7000), bulk("a")]),
                Frame::Array(vec![bulk("127.0.0.1"), Frame::Integer(7003), bulk("r")]),
            ]),
            // unknown-endpoint: a null endpoint is the node asked.
            Frame::Array(vec![
                Frame::Integer(8192),
                Frame::Integer(16383),
                Frame::Array(vec![Frame::Null, Frame::Integer(7001), bulk("b")]),
            ]),
        ]);
        let v = View::from_slots(&f, "asked").unwrap();
        assert_eq!(v.covered(), SLOTS);
        assert_eq!(v.owner(8191).unwrap().port, 7000);
        assert_eq!(v.owner(8192).unwrap().host, "asked");
    }

    #[test]
    fn the_majority_view_wins_and_ties_go_to_coverage() {
        let node = |id: &str, port| Node {
            id: id.into(),
            host: "127.0.0.1".into(),
            port,
        };
        let mut a = View::default();
        a.set_range(0, 16383, &node("a", 1));
        let mut b = View::default();
        b.set_range(0, 100, &node("b", 2));
        b.set_range(101, 16383, &node("a", 1));
        let m = View::majority(vec![b.clone(), a.clone(), a.clone()]).unwrap();
        assert_eq!(m, a);
        let mut partial = View::default();
        partial.set_range(0, 10, &node("a", 1));
        assert_eq!(View::majority(vec![partial, b.clone()]).unwrap(), b);
        assert!(View::majority(Vec::new()).is_none());
    }

    #[test]
    fn a_moved_patches_one_slot() {
        let mut v = View::default();
        v.set_range(
            0,
            16383,
            &Node {
                id: "a".into(),
                host: "h".into(),
                port: 1,
            },
        );
        v.assign(
            5,
            Node {
                id: "h:2".into(),
                host: "h".into(),
                port: 2,
            },
        );
        assert_eq!(v.owner(5).unwrap().port, 2);
        assert_eq!(v.owner(6).unwrap().port, 1);
    }

    #[test]
    fn hostile_replies_are_errors_not_panics() {
        assert!(View::from_shards(&Frame::Integer(1), "h", false).is_err());
        let bad = Frame::Array(vec![shard(
            &[Frame::Integer(0), Frame::Integer(99_999)],
            vec![primary("a", "h", 1, "online")],
        )]);
        assert!(View::from_shards(&bad, "h", false).is_err());
        assert!(View::from_slots(&Frame::Array(vec![Frame::Integer(3)]), "h").is_err());
    }
}
