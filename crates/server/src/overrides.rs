//! Per-tenant limits: the `limits` of the configuration, overridden per
//! tenant by the runtime config file (`-runtime-config.file`), which is
//! re-read every `-runtime-config.reload-period` while running:
//!
//! ```yaml
//! overrides:
//!   tenant-a:
//!     ingestion_rate_mb: 8
//!     max_global_series_per_tenant: 20000
//! ```
//!
//! A tenant's entry lists only what differs; the rest are the defaults. A
//! file that cannot be used at start stops the process; later, the last
//! good overrides stay in force and the error is logged and counted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use flamedb_model::{Limits, TenantLimits};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_norway::{Mapping, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::{ConfigError, check_limits};

type PerTenant = HashMap<String, Arc<Limits>>;

/// The limits of every tenant, as last loaded.
pub struct Overrides {
    defaults: Arc<Limits>,
    file: Option<PathBuf>,
    tenants: RwLock<Arc<PerTenant>>,
    reload_ok: Gauge,
}

impl Overrides {
    /// Loads the overrides file, if any.
    pub fn load(defaults: Limits, file: &str, registry: &mut Registry) -> Result<Arc<Self>, ConfigError> {
        let defaults = Arc::new(defaults);
        let file = (!file.is_empty()).then(|| PathBuf::from(file));
        let tenants = match &file {
            Some(path) => read(path, &defaults)?,
            None => PerTenant::new(),
        };
        let reload_ok = Gauge::default();
        reload_ok.set(1);
        registry.register(
            "flamedb_runtime_config_last_reload_successful",
            "1 when the last read of the runtime config file succeeded, 0 while the previous overrides stay in force",
            reload_ok.clone(),
        );
        Ok(Arc::new(Self {
            defaults,
            file,
            tenants: RwLock::new(Arc::new(tenants)),
            reload_ok,
        }))
    }

    /// The limits of `tenant` now.
    pub fn get(&self, tenant: &str) -> Arc<Limits> {
        let tenants = self.tenants.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        tenants.get(tenant).unwrap_or(&self.defaults).clone()
    }

    /// The lookup modules take.
    pub fn tenant_limits(self: &Arc<Self>) -> TenantLimits {
        let overrides = self.clone();
        Arc::new(move |tenant: &str| overrides.get(tenant))
    }

    /// The overrides in force, as YAML (for `/runtime_config`).
    pub fn to_yaml(&self) -> String {
        let tenants = self
            .tenants
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let sorted: std::collections::BTreeMap<&String, &Limits> = tenants
            .iter()
            .map(|(tenant, limits)| (tenant, limits.as_ref()))
            .collect();
        let mut root = Mapping::new();
        root.insert(
            Value::from("overrides"),
            serde_norway::to_value(sorted).unwrap_or(Value::Null),
        );
        serde_norway::to_string(&root).unwrap_or_else(|err| format!("# cannot render the overrides: {err}\n"))
    }

    /// Re-reads the file every `period` until `cancel`.
    pub fn spawn_reloader(self: &Arc<Self>, period: Duration, cancel: CancellationToken) -> Option<JoinHandle<()>> {
        let path = self.file.clone()?;
        let overrides = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let defaults = overrides.defaults.clone();
                let path_for_read = path.clone();
                // A hung filesystem must not hold up shutdown.
                let loaded = tokio::select! {
                    () = cancel.cancelled() => return,
                    loaded = tokio::task::spawn_blocking(move || read(&path_for_read, &defaults)) => loaded,
                };
                match loaded {
                    Ok(Ok(tenants)) => {
                        let changed = {
                            let mut current = overrides
                                .tenants
                                .write()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            let changed = **current != tenants;
                            *current = Arc::new(tenants);
                            changed
                        };
                        if changed {
                            info!(file = %path.display(), "runtime config reloaded");
                        }
                        overrides.reload_ok.set(1);
                    }
                    Ok(Err(err)) => {
                        error!(error = %err, "cannot reload the runtime config; the previous overrides stay in force");
                        overrides.reload_ok.set(0);
                    }
                    Err(err) => {
                        error!(error = %err, "the runtime config reload failed");
                        overrides.reload_ok.set(0);
                    }
                }
            }
        }))
    }
}

/// Reads the overrides of `path` over `defaults`.
fn read(path: &Path, defaults: &Limits) -> Result<PerTenant, ConfigError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: display.clone(),
        source,
    })?;
    parse(&text, defaults).map_err(|(key, message)| ConfigError::Invalid {
        path: format!("{display}: {key}"),
        message,
    })
}

