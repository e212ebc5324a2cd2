//! A cluster of real processes on 127.0.0.1 sharing the ring by gossip:
//! three ingesters and a distributor join and turn ACTIVE; a SIGKILL'd
//! ingester turns UNHEALTHY and is forgotten; a SIGTERM'd one goes LEAVING
//! and leaves; a restarted one takes its tokens back from its tokens file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use flamedb_testkit::{Flamedb, Signal, cluster_flags, path_in, shared_dir, wait_until};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_flamedb");
const CONVERGE: Duration = Duration::from_secs(30);

/// The test clusters' settings, and dead instances forgotten: UNHEALTHY
/// lasts from 5 s to 15 s without a heartbeat, long enough for the test to
/// see it on a slow machine.
fn cluster_args(label: &str) -> Vec<String> {
    let mut args = cluster_flags(label);
    args.push("-ring.auto-forget-unhealthy-period=15s".to_owned());
    args
}

fn start(name: &str, args: &[String]) -> Flamedb {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Flamedb::start(BINARY, name, &args)
}

fn ingester_args(base: &[String], id: &str, join: &str, tokens: &str) -> Vec<String> {
    let mut args = base.to_vec();
    args.extend([
        "-target=ingester".to_owned(),
        format!("-ingester.lifecycler.ID={id}"),
        format!("-memberlist.join={join}"),
        format!("-ingester.tokens-file-path={tokens}"),
        "-ingester.final-sleep=5s".to_owned(),
    ]);
    args
}

/// The instances of a `/ring` page: id → (state, tokens).
fn shards(process: &Flamedb) -> Vec<(String, String, Vec<u64>)> {
    let page = process.get_json("/ring?tokens=true");
    page["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|shard| {
            let tokens = shard["tokens"]
                .as_array()
                .map(|tokens| tokens.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            (
                shard["id"].as_str().unwrap().to_owned(),
                shard["state"].as_str().unwrap().to_owned(),
                tokens,
            )
        })
        .collect()
}

fn state_of(process: &Flamedb, id: &str) -> Option<String> {
    shards(process)
        .into_iter()
        .find(|(shard, ..)| shard == id)
        .map(|(_, state, _)| state)
}

#[test]
fn test_ingesters_join_fail_leave_and_come_back() {
    let label = format!("ring-test-{}", std::process::id());
    let base = cluster_args(&label);
    let tokens_dir = shared_dir();

    let mut distributor_args = base.clone();
    distributor_args.extend([
        "-target=distributor".to_owned(),
        "-distributor.ring.instance-id=distributor-1".to_owned(),
    ]);
    let distributor = start("distributor", &distributor_args);
    let seed = distributor.gossip.clone().expect("the distributor gossips");

    let ids = ["ingester-1", "ingester-2", "ingester-3"];
    let mut ingesters: Vec<Flamedb> = ids
        .iter()
        .map(|id| {
            start(
                id,
                &ingester_args(&base, id, &seed, &path_in(tokens_dir.path(), &format!("{id}.json"))),
            )
        })
        .collect();

    // All join through gossip and turn ACTIVE; the distributor sees them.
    wait_until(CONVERGE, "three ACTIVE ingesters in the distributor's /ring", || {
        let shards = shards(&distributor);
        (shards.len() == 3
            && shards
                .iter()
                .all(|(_, state, tokens)| state == "ACTIVE" && tokens.len() == 128))
        .then_some(())
    });
    for ingester in &ingesters {
        ingester.wait_ready(CONVERGE);
    }
    distributor.wait_ready(CONVERGE);
    let distributors = distributor.get_json("/distributor/ring");
    assert_eq!(distributors["shards"][0]["id"], "distributor-1");
    let memberlist = distributor.get_json("/memberlist");
    assert_eq!(memberlist["members"].as_array().unwrap().len(), 4);
    let (_, page) = distributor.get("/ring").unwrap();
    assert!(page.contains("ingester-2") && page.contains("Forget"), "{page}");
    let tokens_before: Vec<u64> = shards(&distributor)
        .into_iter()
        .find(|(id, ..)| id == "ingester-2")
        .map(|(_, _, tokens)| tokens)
        .unwrap();

    // kill -9: UNHEALTHY after the heartbeat timeout, then forgotten.
    ingesters[2].kill();
    wait_until(CONVERGE, "ingester-3 UNHEALTHY", || {
        (state_of(&distributor, "ingester-3").as_deref() == Some("UNHEALTHY")).then_some(())
    });
    wait_until(CONVERGE, "ingester-3 forgotten", || {
        state_of(&distributor, "ingester-3").is_none().then_some(())
    });

    // SIGTERM: LEAVING (during its final sleep), then gone; exits cleanly.
    ingesters[1].signal(Signal::SIGTERM);
    wait_until(CONVERGE, "ingester-2 LEAVING", || {
        (state_of(&distributor, "ingester-2").as_deref() == Some("LEAVING")).then_some(())
    });
    wait_until(CONVERGE, "ingester-2 gone", || {
        state_of(&distributor, "ingester-2").is_none().then_some(())
    });
    assert!(ingesters[1].wait_exit(CONVERGE).success(), "{}", ingesters[1].log());

    // A restart with the same tokens file comes back with the same tokens.
    ingesters[1] = start(
        "ingester-2 (restarted)",
        &ingester_args(
            &base,
            "ingester-2",
            &seed,
            &path_in(tokens_dir.path(), "ingester-2.json"),
        ),
    );
    wait_until(CONVERGE, "ingester-2 ACTIVE again", || {
        (state_of(&distributor, "ingester-2").as_deref() == Some("ACTIVE")).then_some(())
    });
    let tokens_after: Vec<u64> = shards(&distributor)
        .into_iter()
        .find(|(id, ..)| id == "ingester-2")
        .map(|(_, _, tokens)| tokens)
        .unwrap();
    assert_eq!(tokens_after, tokens_before);
}

