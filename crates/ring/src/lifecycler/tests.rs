//! The lifecycler over the in-memory store.

use std::time::Duration;

use super::*;
use crate::store::InMemoryStore;

const WAIT: Duration = Duration::from_secs(10);

fn member(store: &Arc<InMemoryStore>, id: &str) -> Option<InstanceDesc> {
    store
        .watch("ingester")
        .borrow()
        .iter()
        .find(|desc| desc.id == id)
        .cloned()
}

async fn wait_until(mut check: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(WAIT, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "condition not reached in time");
}

#[tokio::test]
async fn test_joins_active_with_its_tokens_and_is_ready() {
    let store = InMemoryStore::new();
    let mut handle = Lifecycler::start("ingester", LifecyclerConfig::for_test("ingester-1", 128), store.clone());
    tokio::time::timeout(WAIT, handle.wait_for_state(InstanceState::Active))
        .await
        .unwrap();
    wait_until(|| handle.is_ready()).await;
    let desc = member(&store, "ingester-1").unwrap();
    assert_eq!(desc.state, InstanceState::Active);
    assert_eq!(desc.tokens.len(), 128);
    assert!(desc.tokens.windows(2).all(|pair| pair[0] < pair[1]));
    // Heartbeats move on.
    let first = desc.heartbeat_ms;
    wait_until(|| member(&store, "ingester-1").is_some_and(|desc| desc.heartbeat_ms > first)).await;
    handle.stop(async {}).await.unwrap();
    assert!(member(&store, "ingester-1").is_none());
}

#[tokio::test]
async fn test_stop_goes_leaving_while_the_shutdown_work_runs() {
    let store = InMemoryStore::new();
    let mut handle = Lifecycler::start("ingester", LifecyclerConfig::for_test("ingester-1", 16), store.clone());
    tokio::time::timeout(WAIT, handle.wait_for_state(InstanceState::Active))
        .await
        .unwrap();
    let seen = store.clone();
    handle
        .stop(async move {
            // Still in the ring, LEAVING, while the work (a flush) runs.
            let desc = member(&seen, "ingester-1").unwrap();
            assert_eq!(desc.state, InstanceState::Leaving);
            assert_eq!(desc.tokens.len(), 16);
        })
        .await
        .unwrap();
    assert!(member(&store, "ingester-1").is_none());
}

#[tokio::test]
async fn test_tokens_file_gives_the_same_tokens_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = InMemoryStore::new();
    let config = LifecyclerConfig {
        tokens_file: Some(dir.path().join("tokens.json")),
        ..LifecyclerConfig::for_test("ingester-1", 32)
    };
    let mut first = Lifecycler::start("ingester", config.clone(), store.clone());
    tokio::time::timeout(WAIT, first.wait_for_state(InstanceState::Active))
        .await
        .unwrap();
    let tokens = member(&store, "ingester-1").unwrap().tokens;
    first.stop(async {}).await.unwrap();

    let mut again = Lifecycler::start("ingester", config, store.clone());
    tokio::time::timeout(WAIT, again.wait_for_state(InstanceState::Active))
        .await
        .unwrap();
    assert_eq!(member(&store, "ingester-1").unwrap().tokens, tokens);
    again.stop(async {}).await.unwrap();
}

#[tokio::test]
async fn test_a_restart_takes_back_the_tokens_of_its_previous_registration() {
    let store = InMemoryStore::new();
    // A previous run of the instance died while LEAVING.
    let previous = InstanceDesc {
        id: "ingester-1".into(),
        addr: "old:4040".into(),
        zone: String::new(),
        state: InstanceState::Leaving,
        tokens: vec![5, 6, 7],
        heartbeat_ms: now_ms() - 30_000,
        registered_ms: 42,
    };
    store.publish("ingester", previous).await.unwrap();
    let mut handle = Lifecycler::start("ingester", LifecyclerConfig::for_test("ingester-1", 3), store.clone());
    tokio::time::timeout(WAIT, handle.wait_for_state(InstanceState::Active))
        .await
        .unwrap();
    let desc = member(&store, "ingester-1").unwrap();
    assert_eq!(
        (desc.tokens, desc.registered_ms, desc.state),
        (vec![5, 6, 7], 42, InstanceState::Active)
    );
    handle.stop(async {}).await.unwrap();
}

