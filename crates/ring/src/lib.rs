//! The consistent-hash ring of instances (ingesters; distributors count
//! themselves in a ring of their own): where each series goes, how many
//! replicas must answer, and how instances join, heartbeat and leave.
//!
//! ```text
//!  Lifecycler ──publish/heartbeat/leave──▶ RingStore ──watch──▶ RingClient ──▶ Arc<Ring>
//!  (this process's instance)               inmemory | memberlist (chitchat)      replication_set(key, op)
//! ```
//!
//! The ring knows tokens and states, never HTTP or profiles.

mod client;
mod config;
mod desc;
mod lifecycler;
mod memberlist;
mod ring;
mod store;
mod tokens;

pub use client::{RingClient, RingMetrics};
pub use config::{LifecyclerConfig, MemberlistConfig, RingConfig};
pub use desc::{InstanceDesc, InstanceState, now_ms};
pub use lifecycler::{Lifecycler, LifecyclerError, LifecyclerHandle};
pub use memberlist::{GossipMember, MemberlistStore};
pub use ring::{Operation, ReplicationSet, Ring, RingError};
pub use store::{BoxFuture, InMemoryStore, Members, RingStore, StoreError};
pub use tokens::{TokensFileError, generate_tokens, load_tokens, save_tokens};