#[test]
fn test_operator_forget_and_cluster_labels() {
    let base = cluster_args(&format!("forget-test-{}", std::process::id()));
    let tokens_dir = shared_dir();
    let mut distributor_args = base.clone();
    distributor_args.push("-target=distributor".to_owned());
    let distributor = start("distributor", &distributor_args);
    let seed = distributor.gossip.clone().unwrap();
    let ingester = start(
        "ingester-1",
        &ingester_args(&base, "ingester-1", &seed, &path_in(tokens_dir.path(), "1.json")),
    );
    wait_until(CONVERGE, "ingester-1 ACTIVE", || {
        (state_of(&distributor, "ingester-1").as_deref() == Some("ACTIVE")).then_some(())
    });

    // A process of another cluster, pointed at this one, stays apart.
    let mut other_args = cluster_args("another-cluster");
    other_args.extend(["-target=querier".to_owned(), format!("-memberlist.join={seed}")]);
    let other = start("querier of another cluster", &other_args);
    // Seen refused (its gossip names the wrong cluster), not waited for.
    wait_until(CONVERGE, "the other cluster's gossip refused", || {
        other.log().contains("wrong cluster").then_some(())
    });
    assert!(shards(&other).is_empty());
    assert_eq!(
        distributor.get_json("/memberlist")["members"].as_array().unwrap().len(),
        2
    );

    // A healthy instance is not forgotten unless forced, and another
    // site's page cannot forget anything.
    let (status, body) = distributor.post_form("/ring", &[("forget", "ingester-1")]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("is healthy") && body.contains("force=true"), "{body}");
    let form = [("content-type", "application/x-www-form-urlencoded")];
    for cross_site in [("origin", "http://elsewhere.example"), ("sec-fetch-site", "cross-site")] {
        let headers = [form[0], cross_site];
        let (status, body) = distributor
            .post("/ring", &headers, b"forget=ingester-1&force=true".to_vec())
            .unwrap();
        assert_eq!(status, 403, "{cross_site:?}: {}", String::from_utf8_lossy(&body));
    }
    let same_origin = [form[0], ("origin", &*format!("http://{}", distributor.http))];
    let (status, body) = distributor
        .post("/ring", &same_origin, b"forget=nobody".to_vec())
        .unwrap();
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));

    // Stopped, the ingester turns UNHEALTHY and is forgotten at once.
    ingester.signal(Signal::SIGSTOP);
    wait_until(CONVERGE, "ingester-1 UNHEALTHY", || {
        (state_of(&distributor, "ingester-1").as_deref() == Some("UNHEALTHY")).then_some(())
    });
    let (status, body) = distributor.post_form("/ring", &[("forget", "ingester-1")]);
    assert_eq!(status, 200, "{body}");
    wait_until(CONVERGE, "ingester-1 forgotten", || {
        state_of(&distributor, "ingester-1").is_none().then_some(())
    });
    // Continued, it heartbeats again and is back; forced, a healthy one
    // goes too, and comes back at its next heartbeat.
    ingester.signal(Signal::SIGCONT);
    wait_until(CONVERGE, "ingester-1 back", || {
        (state_of(&distributor, "ingester-1").as_deref() == Some("ACTIVE")).then_some(())
    });
    let (status, body) = distributor.post_form("/ring", &[("forget", "ingester-1"), ("force", "true")]);
    assert_eq!(status, 200, "{body}");
    wait_until(CONVERGE, "ingester-1 back after a forced forget", || {
        (state_of(&distributor, "ingester-1").as_deref() == Some("ACTIVE")).then_some(())
    });
}

/// Two ingesters on one host with the same instance ID: the second refuses
/// to take the ID of a live instance, stops naming both addresses, and
/// leaves the first one's entry alone.
#[test]
fn test_a_second_ingester_with_the_same_id_stops_naming_both_addresses() {
    let base = cluster_args(&format!("same-id-test-{}", std::process::id()));
    let tokens_dir = shared_dir();
    let mut querier_args = base.clone();
    querier_args.push("-target=querier".to_owned());
    let observer = start("querier", &querier_args);
    let seed = observer.gossip.clone().unwrap();
    let first = start(
        "ingester-first",
        &ingester_args(&base, "twin", &seed, &path_in(tokens_dir.path(), "first.json")),
    );
    wait_until(CONVERGE, "the first twin ACTIVE", || {
        (state_of(&observer, "twin").as_deref() == Some("ACTIVE")).then_some(())
    });
    let mut second = start(
        "ingester-second",
        &ingester_args(&base, "twin", &seed, &path_in(tokens_dir.path(), "second.json")),
    );
    let status = second.wait_exit(CONVERGE);
    assert!(!status.success(), "{}", second.log());
    let log = second.log();
    let first_address = first.internal.clone().unwrap();
    let second_address = second.internal.clone().unwrap();
    assert!(
        log.contains("instance ID \"twin\" is held") && log.contains(&first_address) && log.contains(&second_address),
        "{log}"
    );
    assert_eq!(state_of(&observer, "twin").as_deref(), Some("ACTIVE"));
    let page = observer.get_json("/ring");
    let twin = page["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|shard| shard["id"] == "twin")
        .cloned();
    assert_eq!(twin.unwrap()["address"], first_address.as_str());
}
