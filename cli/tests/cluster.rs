//! The CLI on a Redis Cluster (issue 22): `produce`, `consume`, `stats`, `dead`,
//! `publish --shard` with a `redis+cluster://` URL naming one seed node. Each command
//! finds the node that serves its key; queues on different primaries all work.

mod common;

use ringq_tests::ClusterGroup;

#[test]
fn every_command_finds_the_node_of_its_key() {
    let g = ClusterGroup::start().unwrap();
    let url = g.url();
    let run = |cmd: &[&str]| {
        let mut a: Vec<&str> = cmd.to_vec();
        a.splice(1..1, ["--url", url.as_str()]);
        common::stdout_of(&common::ringq_env(&a, &[]))
    };
    // One queue on each primary.
    let queues: Vec<String> = (0..g.primaries())
        .map(|n| g.key_on(n, "cq").unwrap())
        .collect();
    for q in &queues {
        run(&["produce", "--queue", q, "--messages", "200"]);
        let mut c = g.client_for(q).unwrap();
        assert_eq!(c.llen(q).unwrap(), 200, "{q} holds what was produced");
    }
    let mut consume = vec!["consume", "--count", "600"];
    for q in &queues {
        consume.extend(["--queue", q.as_str()]);
    }
    let out = run(&consume);
    assert_eq!(out.lines().count(), 600, "every message of every primary");
    for q in &queues {
        let out = run(&["stats", "--queue", q, "--format", "json"]);
        assert!(out.contains(q.as_str()), "{out}");
        assert!(out.contains("\"pending\":0"), "{out}");
        run(&["dead", "--queue", q, "list"]);
    }
    // A shard channel lives on its slot's owner: SPUBLISH there is accepted (0
    // subscribers), where another node would answer MOVED.
    let ch = g.key_on(2, "sch").unwrap();
    let o = common::ringq_env(
        &[
            "publish",
            "--url",
            &url,
            "--shard",
            "--channel",
            &ch,
            "--messages",
            "3",
        ],
        &[],
    );
    common::succeeded(&o);
}

/// `consume --mode reliable` and `--mode stream` on a cluster: every message of queues
/// (streams) on every primary, and nothing left leased or pending.
#[test]
fn reliable_and_stream_consume_on_a_cluster() {
    let g = ClusterGroup::start().unwrap();
    let url = g.url();
    let queues: Vec<String> = (0..g.primaries())
        .map(|n| g.key_on(n, "rq").unwrap())
        .collect();
    let streams: Vec<String> = (0..g.primaries())
        .map(|n| g.key_on(n, "rs").unwrap())
        .collect();
    for (q, s) in queues.iter().zip(&streams) {
        common::succeeded(&common::ringq_env(
            &["produce", "--url", &url, "--queue", q, "--messages", "100"],
            &[],
        ));
        common::succeeded(&common::ringq_env(
            &[
                "produce",
                "--url",
                &url,
                "--queue",
                s,
                "--stream",
                "--messages",
                "100",
            ],
            &[],
        ));
    }
    let mut args = vec![
        "consume",
        "--url",
        &url,
        "--mode",
        "reliable",
        "--consumer-id",
        "c1",
        "--count",
        "300",
    ];
    for q in &queues {
        args.extend(["--queue", q.as_str()]);
    }
    let out = common::stdout_of(&common::ringq_env(&args, &[]));
    assert_eq!(out.lines().count(), 300);
    for q in &queues {
        let mut c = g.client_for(q).unwrap();
        let p = ringq::envelope::keys::processing(q.as_bytes(), b"c1");
        assert_eq!(c.llen(p).unwrap(), 0, "{q}: nothing left leased");
    }
    let mut args = vec![
        "consume",
        "--url",
        &url,
        "--mode",
        "stream",
        "--group",
        "g",
        "--from",
        "start",
        "--consumer-id",
        "c1",
        "--count",
        "300",
    ];
    for s in &streams {
        args.extend(["--queue", s.as_str()]);
    }
    let out = common::stdout_of(&common::ringq_env(&args, &[]));
    assert_eq!(out.lines().count(), 300);
    for s in &streams {
        let out = common::stdout_of(&common::ringq_env(
            &[
                "stats", "--url", &url, "--mode", "stream", "--queue", s, "--format", "json",
            ],
            &[],
        ));
        assert!(out.contains(s.as_str()), "{out}");
    }
}
