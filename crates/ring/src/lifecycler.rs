//! The lifecycler takes an instance through the ring: it registers
//! (PENDING), takes tokens (from the tokens file, from its own previous
//! registration, or freshly generated), optionally holds them in JOINING
//! for an observe period to settle conflicts, turns ACTIVE and heartbeats.
//! On stop it turns LEAVING (no new writes, reads still served), keeps
//! heartbeating while the owner's shutdown work (a flush) runs, then leaves
//! the ring. While ACTIVE it also forgets instances whose heartbeat is
//! older than the auto-forget period.
//!
//! ```text
//!  PENDING ──(tokens)──▶ [JOINING ──observe──▶] ACTIVE ──stop──▶ LEAVING ──work done──▶ (left)
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{LifecyclerConfig, RingConfig};
use crate::desc::{InstanceDesc, InstanceState, now_ms};
use crate::ring::Ring;
use crate::store::{Members, RingStore, StoreError};
use crate::tokens::{TokensFileError, generate_tokens, load_tokens, save_tokens};

/// How long to wait for gossip to deliver the ring before taking tokens.
const SYNC_TIMEOUT: Duration = Duration::from_secs(5);
/// Rounds of conflict resolution in JOINING before giving up.
const MAX_OBSERVE_ROUNDS: usize = 10;

/// Why the lifecycler stopped short.
#[derive(Debug, thiserror::Error)]
pub enum LifecyclerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    TokensFile(#[from] TokensFileError),
    #[error("the lifecycler task of {instance_id} panicked or was cancelled")]
    Task { instance_id: String },
    /// Another live process holds the same instance ID.
    #[error(
        "instance ID {instance_id:?} is held in the {ring} ring by a live instance at {holder} (last heartbeat {age_ms} ms ago); this process is at {ours}: give each instance its own ID (-ingester.lifecycler.ID, -distributor.ring.instance-id)"
    )]
    IdConflict {
        ring: &'static str,
        instance_id: String,
        holder: String,
        ours: String,
        age_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Leaving,
    Finish,
}

/// Starts lifecyclers.
#[derive(Debug)]
pub struct Lifecycler;

impl Lifecycler {
    /// Registers the instance in `ring` and runs its life in a task.
    pub fn start(ring: &'static str, config: LifecyclerConfig, store: Arc<dyn RingStore>) -> LifecyclerHandle {
        let (state_tx, state_rx) = watch::channel(InstanceState::Pending);
        let (phase_tx, phase_rx) = watch::channel(Phase::Running);
        let (failure_tx, failure_rx) = watch::channel(None);
        let members = store.watch(ring);
        let probe_store = store.clone();
        let task = Task {
            ring,
            config: config.clone(),
            store,
            state: state_tx,
            phase: phase_rx,
            tokens: Vec::new(),
            registered_ms: now_ms(),
            failure: failure_tx,
        };
        let join = tokio::spawn(task.run());
        LifecyclerHandle {
            ring,
            instance_id: config.instance_id,
            state: state_rx,
            members,
            store: probe_store,
            phase: phase_tx,
            failure: failure_rx,
            join,
        }
    }
}

/// Controls a running lifecycler.
#[must_use = "the instance leaves the ring through stop() (or when the handle is dropped)"]
#[derive(Debug)]
pub struct LifecyclerHandle {
    ring: &'static str,
    instance_id: String,
    state: watch::Receiver<InstanceState>,
    members: watch::Receiver<Members>,
    store: Arc<dyn RingStore>,
    phase: watch::Sender<Phase>,
    failure: watch::Receiver<Option<String>>,
    join: JoinHandle<Result<(), LifecyclerError>>,
}

