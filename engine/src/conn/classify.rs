//! The one place a server's error reply becomes a connection [`Failure`]: whether the
//! connection reconnects (and the command is sent again on the new one) or the engine
//! stops with an error that says what to do.
//!
//! Every decision is made on the typed [`ServerErrorKind`] that `ringq-resp` parsed, never
//! on the message text. Pipelines add only their context (which command, which keys) and
//! a hint for the errors a configuration change fixes.

use ringq_resp::{ServerError, ServerErrorKind};

use super::Failure;
use crate::error::Error;

/// What a server error means for the connection that received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// The server is in a passing state (LOADING, BUSY, CLUSTERDOWN, TRYAGAIN, full):
    /// reconnect with backoff and send again.
    Passing,
    /// The server lacks ringq's scripts (NOSCRIPT after SCRIPT FLUSH, a restart or a
    /// failover): a new connection loads them again.
    Scripts,
    /// The server is not a writable primary now (READONLY, MASTERDOWN): a failover;
    /// reconnect, re-resolving the name, until it serves as a primary again.
    Failover,
    /// Credentials refused (WRONGPASS, NOAUTH): retrying cannot help.
    Auth,
    /// A Redis Cluster redirect (MOVED, ASK): the command did not run; its slot is served
    /// elsewhere. A cluster engine follows it (the shard patches the topology and the
    /// connection reconnects to the owner); a standalone one stops, naming the URL to use.
    Redirect,
    /// CROSSSLOT: keys of one command in different slots (ringq groups keys by slot, so
    /// this is a name that defeats the hash tags).
    CrossSlot,
    /// Anything else: the command cannot succeed as configured.
    Refused,
}

/// The class of `e`.
pub(crate) fn class(e: &ServerError) -> Class {
    match e.kind() {
        _ if e.is_retryable() || is_script_cluster_refusal(e) => Class::Passing,
        ServerErrorKind::NoScript => Class::Scripts,
        _ if e.is_role_change() => Class::Failover,
        _ if e.is_auth() => Class::Auth,
        ServerErrorKind::Moved { .. } | ServerErrorKind::Ask { .. } => Class::Redirect,
        ServerErrorKind::CrossSlot => Class::CrossSlot,
        _ => Class::Refused,
    }
}

/// A cluster refusal raised inside one of ringq's scripts. The server checks a script's
/// *declared* keys before it runs (typed MOVED, ASK, TRYAGAIN), but a key a script builds
/// itself (the recover script's other consumers' lists) is checked when it is touched,
/// and a refusal there comes back as a plain `ERR` with no typed code: "Script attempted
/// to access a non local key in a cluster node" while its slot migrates, or "... while
/// the cluster is down". This is the one decision made on message text; it can only
/// happen on a cluster. The script stopped at the refused key (what it wrote before stays:
/// the recover script reads both lists of a move before moving, so it stops between
/// moves, never inside one), and it is tried again like TRYAGAIN.
fn is_script_cluster_refusal(e: &ServerError) -> bool {
    *e.kind() == ServerErrorKind::Other && {
        let t = e.to_string();
        t.contains("Script attempted to access a non local key")
            || t.contains("Script attempted to execute a command while the cluster is down")
            || t.contains("Script attempted to execute a write command while the cluster is down")
            || t.contains("during rehashing of the slot")
    }
}

