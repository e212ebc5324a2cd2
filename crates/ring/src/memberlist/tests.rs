//! Gossip over chitchat's in-memory transport: convergence, heartbeats,
//! leaving, forgetting, a partition and its repair, cluster labels.

use std::net::SocketAddr;
use std::time::Duration;

use chitchat::transport::ChannelTransport;

use super::*;
use crate::desc::InstanceState;

const WAIT: Duration = Duration::from_secs(20);

fn address(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

async fn node(transport: &ChannelTransport, port: u16, seeds: &[u16], label: &str) -> Arc<MemberlistStore> {
    let config = MemberlistConfig {
        node_name: format!("node-{port}"),
        cluster_label: label.to_owned(),
        bind_addr: address(port),
        advertise_addr: address(port),
        join_members: seeds.iter().map(|&seed| address(seed).to_string()).collect(),
        gossip_interval: Duration::from_millis(30),
        dead_node_grace_period: Duration::from_secs(3600),
    };
    let (store, _refresher) =
        MemberlistStore::start(config, transport, &mut Registry::default(), CancellationToken::new())
            .await
            .unwrap();
    store
}

fn desc(id: &str, heartbeat_ms: i64) -> InstanceDesc {
    InstanceDesc {
        id: id.to_owned(),
        addr: format!("{id}:4040"),
        zone: String::new(),
        state: InstanceState::Active,
        tokens: vec![1, 2, 3],
        heartbeat_ms,
        registered_ms: 1,
    }
}

/// Waits until the view of `ring` in `store` satisfies `check`.
async fn wait_for(store: &MemberlistStore, ring: &str, check: impl Fn(&[InstanceDesc]) -> bool) {
    let mut members = store.watch(ring);
    let waited = tokio::time::timeout(WAIT, members.wait_for(|members| check(members)))
        .await
        .is_ok();
    assert!(waited, "timed out; view: {:?}", members.borrow());
}

fn heartbeat_of(members: &[InstanceDesc], id: &str) -> Option<i64> {
    members.iter().find(|desc| desc.id == id).map(|desc| desc.heartbeat_ms)
}

#[tokio::test]
async fn test_members_converge_and_follow_heartbeats_and_leaving() {
    let transport = ChannelTransport::default();
    let a = node(&transport, 1001, &[], "test").await;
    let b = node(&transport, 1002, &[1001], "test").await;
    let c = node(&transport, 1003, &[1001], "test").await;
    assert!(b.wait_until_synced(WAIT).await);
    for (store, id) in [(&a, "ingester-a"), (&b, "ingester-b"), (&c, "ingester-c")] {
        store.publish("ingester", desc(id, 10)).await.unwrap();
    }
    for store in [&a, &b, &c] {
        wait_for(store, "ingester", |members| members.len() == 3).await;
    }
    c.heartbeat("ingester", "ingester-c", 20).await.unwrap();
    wait_for(&a, "ingester", |members| {
        heartbeat_of(members, "ingester-c") == Some(20)
    })
    .await;
    // Leaving removes the instance everywhere; other rings are apart.
    c.leave("ingester", "ingester-c").await.unwrap();
    wait_for(&a, "ingester", |members| members.len() == 2).await;
    assert!(a.watch("distributor").borrow().is_empty());
    let gossip = a.members().await;
    assert_eq!(gossip.len(), 3);
    assert!(gossip.iter().all(|member| member.live));
}

#[tokio::test]
async fn test_forgetting_removes_an_instance_until_it_heartbeats_again() {
    let transport = ChannelTransport::default();
    let a = node(&transport, 2001, &[], "test").await;
    let b = node(&transport, 2002, &[2001], "test").await;
    b.publish("ingester", desc("ingester-b", 10)).await.unwrap();
    wait_for(&a, "ingester", |members| members.len() == 1).await;
    a.forget("ingester", "ingester-b").await.unwrap();
    wait_for(&a, "ingester", <[InstanceDesc]>::is_empty).await;
    wait_for(&b, "ingester", <[InstanceDesc]>::is_empty).await;
    // A newer heartbeat brings it back.
    b.heartbeat("ingester", "ingester-b", 11).await.unwrap();
    wait_for(&a, "ingester", |members| {
        heartbeat_of(members, "ingester-b") == Some(11)
    })
    .await;
    assert!(a.forget("ingester", "unknown").await.is_err());
}

#[tokio::test]
async fn test_partition_and_repair() {
    let transport = ChannelTransport::default();
    let a = node(&transport, 3001, &[], "test").await;
    let b = node(&transport, 3002, &[3001], "test").await;
    let c = node(&transport, 3003, &[3001], "test").await;
    for (store, id) in [(&a, "ingester-a"), (&b, "ingester-b"), (&c, "ingester-c")] {
        store.publish("ingester", desc(id, 10)).await.unwrap();
    }
    wait_for(&a, "ingester", |members| members.len() == 3).await;
    wait_for(&c, "ingester", |members| members.len() == 3).await;

    // Cut c off: its heartbeats no longer reach a, and a's do not reach c.
    transport.remove_link(address(3003), address(3001)).await;
    transport.remove_link(address(3003), address(3002)).await;
    c.heartbeat("ingester", "ingester-c", 50).await.unwrap();
    a.heartbeat("ingester", "ingester-a", 50).await.unwrap();
    wait_for(&b, "ingester", |members| {
        heartbeat_of(members, "ingester-a") == Some(50)
    })
    .await;
    // Many gossip rounds go by during the cut (counted in messages sent,
    // c's dropped), not a sleep: c still has nothing of a, a nothing of c.
    let sent = transport.statistics().num_messages_total;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while transport.statistics().num_messages_total < sent + 60 {
        assert!(tokio::time::Instant::now() < deadline, "gossip stopped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(heartbeat_of(&a.watch("ingester").borrow(), "ingester-c"), Some(10));
    assert_eq!(heartbeat_of(&c.watch("ingester").borrow(), "ingester-a"), Some(10));

    // Repair: both sides catch up.
    transport.add_link(address(3003), address(3001)).await;
    transport.add_link(address(3003), address(3002)).await;
    wait_for(&a, "ingester", |members| {
        heartbeat_of(members, "ingester-c") == Some(50)
    })
    .await;
    wait_for(&c, "ingester", |members| {
        heartbeat_of(members, "ingester-a") == Some(50)
    })
    .await;
}

#[tokio::test]
async fn test_clusters_with_different_labels_never_merge() {
    let transport = ChannelTransport::default();
    let a = node(&transport, 4001, &[], "blue").await;
    let b = node(&transport, 4002, &[4001], "green").await;
    a.publish("ingester", desc("blue-1", 10)).await.unwrap();
    b.publish("ingester", desc("green-1", 10)).await.unwrap();
    assert!(!b.wait_until_synced(Duration::from_millis(500)).await);
    wait_for(&a, "ingester", |members| members.len() == 1).await;
    assert_eq!(b.watch("ingester").borrow()[0].id, "green-1");
    assert_eq!(a.members().await.len(), 1);
}

#[tokio::test]
async fn test_leaving_hides_older_registrations_of_the_instance() {
    let transport = ChannelTransport::default();
    let a = node(&transport, 5001, &[], "test").await;
    // An earlier process of ingester-x was killed: its state still gossips.
    let old = node(&transport, 5002, &[5001], "test").await;
    old.publish("ingester", desc("ingester-x", 10)).await.unwrap();
    wait_for(&a, "ingester", |members| members.len() == 1).await;
    // The restarted process registers, then leaves cleanly.
    let restarted = node(&transport, 5003, &[5001], "test").await;
    restarted.publish("ingester", desc("ingester-x", 20)).await.unwrap();
    wait_for(&a, "ingester", |members| {
        heartbeat_of(members, "ingester-x") == Some(20)
    })
    .await;
    restarted.leave("ingester", "ingester-x").await.unwrap();
    wait_for(&a, "ingester", <[InstanceDesc]>::is_empty).await;
}

#[test]
fn test_the_newest_registration_of_an_instance_wins() {
    // Two processes (an old generation and its restart) claim one
    // instance: the newest heartbeat wins; forget markers hide older ones.
    let mut old = chitchat::NodeState::for_test();
    old.set("ring/ingester/i-1", serde_json::to_string(&desc("i-1", 10)).unwrap());
    old.set("hb/ingester/i-1", 40);
    let mut new = chitchat::NodeState::for_test();
    let mut restarted = desc("i-1", 30);
    restarted.tokens = vec![7];
    new.set("ring/ingester/i-1", serde_json::to_string(&restarted).unwrap());
    new.set("hb/ingester/i-1", 50);
    new.set("forget/ingester/i-2", 60);
    new.set("ring/ingester/i-2", serde_json::to_string(&desc("i-2", 60)).unwrap());
    let views = build_views([&old, &new].into_iter());
    let ingesters = &views["ingester"];
    assert_eq!(ingesters.len(), 1);
    assert_eq!((ingesters[0].heartbeat_ms, ingesters[0].tokens.clone()), (50, vec![7]));
}

#[tokio::test]
async fn test_own_changes_are_in_own_view_at_once() {
    let transport = ChannelTransport::default();
    let a = node(&transport, 1601, &[], "test").await;
    let view = a.watch("ingester");
    a.publish("ingester", desc("ingester-a", 10)).await.unwrap();
    assert_eq!(heartbeat_of(&view.borrow(), "ingester-a"), Some(10));
    a.leave("ingester", "ingester-a").await.unwrap();
    assert!(view.borrow().is_empty());
}
