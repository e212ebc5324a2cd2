//! Operator endpoints: `/ready`, `/metrics`, `/api/v1/status/buildinfo` and
//! `/api/v1/status/config` (with `/default` and `/diff`) and
//! `/runtime_config` (the per-tenant overrides in force).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde_norway::{Mapping, Value};

use crate::build_info::BuildInfo;
use crate::config::Config;
use crate::membership::ReadinessCheck;
use crate::overrides::Overrides;

/// Whether the process takes traffic; `/ready` answers from it.
#[derive(Debug)]
pub struct Readiness(AtomicU8);

const STARTING: u8 = 0;
const READY: u8 = 1;
const STOPPING: u8 = 2;

impl Default for Readiness {
    fn default() -> Self {
        Self(AtomicU8::new(STARTING))
    }
}

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(READY, Ordering::SeqCst);
    }

    /// From now on `/ready` fails, so load balancers stop sending traffic.
    pub fn set_stopping(&self) {
        self.0.store(STOPPING, Ordering::SeqCst);
    }

    fn state(&self) -> Result<(), &'static str> {
        match self.0.load(Ordering::SeqCst) {
            READY => Ok(()),
            STOPPING => Err("shutting down"),
            _ => Err("starting"),
        }
    }
}

/// What the status routes read.
pub struct StatusState {
    pub readiness: Arc<Readiness>,
    /// Module checks `/ready` also runs (lifecyclers ACTIVE, ...).
    pub checks: Vec<ReadinessCheck>,
    pub registry: Registry,
    pub config: Config,
    pub overrides: Arc<Overrides>,
}

pub fn routes(state: Arc<StatusState>) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/api/v1/status/config", get(config))
        .route("/api/v1/status/config/default", get(config_default))
        .route("/api/v1/status/config/diff", get(config_diff))
        .route("/runtime_config", get(runtime_config))
        .with_state(state)
}

async fn ready(State(state): State<Arc<StatusState>>) -> Response {
    let failing = state.readiness.state().err().or_else(|| {
        state
            .checks
            .iter()
            .find(|(_, check)| !check())
            .map(|(reason, _)| reason.as_ref())
    });
    match failing {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")).into_response(),
    }
}

async fn metrics(State(state): State<Arc<StatusState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        crate::metrics::encode(&state.registry),
    )
        .into_response()
}

async fn buildinfo() -> Response {
    Json(serde_json::json!({"status": "success", "data": BuildInfo::CURRENT})).into_response()
}

fn yaml(text: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

async fn config(State(state): State<Arc<StatusState>>) -> Response {
    yaml(state.config.to_yaml())
}

async fn config_default(State(state): State<Arc<StatusState>>) -> Response {
    yaml(state.config.defaults_for_target().to_yaml())
}

/// The per-tenant overrides in force.
async fn runtime_config(State(state): State<Arc<StatusState>>) -> Response {
    yaml(state.overrides.to_yaml())
}

/// Only the settings that differ from the defaults.
async fn config_diff(State(state): State<Arc<StatusState>>) -> Response {
    let current = serde_norway::to_value(&state.config).unwrap_or(Value::Null);
    let defaults = serde_norway::to_value(state.config.defaults_for_target()).unwrap_or(Value::Null);
    let diff = difference(&current, &defaults).unwrap_or(Value::Mapping(Mapping::new()));
    yaml(serde_norway::to_string(&diff).unwrap_or_default())
}

/// The parts of `current` that differ from `defaults`, or `None` if equal.
fn difference(current: &Value, defaults: &Value) -> Option<Value> {
    match (current, defaults) {
        (Value::Mapping(current), Value::Mapping(defaults)) => {
            let changed: Mapping = current
                .iter()
                .filter_map(|(key, value)| {
                    let differs = match defaults.get(key) {
                        Some(default) => difference(value, default),
                        None => Some(value.clone()),
                    };
                    differs.map(|value| (key.clone(), value))
                })
                .collect();
            (!changed.is_empty()).then_some(Value::Mapping(changed))
        }
        (current, defaults) => (current != defaults).then(|| current.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_difference_keeps_changed_leaves_only() {
        let current: Value = serde_norway::from_str("a: 1\nb:\n  c: 2\n  d: 3\ne: [1]").unwrap();
        let defaults: Value = serde_norway::from_str("a: 1\nb:\n  c: 2\n  d: 4\ne: [1]").unwrap();
        let diff = difference(&current, &defaults).unwrap();
        assert_eq!(serde_norway::to_string(&diff).unwrap(), "b:\n  d: 3\n");
        assert_eq!(difference(&defaults, &defaults), None);
    }
}