impl LifecyclerHandle {
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    pub fn ring(&self) -> &'static str {
        self.ring
    }

    pub fn state(&self) -> InstanceState {
        *self.state.borrow()
    }

    /// Ready: ACTIVE, the ring as this process sees it says so too, and
    /// the store has heard from the rest of the cluster.
    pub fn is_ready(&self) -> bool {
        is_ready(&self.state, &self.members, &*self.store, &self.instance_id)
    }

    /// [`Self::is_ready`] as a function that outlives the handle.
    pub fn readiness_probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let (state, members, store, instance_id) = (
            self.state.clone(),
            self.members.clone(),
            self.store.clone(),
            self.instance_id.clone(),
        );
        move || is_ready(&state, &members, &*store, &instance_id)
    }

    /// Completes with the error if the lifecycler fails (the instance is
    /// then out of the ring, or stale in it): the process should stop.
    pub fn failure(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut failure = self.failure.clone();
        async move {
            let failed = failure
                .wait_for(Option::is_some)
                .await
                .map(|message| message.clone().unwrap_or_default());
            match failed {
                Ok(message) => message,
                // The lifecycler ended without failing: never complete.
                Err(_) => std::future::pending().await,
            }
        }
    }

    /// Waits until the instance is in `state`.
    pub async fn wait_for_state(&mut self, state: InstanceState) {
        let _ = self.state.wait_for(|current| *current == state).await;
    }

    /// Turns LEAVING, runs `shutdown_work` while still heartbeating, waits
    /// the final sleep and leaves the ring.
    pub async fn stop<F: Future<Output = ()>>(mut self, shutdown_work: F) -> Result<(), LifecyclerError> {
        let _ = self.phase.send(Phase::Leaving);
        if !self.join.is_finished() {
            let _ = self.state.wait_for(|state| *state == InstanceState::Leaving).await;
        }
        shutdown_work.await;
        let _ = self.phase.send(Phase::Finish);
        match self.join.await {
            Ok(result) => result,
            Err(_) => Err(LifecyclerError::Task {
                instance_id: self.instance_id,
            }),
        }
    }
}

fn is_ready(
    state: &watch::Receiver<InstanceState>,
    members: &watch::Receiver<Members>,
    store: &dyn RingStore,
    instance_id: &str,
) -> bool {
    *state.borrow() == InstanceState::Active
        && members
            .borrow()
            .iter()
            .any(|desc| desc.id == instance_id && desc.state == InstanceState::Active)
        && store.is_synced()
}

struct Task {
    ring: &'static str,
    config: LifecyclerConfig,
    store: Arc<dyn RingStore>,
    state: watch::Sender<InstanceState>,
    phase: watch::Receiver<Phase>,
    tokens: Vec<u32>,
    registered_ms: i64,
    failure: watch::Sender<Option<String>>,
}

impl Task {
    async fn run(mut self) -> Result<(), LifecyclerError> {
        let result = self.live().await;
        if let Err(err) = &result {
            warn!(ring = self.ring, instance = %self.config.instance_id, error = %err, "lifecycler failed; leaving the ring");
            // Best effort: a stale entry would hold its tokens until
            // forgotten. Not when the ID is another process's: leaving
            // would take its entry out.
            if !matches!(err, LifecyclerError::IdConflict { .. }) {
                let _ = self.store.leave(self.ring, &self.config.instance_id).await;
            }
            self.failure.send_replace(Some(err.to_string()));
        }
        result
    }

    async fn live(&mut self) -> Result<(), LifecyclerError> {
        if !self.store.wait_until_synced(SYNC_TIMEOUT).await {
            warn!(
                ring = self.ring,
                "did not hear from other members in time; taking tokens from what is known"
            );
        }
        self.register().await?;
        if self.state() == InstanceState::Pending && self.join().await?.is_none() {
            return self.leave().await;
        }
        self.heartbeat_until_stopped().await
    }

    fn state(&self) -> InstanceState {
        *self.state.borrow()
    }

    fn members(&self) -> Members {
        self.store.watch(self.ring).borrow().clone()
    }

    fn desc(&self, state: InstanceState) -> InstanceDesc {
        InstanceDesc {
            id: self.config.instance_id.clone(),
            addr: self.config.addr.clone(),
            zone: self.config.zone.clone(),
            state,
            tokens: self.tokens.clone(),
            heartbeat_ms: now_ms(),
            registered_ms: self.registered_ms,
        }
    }

    /// Publishes the new state, then takes it locally: whoever waits for
    /// the local state (stop, readiness) finds the ring already says so.
    async fn set_state(&mut self, state: InstanceState) -> Result<(), LifecyclerError> {
        self.store.publish(self.ring, self.desc(state)).await?;
        self.state.send_replace(state);
        info!(ring = self.ring, instance = %self.config.instance_id, %state, tokens = self.tokens.len(), "ring state");
        Ok(())
    }

    /// The entry of this instance's ID published by a live process at
    /// another address, if any.
    fn live_namesake(&self) -> Option<InstanceDesc> {
        let now = now_ms();
        self.members()
            .iter()
            .find(|desc| {
                desc.id == self.config.instance_id
                    && desc.addr != self.config.addr
                    && desc.is_heartbeat_healthy(now, self.config.heartbeat_timeout)
            })
            .cloned()
    }