/// Parses overrides YAML; errors name the key path.
fn parse(text: &str, defaults: &Limits) -> Result<PerTenant, (String, String)> {
    let root: Value = serde_norway::from_str(text).map_err(|err| (String::new(), err.to_string()))?;
    let root = match root {
        Value::Null => return Ok(PerTenant::new()),
        Value::Mapping(root) => root,
        _ => return Err((String::new(), "must hold a mapping with the key overrides".to_owned())),
    };
    let mut tenants = PerTenant::new();
    for (key, value) in root {
        let key = key.as_str().unwrap_or_default().to_owned();
        if key != "overrides" {
            return Err((key, "unknown key; the runtime config holds overrides".to_owned()));
        }
        let entries = match value {
            Value::Null => continue,
            Value::Mapping(entries) => entries,
            _ => return Err((key, "must map tenant IDs to limits".to_owned())),
        };
        for (tenant, limits) in entries {
            let tenant = match tenant {
                Value::String(tenant) => tenant,
                other => serde_norway::to_string(&other).unwrap_or_default().trim().to_owned(),
            };
            let at = format!("overrides.{tenant}");
            let merged = merge(defaults, limits).map_err(|message| (at.clone(), message))?;
            let limits: Limits = serde_path_to_error::deserialize(merged)
                .map_err(|err| (format!("{at}.{}", err.path()), err.into_inner().to_string()))?;
            check_limits(&limits, &at).map_err(|err| match err {
                ConfigError::Invalid { path, message } => (path, message),
                other => (at.clone(), other.to_string()),
            })?;
            tenants.insert(tenant, Arc::new(limits));
        }
    }
    Ok(tenants)
}

/// The defaults as YAML with the tenant's keys laid over them.
fn merge(defaults: &Limits, overrides: Value) -> Result<Value, String> {
    let mut base = match serde_norway::to_value(defaults) {
        Ok(Value::Mapping(base)) => base,
        _ => return Err("cannot render the default limits".to_owned()),
    };
    match overrides {
        Value::Null => {}
        Value::Mapping(overrides) => {
            for (key, value) in overrides {
                base.insert(key, value);
            }
        }
        _ => return Err("must be a mapping of limit names to values".to_owned()),
    }
    Ok(Value::Mapping(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_overrides_lay_over_the_defaults() {
        let tenants = parse(
            "overrides:\n  a:\n    ingestion_rate_mb: 8\n  b:\n    max_label_names_per_series: 5\n    reject_older_than: 2h\n",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(tenants["a"].ingestion_rate_mb, 8.0);
        assert_eq!(tenants["a"].max_label_names_per_series, 30);
        assert_eq!(tenants["b"].max_label_names_per_series, 5);
        assert_eq!(tenants["b"].reject_older_than, Duration::from_secs(7200));
        assert!(parse("", &Limits::default()).unwrap().is_empty());
        assert!(parse("overrides:\n", &Limits::default()).unwrap().is_empty());
    }

    #[test]
    fn test_errors_name_the_key() {
        let (path, message) = parse("overrides:\n  a:\n    ingestion_rate: 8\n", &Limits::default()).unwrap_err();
        assert_eq!(path, "overrides.a.ingestion_rate");
        assert!(message.contains("unknown field"), "{message}");
        let (path, _) = parse(
            "overrides:\n  a:\n    max_label_names_per_series: many\n",
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(path, "overrides.a.max_label_names_per_series");
        let (path, _) = parse("overides: {}\n", &Limits::default()).unwrap_err();
        assert_eq!(path, "overides");
        let (path, _) = parse("overrides:\n  a:\n    ingestion_rate_mb: -1\n", &Limits::default()).unwrap_err();
        assert_eq!(path, "overrides.a.ingestion_rate_mb");
    }

    /// Replaces `path` at once, as config tools do (a plain write could be
    /// read half-written).
    fn replace(path: &std::path::Path, text: &str) {
        let temp = path.with_extension("tmp");
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(&temp, path).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn test_the_file_is_reread_and_a_bad_file_keeps_the_last_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("overrides.yaml");
        std::fs::write(&path, "overrides:\n  a:\n    ingestion_rate_mb: 8\n").unwrap();
        let overrides = Overrides::load(Limits::default(), path.to_str().unwrap(), &mut Registry::default()).unwrap();
        assert_eq!(overrides.get("a").ingestion_rate_mb, 8.0);
        assert_eq!(overrides.get("other").ingestion_rate_mb, 4.0);
        let cancel = CancellationToken::new();
        let task = overrides
            .spawn_reloader(Duration::from_millis(20), cancel.clone())
            .unwrap();
        replace(&path, "overrides:\n  a:\n    ingestion_rate_mb: 9\n");
        flamedb_testkit::wait_until(Duration::from_secs(5), "the new rate", || {
            (overrides.get("a").ingestion_rate_mb == 9.0).then_some(())
        });
        replace(&path, "overrides: [not, a, mapping]\n");
        flamedb_testkit::wait_until(Duration::from_secs(5), "a failed reload", || {
            (overrides.reload_ok.get() == 0).then_some(())
        });
        assert_eq!(overrides.get("a").ingestion_rate_mb, 9.0);
        assert!(overrides.to_yaml().contains("ingestion_rate_mb: 9"));
        cancel.cancel();
        task.await.unwrap();
    }
}
