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

#[test]
fn a_mode_that_does_not_run_on_a_cluster_yet_says_so() {
    let g = ClusterGroup::start().unwrap();
    let o = common::ringq_env(
        &[
            "consume",
            "--url",
            &g.url(),
            "--queue",
            "q",
            "--mode",
            "reliable",
            "--consumer-id",
            "c1",
            "--count",
            "1",
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("does not run on a Redis Cluster yet"),
        "{stderr}"
    );
}