#[tokio::test]
async fn test_observe_period_resolves_token_conflicts() {
    let store = InMemoryStore::new();
    let config = LifecyclerConfig {
        observe_period: Duration::from_millis(300),
        ..LifecyclerConfig::for_test("ingester-2", 8)
    };
    let mut handle = Lifecycler::start("ingester", config, store.clone());
    tokio::time::timeout(WAIT, handle.wait_for_state(InstanceState::Joining))
        .await
        .unwrap();
    let joining = member(&store, "ingester-2").unwrap().tokens;
    // Another instance, with a smaller ID, claims one of the tokens.
    let rival = InstanceDesc {
        id: "ingester-1".into(),
        addr: "rival:4040".into(),
        zone: String::new(),
        state: InstanceState::Active,
        tokens: vec![joining[3]],
        heartbeat_ms: now_ms(),
        registered_ms: 0,
    };
    store.publish("ingester", rival).await.unwrap();
    tokio::time::timeout(WAIT, handle.wait_for_state(InstanceState::Active))
        .await
        .unwrap();
    let active = member(&store, "ingester-2").unwrap().tokens;
    assert_eq!(active.len(), 8);
    assert!(!active.contains(&joining[3]));
    handle.stop(async {}).await.unwrap();
}

#[tokio::test]
async fn test_dead_instances_are_forgotten_after_the_period() {
    let store = InMemoryStore::new();
    let dead = InstanceDesc {
        id: "ingester-dead".into(),
        addr: "dead:4040".into(),
        zone: String::new(),
        state: InstanceState::Active,
        tokens: vec![1],
        heartbeat_ms: now_ms() - 120_000,
        registered_ms: 0,
    };
    let recent = InstanceDesc {
        id: "ingester-recent".into(),
        heartbeat_ms: now_ms(),
        ..dead.clone()
    };
    store.publish("ingester", dead).await.unwrap();
    store.publish("ingester", recent).await.unwrap();
    // The recent one stays alive: it heartbeats.
    let beating = store.clone();
    let heartbeats = tokio::spawn(async move {
        loop {
            let _ = beating.heartbeat("ingester", "ingester-recent", now_ms()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let config = LifecyclerConfig {
        // Far from the recent one's heartbeats, however slow the machine.
        auto_forget_unhealthy_period: Duration::from_secs(60),
        ..LifecyclerConfig::for_test("ingester-1", 4)
    };
    let mut handle = Lifecycler::start("ingester", config, store.clone());
    tokio::time::timeout(WAIT, handle.wait_for_state(InstanceState::Active))
        .await
        .unwrap();
    wait_until(|| member(&store, "ingester-dead").is_none()).await;
    assert!(member(&store, "ingester-recent").is_some());
    heartbeats.abort();
    handle.stop(async {}).await.unwrap();
}

#[tokio::test]
async fn test_a_forgotten_live_instance_registers_again() {
    let store = InMemoryStore::new();
    let mut handle = Lifecycler::start("ingester", LifecyclerConfig::for_test("ingester-1", 8), store.clone());
    tokio::time::timeout(WAIT, handle.wait_for_state(InstanceState::Active))
        .await
        .unwrap();
    let tokens = member(&store, "ingester-1").unwrap().tokens;
    store.forget("ingester", "ingester-1").await.unwrap();
    wait_until(|| member(&store, "ingester-1").is_some()).await;
    let back = member(&store, "ingester-1").unwrap();
    assert_eq!((back.state, back.tokens), (InstanceState::Active, tokens));
    wait_until(|| handle.is_ready()).await;
    handle.stop(async {}).await.unwrap();
}

#[tokio::test]
async fn test_dropping_the_handle_leaves_the_ring() {
    let store = InMemoryStore::new();
    let mut handle = Lifecycler::start("ingester", LifecyclerConfig::for_test("ingester-1", 8), store.clone());
    tokio::time::timeout(WAIT, handle.wait_for_state(InstanceState::Active))
        .await
        .unwrap();
    drop(handle);
    wait_until(|| member(&store, "ingester-1").is_none()).await;
}

#[tokio::test]
async fn test_heartbeats_go_on_during_the_final_sleep() {
    let store = InMemoryStore::new();
    let config = LifecyclerConfig {
        final_sleep: Duration::from_secs(2),
        ..LifecyclerConfig::for_test("ingester-1", 8)
    };
    let mut handle = Lifecycler::start("ingester", config, store.clone());
    tokio::time::timeout(WAIT, handle.wait_for_state(InstanceState::Active))
        .await
        .unwrap();
    let watcher = store.clone();
    let observed = tokio::spawn(async move {
        // Heartbeats seen while LEAVING.
        let mut seen = std::collections::BTreeSet::new();
        loop {
            match member(&watcher, "ingester-1") {
                Some(desc) if desc.state == InstanceState::Leaving => {
                    seen.insert(desc.heartbeat_ms);
                }
                Some(_) => {}
                None => return seen,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    handle.stop(async {}).await.unwrap();
    let seen = observed.await.unwrap();
    assert!(seen.len() >= 3, "heartbeats while LEAVING: {seen:?}");
}

#[tokio::test]
async fn test_a_failed_lifecycler_reports_and_leaves() {
    let dir = tempfile::tempdir().unwrap();
    // The tokens file's directory does not exist: saving tokens fails.
    let config = LifecyclerConfig {
        tokens_file: Some(dir.path().join("missing").join("tokens.json")),
        ..LifecyclerConfig::for_test("ingester-1", 8)
    };
    let store = InMemoryStore::new();
    let handle = Lifecycler::start("ingester", config, store.clone());
    let message = tokio::time::timeout(WAIT, handle.failure()).await.unwrap();
    assert!(message.contains("tokens file"), "{message}");
    assert!(member(&store, "ingester-1").is_none());
    assert!(handle.stop(async {}).await.is_err());
}

#[tokio::test]
async fn test_stop_while_pending() {
    let store = InMemoryStore::new();
    let config = LifecyclerConfig {
        join_after: Duration::from_secs(3600),
        ..LifecyclerConfig::for_test("ingester-1", 4)
    };
    let handle = Lifecycler::start("ingester", config, store.clone());
    wait_until(|| member(&store, "ingester-1").is_some_and(|desc| desc.state == InstanceState::Pending)).await;
    tokio::time::timeout(WAIT, handle.stop(async {}))
        .await
        .unwrap()
        .unwrap();
    assert!(member(&store, "ingester-1").is_none());
}

#[tokio::test]
async fn test_a_second_process_with_the_same_id_at_another_address_fails_naming_both() {
    let store = InMemoryStore::new();
    let first = Lifecycler::start("ingester", LifecyclerConfig::for_test("ingester-1", 16), store.clone());
    wait_until(|| first.is_ready()).await;
    let second_config = LifecyclerConfig {
        addr: "127.0.0.2:9095".to_owned(),
        ..LifecyclerConfig::for_test("ingester-1", 16)
    };
    let second = Lifecycler::start("ingester", second_config, store.clone());
    let err = tokio::time::timeout(WAIT, second.stop(async {}))
        .await
        .unwrap()
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, LifecyclerError::IdConflict { .. }), "{message}");
    assert!(
        message.contains("127.0.0.2:9095") && message.contains(&first_addr()),
        "{message}"
    );
    // The first one is untouched.
    assert_eq!(member(&store, "ingester-1").unwrap().addr, first_addr());
    assert!(first.is_ready());
}

#[tokio::test]
async fn test_an_id_whose_holder_stopped_heartbeating_is_taken_over() {
    let store = InMemoryStore::new();
    let first = Lifecycler::start("ingester", LifecyclerConfig::for_test("ingester-1", 16), store.clone());
    wait_until(|| first.is_ready()).await;
    // Killed: no leaving, the entry stays until its heartbeat is stale.
    first.join.abort();
    let config = LifecyclerConfig {
        addr: "127.0.0.2:9095".to_owned(),
        ..LifecyclerConfig::for_test("ingester-1", 16)
    };
    let mut second = Lifecycler::start("ingester", config, store.clone());
    tokio::time::timeout(WAIT, second.wait_for_state(InstanceState::Active))
        .await
        .unwrap();
    assert_eq!(member(&store, "ingester-1").unwrap().addr, "127.0.0.2:9095");
}

fn first_addr() -> String {
    LifecyclerConfig::for_test("ingester-1", 16).addr
}