/// The failure of a command (`what`: "pop from queues […]", "stream command", …) that the
/// server answered with `e`. `hint` adds what to do for a refused command (it is given
/// the error's kind and returns text starting with "; ", or nothing).
pub(crate) fn failure(
    what: &str,
    e: ServerError,
    hint: impl FnOnce(&ServerErrorKind) -> Option<String>,
) -> Failure {
    match class(&e) {
        Class::Passing => Failure::Retry(Error::server(
            &format!("{what} could not run now; reconnecting with backoff"),
            e,
        )),
        Class::Scripts => Failure::Retry(Error::server(
            &format!(
                "{what}: the server does not have ringq's scripts (SCRIPT FLUSH, a restart or \
                 a failover); reconnecting, which loads them again"
            ),
            e,
        )),
        Class::Failover => Failure::Retry(Error::server(
            &format!(
                "{what} refused: the server is not a writable primary now (a failover?); \
                 reconnecting with backoff until it is one again"
            ),
            e,
        )),
        Class::Redirect => Failure::Retry(Error::server(
            &format!("{what} was redirected by the cluster; following the slot to its owner"),
            e,
        )),
        Class::CrossSlot => Failure::Fatal(Error::server(
            &format!(
                "{what} failed: its keys are in different cluster slots; give the names one \
                 hash tag ({{tag}}) or use names without braces"
            ),
            e,
        )),
        Class::Auth | Class::Refused => {
            let hint = hint(e.kind()).unwrap_or_default();
            Failure::Fatal(Error::server(&format!("{what} failed{hint}"), e))
        }
    }
}

/// The message of `e` without what Redis appends to an error raised inside a script
/// (`script: <sha>, on @user_script:<line>.`): users did not write that script.
pub(crate) fn plain(e: &ServerError) -> String {
    let text = e.to_string();
    match text.find(" script: ") {
        Some(at) => text[..at].trim_end_matches('.').to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn err(s: &'static str) -> ServerError {
        ServerError::parse(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn classes_follow_the_typed_kind() {
        assert_eq!(class(&err("LOADING x")), Class::Passing);
        assert_eq!(
            class(&err("ERR max number of clients reached")),
            Class::Passing
        );
        assert_eq!(class(&err("NOSCRIPT No matching script")), Class::Scripts);
        assert_eq!(class(&err("READONLY You can't write")), Class::Failover);
        assert_eq!(
            class(&err("MASTERDOWN Link with MASTER is down")),
            Class::Failover
        );
        assert_eq!(class(&err("WRONGPASS invalid")), Class::Auth);
        assert_eq!(class(&err("MOVED 1 h:1")), Class::Redirect);
        assert_eq!(class(&err("ASK 1 h:1")), Class::Redirect);
        assert_eq!(class(&err("CROSSSLOT Keys")), Class::CrossSlot);
        assert_eq!(class(&err("TRYAGAIN Multiple keys")), Class::Passing);
        assert_eq!(
            class(&err("CLUSTERDOWN The cluster is down")),
            Class::Passing
        );
        assert_eq!(class(&err("WRONGTYPE Operation")), Class::Refused);
        assert_eq!(
            class(&err(
                "ERR Script attempted to access a non local key in a cluster node script: x"
            )),
            Class::Passing
        );
        // The text alone decides nothing: an ERR that mentions NOSCRIPT is refused.
        assert_eq!(class(&err("ERR NOSCRIPT in the text")), Class::Refused);
    }

    #[test]
    fn failures_retry_or_stop_with_the_hint() {
        let f = failure("pop", err("NOSCRIPT x"), |_| None);
        assert!(matches!(f, Failure::Retry(_)));
        let f = failure("pop", err("WRONGTYPE x"), |k| {
            (*k == ServerErrorKind::WrongType).then(|| "; not a list".to_owned())
        });
        let Failure::Fatal(e) = f else {
            panic!("fatal expected")
        };
        assert!(
            e.to_string()
                .starts_with("pop failed; not a list: WRONGTYPE"),
            "{e}"
        );
    }

    #[test]
    fn script_internals_are_cut_from_messages() {
        let e = err(
            "NOGROUP No such key 's' or consumer group 'g' in XREADGROUP with GROUP option \
             script: 8e4f, on @user_script:3.",
        );
        assert_eq!(
            plain(&e),
            "NOGROUP No such key 's' or consumer group 'g' in XREADGROUP with GROUP option"
        );
        assert_eq!(plain(&err("WRONGTYPE x")), "WRONGTYPE x");
    }
}