    fn id_conflict(&self, holder: &InstanceDesc) -> LifecyclerError {
        LifecyclerError::IdConflict {
            ring: self.ring,
            instance_id: self.config.instance_id.clone(),
            holder: holder.addr.clone(),
            ours: self.config.addr.clone(),
            age_ms: u64::try_from(holder.heartbeat_age(now_ms()).as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Waits while a live process at another address holds this ID: a
    /// previous run at another address stops heartbeating within the
    /// heartbeat timeout; a second process with the same ID never does, and
    /// this one then fails naming both addresses.
    async fn wait_for_the_id(&self) -> Result<(), LifecyclerError> {
        let give_up = tokio::time::Instant::now() + self.config.heartbeat_timeout + self.config.heartbeat_period;
        while let Some(holder) = self.live_namesake() {
            if tokio::time::Instant::now() >= give_up {
                return Err(self.id_conflict(&holder));
            }
            warn!(
                ring = self.ring,
                instance = %self.config.instance_id,
                holder = %holder.addr,
                ours = %self.config.addr,
                "the instance ID is held by a live instance at another address; waiting for it to stop heartbeating"
            );
            tokio::time::sleep(self.config.heartbeat_period).await;
        }
        Ok(())
    }

    /// Takes tokens from the tokens file or a previous registration of the
    /// same instance, and registers.
    async fn register(&mut self) -> Result<(), LifecyclerError> {
        self.wait_for_the_id().await?;
        let previous = self
            .members()
            .iter()
            .find(|desc| desc.id == self.config.instance_id)
            .cloned();
        let from_file = match &self.config.tokens_file {
            Some(path) => match load_tokens(path) {
                Ok(tokens) => tokens.filter(|tokens| !tokens.is_empty()),
                Err(err) => {
                    warn!(error = %err, "ignoring the tokens file; taking new tokens");
                    None
                }
            },
            None => None,
        };
        if let Some(previous) = &previous {
            self.registered_ms = previous.registered_ms;
        }
        let state = match (from_file, previous) {
            (Some(tokens), _) => {
                info!(ring = self.ring, tokens = tokens.len(), "tokens from the tokens file");
                self.tokens = tokens;
                InstanceState::Active
            }
            (None, Some(previous))
                if !previous.tokens.is_empty()
                    && matches!(previous.state, InstanceState::Active | InstanceState::Leaving) =>
            {
                info!(
                    ring = self.ring,
                    tokens = previous.tokens.len(),
                    "taking back the tokens of the previous registration"
                );
                self.tokens = previous.tokens;
                InstanceState::Active
            }
            _ => InstanceState::Pending,
        };
        if state == InstanceState::Active {
            self.top_up_tokens();
            self.save_tokens()?;
        }
        self.set_state(state).await
    }

    /// Brings the token count to what is configured (fewer: new ones are
    /// generated; more: the extra are dropped).
    fn top_up_tokens(&mut self) {
        let wanted = self.config.num_tokens;
        if self.tokens.len() > wanted {
            self.tokens.truncate(wanted);
        } else if self.tokens.len() < wanted {
            let taken = self.taken_tokens();
            let mut taken: Vec<(u32, &str)> = taken.iter().map(|(token, owner)| (*token, owner.as_str())).collect();
            taken.extend(
                self.tokens
                    .iter()
                    .map(|&token| (token, self.config.instance_id.as_str())),
            );
            let extra = generate_tokens(wanted - self.tokens.len(), &taken, &mut rand::rng());
            self.tokens.extend(extra);
        }
        self.tokens.sort_unstable();
        self.tokens.dedup();
    }

    /// Tokens of the other members, with their owners.
    fn taken_tokens(&self) -> Vec<(u32, String)> {
        self.members()
            .iter()
            .filter(|desc| desc.id != self.config.instance_id)
            .flat_map(|desc| desc.tokens.iter().map(|&token| (token, desc.id.clone())))
            .collect()
    }

    fn save_tokens(&self) -> Result<(), LifecyclerError> {
        if let Some(path) = &self.config.tokens_file {
            save_tokens(path, &self.tokens)?;
        }
        Ok(())
    }

    /// PENDING → (JOINING →) ACTIVE. `None` when stopped on the way.
    async fn join(&mut self) -> Result<Option<()>, LifecyclerError> {
        if !self.sleep_unless_stopped(self.config.join_after).await {
            return Ok(None);
        }
        self.tokens.clear();
        self.top_up_tokens();
        if !self.config.observe_period.is_zero() {
            self.set_state(InstanceState::Joining).await?;
            for _ in 0..MAX_OBSERVE_ROUNDS {
                if !self.sleep_unless_stopped(self.config.observe_period).await {
                    return Ok(None);
                }
                let ring = Ring::new(self.members().to_vec(), RingConfig::default());
                let before = self.tokens.len();
                self.tokens
                    .retain(|&token| ring.token_holder(token) == Some(self.config.instance_id.as_str()));
                if self.tokens.len() == before {
                    break;
                }
                warn!(
                    ring = self.ring,
                    lost = before - self.tokens.len(),
                    "tokens lost to conflicts; taking others"
                );
                self.top_up_tokens();
                self.set_state(InstanceState::Joining).await?;
            }
        }
        self.save_tokens()?;
        self.set_state(InstanceState::Active).await?;
        Ok(Some(()))
    }

    /// Sleeps `duration`; false if a stop arrived first.
    async fn sleep_unless_stopped(&mut self, duration: Duration) -> bool {
        if *self.phase.borrow() != Phase::Running {
            return false;
        }
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            _ = self.phase.wait_for(|phase| *phase != Phase::Running) => false,
        }
    }

    /// Heartbeats (and forgets dead members) until told to finish: on
    /// Leaving it turns LEAVING; on Finish it keeps heartbeating through
    /// the final sleep, then leaves. A dropped handle counts as Finish.
    async fn heartbeat_until_stopped(&mut self) -> Result<(), LifecyclerError> {
        let mut interval = tokio::time::interval(self.config.heartbeat_period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leave_at: Option<tokio::time::Instant> = None;
        let mut handle_gone = false;
        loop {
            let phase = if handle_gone {
                Phase::Finish
            } else {
                *self.phase.borrow_and_update()
            };
            if phase != Phase::Running && self.state() != InstanceState::Leaving {
                self.set_state(InstanceState::Leaving).await?;
            }
            if phase == Phase::Finish && leave_at.is_none() {
                leave_at = Some(tokio::time::Instant::now() + self.config.final_sleep);
            }
            if leave_at.is_some_and(|at| tokio::time::Instant::now() >= at) {
                return self.leave().await;
            }
            let wake = leave_at.unwrap_or_else(|| tokio::time::Instant::now() + self.config.heartbeat_period);
            tokio::select! {
                _ = interval.tick() => self.heartbeat().await?,
                changed = self.phase.changed(), if !handle_gone => {
                    // The handle is gone: nobody will stop this instance.
                    handle_gone = changed.is_err();
                }
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn heartbeat(&mut self) -> Result<(), LifecyclerError> {
        // Two processes that registered the same ID at once (neither saw
        // the other yet): the later registration gives way.
        if let Some(namesake) = self.live_namesake() {
            if (namesake.registered_ms, &namesake.addr) < (self.registered_ms, &self.config.addr) {
                return Err(self.id_conflict(&namesake));
            }
            warn!(
                ring = self.ring,
                instance = %self.config.instance_id,
                other = %namesake.addr,
                "another process publishes this instance ID; it registered later and will stop"
            );
        }
        let present = self.members().iter().any(|desc| desc.id == self.config.instance_id);
        if present {
            if let Err(err) = self
                .store
                .heartbeat(self.ring, &self.config.instance_id, now_ms())
                .await
            {
                warn!(ring = self.ring, error = %err, "heartbeat failed");
            }
        } else {
            // Forgotten while alive (an operator's Forget): register again.
            warn!(ring = self.ring, instance = %self.config.instance_id, "not in the ring any more; registering again");
            let state = self.state();
            self.set_state(state).await?;
        }
        if self.state() == InstanceState::Active {
            self.forget_dead_members().await;
        }
        Ok(())
    }

    /// Forgets members unhealthy for longer than the auto-forget period.
    async fn forget_dead_members(&self) {
        let now = now_ms();
        let dead: Vec<InstanceDesc> = self
            .members()
            .iter()
            .filter(|desc| desc.id != self.config.instance_id)
            .filter(|desc| desc.heartbeat_age(now) > self.config.auto_forget_unhealthy_period)
            .cloned()
            .collect();
        for desc in dead {
            match self.store.forget(self.ring, &desc.id).await {
                Ok(()) => info!(
                    ring = self.ring,
                    instance = %desc.id,
                    heartbeat_age_seconds = desc.heartbeat_age(now).as_secs(),
                    "forgot an instance unhealthy for longer than the auto-forget period"
                ),
                Err(err) => warn!(ring = self.ring, instance = %desc.id, error = %err, "cannot forget instance"),
            }
        }
    }

    async fn leave(&mut self) -> Result<(), LifecyclerError> {
        if self.state() != InstanceState::Leaving {
            self.set_state(InstanceState::Leaving).await?;
        }
        self.store.leave(self.ring, &self.config.instance_id).await?;
        info!(ring = self.ring, instance = %self.config.instance_id, "left the ring");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
