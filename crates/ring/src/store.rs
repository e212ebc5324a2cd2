//! Where ring members are kept and how changes reach every process: one
//! trait, [`RingStore`], with an in-process implementation
//! ([`InMemoryStore`]: one process, tests) and a gossip one
//! ([`MemberlistStore`](crate::MemberlistStore)).
//!
//! Each process writes only its own instances. Removing a dead instance
//! (forget) is done by publishing a marker every process honours.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use crate::desc::InstanceDesc;

/// The members of one ring, sorted by instance ID.
pub type Members = Arc<Vec<InstanceDesc>>;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A ring store could not take a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("cannot encode instance {instance} of ring {ring}: {reason}")]
    Encode {
        ring: String,
        instance: String,
        reason: String,
    },
    #[error("instance {instance} is not in ring {ring}")]
    NotInRing { ring: String, instance: String },
    #[error("cannot start gossip on {address}: {reason}")]
    Gossip { address: String, reason: String },
}

/// Keeps ring members and tells every process about changes.
pub trait RingStore: Send + Sync + fmt::Debug {
    /// Adds or replaces an instance this process runs.
    fn publish<'a>(&'a self, ring: &'a str, desc: InstanceDesc) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Records a heartbeat of an instance this process runs.
    fn heartbeat<'a>(
        &'a self,
        ring: &'a str,
        instance_id: &'a str,
        at_ms: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Removes an instance this process runs (it leaves the ring).
    fn leave<'a>(&'a self, ring: &'a str, instance_id: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Removes another instance, as it is now, from the ring for every
    /// process. A live instance notices and registers again (its
    /// lifecycler republishes itself when it is missing).
    fn forget<'a>(&'a self, ring: &'a str, instance_id: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The ring's members, updated on every change.
    fn watch(&self, ring: &str) -> watch::Receiver<Members>;

    /// Waits until the store has heard from the rest of the cluster (or
    /// `timeout` passed); returns whether it did.
    fn wait_until_synced(&self, timeout: Duration) -> BoxFuture<'_, bool>;

    /// Whether the store has heard from the rest of the cluster (always,
    /// when there is nobody to hear from).
    fn is_synced(&self) -> bool;
}

/// Rings kept in this process's memory: every lifecycler and reader of the
/// process share them. For the single binary and for tests.
#[derive(Debug, Default)]
pub struct InMemoryStore {
    rings: Mutex<BTreeMap<String, watch::Sender<Members>>>,
}

impl InMemoryStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn update(&self, ring: &str, change: impl FnOnce(&mut Vec<InstanceDesc>)) {
        let mut rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = rings
            .entry(ring.to_owned())
            .or_insert_with(|| watch::channel(Members::default()).0);
        sender.send_modify(|members| {
            let mut updated = members.as_ref().clone();
            change(&mut updated);
            updated.sort_by(|a, b| a.id.cmp(&b.id));
            *members = Arc::new(updated);
        });
    }
}

impl RingStore for InMemoryStore {
    fn publish<'a>(&'a self, ring: &'a str, desc: InstanceDesc) -> BoxFuture<'a, Result<(), StoreError>> {
        self.update(ring, |members| {
            members.retain(|member| member.id != desc.id);
            members.push(desc);
        });
        Box::pin(std::future::ready(Ok(())))
    }

    fn heartbeat<'a>(
        &'a self,
        ring: &'a str,
        instance_id: &'a str,
        at_ms: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.update(ring, |members| {
            for member in members.iter_mut().filter(|member| member.id == instance_id) {
                member.heartbeat_ms = member.heartbeat_ms.max(at_ms);
            }
        });
        Box::pin(std::future::ready(Ok(())))
    }

    fn leave<'a>(&'a self, ring: &'a str, instance_id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.update(ring, |members| members.retain(|member| member.id != instance_id));
        Box::pin(std::future::ready(Ok(())))
    }

    fn forget<'a>(&'a self, ring: &'a str, instance_id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut found = false;
        self.update(ring, |members| {
            let before = members.len();
            members.retain(|member| member.id != instance_id);
            found = members.len() != before;
        });
        let result = if found {
            Ok(())
        } else {
            Err(StoreError::NotInRing {
                ring: ring.to_owned(),
                instance: instance_id.to_owned(),
            })
        };
        Box::pin(std::future::ready(result))
    }

    fn watch(&self, ring: &str) -> watch::Receiver<Members> {
        let mut rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        rings
            .entry(ring.to_owned())
            .or_insert_with(|| watch::channel(Members::default()).0)
            .subscribe()
    }

    fn wait_until_synced(&self, _timeout: Duration) -> BoxFuture<'_, bool> {
        Box::pin(std::future::ready(true))
    }

    fn is_synced(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desc::InstanceState;

    fn desc(id: &str, heartbeat_ms: i64) -> InstanceDesc {
        InstanceDesc {
            id: id.to_owned(),
            addr: format!("{id}:4040"),
            zone: String::new(),
            state: InstanceState::Active,
            tokens: vec![1, 2],
            heartbeat_ms,
            registered_ms: 0,
        }
    }

    #[tokio::test]
    async fn test_in_memory_store_publishes_to_watchers() {
        let store = InMemoryStore::new();
        let mut members = store.watch("ingester");
        store.publish("ingester", desc("b", 1)).await.unwrap();
        store.publish("ingester", desc("a", 1)).await.unwrap();
        store.publish("distributor", desc("d", 1)).await.unwrap();
        assert!(members.has_changed().unwrap());
        let ids: Vec<String> = members.borrow_and_update().iter().map(|m| m.id.clone()).collect();
        assert_eq!(ids, ["a", "b"]);
        store.heartbeat("ingester", "a", 9).await.unwrap();
        assert_eq!(members.borrow_and_update()[0].heartbeat_ms, 9);
        store.leave("ingester", "a").await.unwrap();
        store.forget("ingester", "b").await.unwrap();
        assert!(store.forget("ingester", "b").await.is_err());
        assert!(members.borrow_and_update().is_empty());
        assert_eq!(store.watch("distributor").borrow().len(), 1);
    }
}
