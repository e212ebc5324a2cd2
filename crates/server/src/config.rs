//! The configuration of a `flamedb` process: YAML keys follow Pyroscope's
//! (`target`, `server`, `limits`, `ingester`, `memberlist`, ...).
//! Precedence: built-in defaults < the `-config.file` YAML < command-line
//! flags. Settings whose default depends on the target are resolved after
//! loading, so the running configuration shows what is used.

mod membership;
mod storage;

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use flamedb_model::Limits;
pub use membership::{DistributorSettings, IngesterSettings, InstanceRingSettings, MemberlistSettings, StoreKind};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_norway::{Mapping, Value};
pub use storage::{PyroscopeDbSettings, StorageBackend, StorageSettings};

/// Everything one process is configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The modules this process runs.
    pub target: Targets,
    /// Require `X-Scope-OrgID` on every request and keep tenants apart.
    pub multitenancy_enabled: bool,
    pub server: ServerConfig,
    /// Per-tenant limits (the defaults for every tenant).
    pub limits: Limits,
    pub ingester: IngesterSettings,
    pub distributor: DistributorSettings,
    pub memberlist: MemberlistSettings,
    pub pyroscopedb: PyroscopeDbSettings,
    pub storage: StorageSettings,
    /// Per-tenant overrides of `limits`, re-read while running.
    pub runtime_config: RuntimeConfigSettings,
    pub querier: QuerierSettings,
    pub compactor: CompactorSettings,
}

/// `compactor:` how blocks in object storage are compacted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompactorSettings {
    /// Where blocks are downloaded and compacted (emptied at start).
    pub data_dir: String,
    /// How often a compaction round runs.
    #[serde(with = "humantime_serde")]
    pub compaction_interval: Duration,
    /// How long after a window ends its blocks are compacted, so every
    /// replica has uploaded its copy.
    #[serde(with = "humantime_serde")]
    pub first_level_compaction_wait_period: Duration,
    /// How long a compacted (marked) block stays before it is deleted.
    #[serde(with = "humantime_serde")]
    pub deletion_delay: Duration,
    /// The widths of the windows blocks are compacted by, shortest first.
    pub block_ranges: Vec<humantime_serde::Serde<Duration>>,
    /// Most memory one compaction may take, as estimated from the blocks'
    /// metas (`0`: no limit).
    pub max_memory_bytes: u64,
    /// The time buckets compacted blocks merge each series' profiles by,
    /// finest first, so queries read whole buckets pre-merged (empty: not
    /// downsampled).
    pub downsampling_resolutions: Vec<humantime_serde::Serde<Duration>>,
    /// The ring compactors split tenants over: each tenant is compacted by
    /// the first healthy compactor from its token.
    pub sharding_ring: InstanceRingSettings,
}

impl Default for CompactorSettings {
    fn default() -> Self {
        Self {
            data_dir: "./data/compactor".to_owned(),
            compaction_interval: Duration::from_secs(30 * 60),
            first_level_compaction_wait_period: Duration::from_secs(25 * 60),
            deletion_delay: Duration::from_secs(12 * 3600),
            block_ranges: [1, 2, 8, 24, 168]
                .map(|hours| Duration::from_secs(hours * 3600).into())
                .to_vec(),
            max_memory_bytes: 1 << 30,
            downsampling_resolutions: [15 * 60, 8 * 3600]
                .map(|seconds| Duration::from_secs(seconds).into())
                .to_vec(),
            sharding_ring: InstanceRingSettings::default(),
        }
    }
}

/// `querier:` where queries read from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuerierSettings {
    /// Ranges older than this also read the blocks in object storage
    /// (ingesters keep their blocks this long, 4h).
    #[serde(with = "humantime_serde")]
    pub query_store_after: Duration,
    /// Where blocks read from object storage are cached (emptied at start).
    pub block_cache_dir: String,
    /// Most bytes of cached blocks; least recently used ones go first.
    pub block_cache_max_bytes: u64,
    /// Most bytes of cached blocks' decoded symbols kept in memory between
    /// queries; least recently used ones go first. 0: decoded per query.
    pub symbol_cache_max_bytes: u64,
    /// How old a tenant's bucket index (written by the compactor) may be
    /// and still be read instead of listing the bucket; also at most half
    /// `query_store_after` and half the compactor's deletion delay. 0:
    /// always list.
    #[serde(with = "humantime_serde")]
    pub bucket_index_max_stale_period: Duration,
}

impl Default for QuerierSettings {
    fn default() -> Self {
        Self {
            query_store_after: Duration::from_secs(4 * 3600),
            block_cache_dir: "./data/querier-cache".to_owned(),
            block_cache_max_bytes: 10 << 30,
            symbol_cache_max_bytes: 512 << 20,
            bucket_index_max_stale_period: Duration::from_secs(3600),
        }
    }
}

/// `runtime_config:` where the per-tenant limit overrides are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfigSettings {
    /// YAML file `overrides: {<tenant>: {<limit>: <value>}}`; empty: none.
    pub file: String,
    /// How often the file is re-read.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
}

impl Default for RuntimeConfigSettings {
    fn default() -> Self {
        Self {
            file: String::new(),
            period: Duration::from_secs(10),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            target: Targets(vec![Target::All]),
            multitenancy_enabled: false,
            server: ServerConfig::default(),
            limits: Limits::default(),
            ingester: IngesterSettings::default(),
            distributor: DistributorSettings::default(),
            memberlist: MemberlistSettings::default(),
            pyroscopedb: PyroscopeDbSettings::default(),
            storage: StorageSettings::default(),
            runtime_config: RuntimeConfigSettings::default(),
            querier: QuerierSettings::default(),
            compactor: CompactorSettings::default(),
        }
    }
}

/// The HTTP server and process-wide settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on; empty means every interface.
    pub http_listen_address: String,
    /// Port for HTTP/1.1 and h2c (Connect, gRPC, operator pages); `0`
    /// picks a free port, logged at start.
    pub http_listen_port: u16,
    /// Address of the internal listener (the ingester's `ingester.v1`,
    /// which distributors and queriers call); empty: loopback with the
    /// in-memory ring (a single process), else every interface.
    pub grpc_listen_address: String,
    /// Port of the internal listener; `0` picks a free port.
    pub grpc_listen_port: u16,
    /// How long in-flight requests may take to finish on shutdown.
    #[serde(with = "humantime_serde")]
    pub graceful_shutdown_timeout: Duration,
    /// How long a request body may take to arrive (408 after).
    #[serde(with = "humantime_serde")]
    pub http_server_read_timeout: Duration,
    /// `debug`, `info`, `warn` or `error`.
    pub log_level: LogLevel,
    /// `logfmt` (human-readable lines) or `json`.
    pub log_format: LogFormat,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http_listen_address: String::new(),
            http_listen_port: 4040,
            grpc_listen_address: String::new(),
            grpc_listen_port: 9095,
            graceful_shutdown_timeout: Duration::from_secs(30),
            http_server_read_timeout: Duration::from_secs(30),
            log_level: LogLevel::Info,
            log_format: LogFormat::Logfmt,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Logfmt,
    Json,
}

/// A module a process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Every module in one process.
    All,
    Distributor,
    Ingester,
    Querier,
    Compactor,
}

impl Target {
    const ALL: [Self; 5] = [
        Self::All,
        Self::Distributor,
        Self::Ingester,
        Self::Querier,
        Self::Compactor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Distributor => "distributor",
            Self::Ingester => "ingester",
            Self::Querier => "querier",
            Self::Compactor => "compactor",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|target| target.as_str() == name)
    }
}

/// The modules of a process: `all`, or a comma-separated list (YAML: a
/// string or a list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets(pub Vec<Target>);

impl Targets {
    /// The modules these targets run, with `all` spelled out.
    pub fn modules(&self) -> Vec<Target> {
        if self.0.contains(&Target::All) {
            return vec![
                Target::Distributor,
                Target::Ingester,
                Target::Querier,
                Target::Compactor,
            ];
        }
        self.0.clone()
    }
}

impl fmt::Display for Targets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|target| target.as_str()).collect();
        f.write_str(&names.join(","))
    }
}

impl Serialize for Targets {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Targets {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            List(Vec<String>),
        }
        let names: Vec<String> = match Raw::deserialize(deserializer)? {
            Raw::Text(text) => text.split(',').map(|name| name.trim().to_owned()).collect(),
            Raw::List(list) => list,
        };
        let mut targets = Vec::with_capacity(names.len());
        for name in names.iter().filter(|name| !name.is_empty()) {
            let target = Target::parse(name).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown target {name:?}; targets are all, distributor, ingester, querier and compactor"
                ))
            })?;
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
        if targets.is_empty() {
            return Err(serde::de::Error::custom("no target given"));
        }
        targets.sort();
        Ok(Targets(targets))
    }
}

/// A configuration that cannot be used; the message names the key or flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid YAML: {source}")]
    Yaml { path: String, source: serde_norway::Error },
    #[error("config file {path} must hold a mapping of keys at the top level")]
    NotAMapping { path: String },
    #[error("invalid configuration at {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// Reads the YAML tree of a config file (an empty mapping if `None`).
    pub fn read_yaml(path: Option<&Path>) -> Result<Value, ConfigError> {
        let Some(path) = path else {
            return Ok(Value::Mapping(Mapping::new()));
        };
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        let value: Value = serde_norway::from_str(&text).map_err(|source| ConfigError::Yaml {
            path: display.clone(),
            source,
        })?;
        match value {
            Value::Null => Ok(Value::Mapping(Mapping::new())),
            Value::Mapping(_) => Ok(value),
            _ => Err(ConfigError::NotAMapping { path: display }),
        }
    }

    /// Builds the configuration from a YAML tree (file plus flag
    /// overrides), filling in defaults, then validates it.
    pub fn from_yaml(tree: Value) -> Result<Self, ConfigError> {
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|err| ConfigError::Invalid {
            path: err.path().to_string(),
            message: err.into_inner().to_string(),
        })?;
        config.validate()?;
        Ok(config.resolved())
    }

    /// Fills in the settings whose default depends on the target: the ring
    /// store (in memory for `all`, gossip otherwise), the replication
    /// factor (1 for `all`, else 3) and the auto-forget period (10 × the
    /// heartbeat timeout).
    pub fn resolved(mut self) -> Self {
        let single_binary = self.target.0 == [Target::All];
        let ring = &mut self.ingester.lifecycler.ring;
        ring.kvstore.store.get_or_insert(if single_binary {
            StoreKind::Inmemory
        } else {
            StoreKind::Memberlist
        });
        ring.replication_factor.get_or_insert(if single_binary { 1 } else { 3 });
        let timeout = ring.heartbeat_timeout;
        ring.auto_forget_unhealthy_period.get_or_insert(timeout * 10);
        // With the in-memory ring only this process calls its ingester.
        if self.server.grpc_listen_address.is_empty() && ring.kvstore.store == Some(StoreKind::Inmemory) {
            self.server.grpc_listen_address = "127.0.0.1".to_owned();
        }
        self
    }

    /// The defaults this configuration is compared with: the built-in
    /// ones, for the same target, resolved.
    pub fn defaults_for_target(&self) -> Self {
        Self {
            target: self.target.clone(),
            ..Self::default()
        }
        .resolved()
    }

    /// Checks what the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |path: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        for (path, address) in [
            ("server.http_listen_address", &self.server.http_listen_address),
            ("server.grpc_listen_address", &self.server.grpc_listen_address),
        ] {
            if !address.is_empty() && address.parse::<IpAddr>().is_err() {
                return Err(invalid(path, format!("{address:?} is not an IP address")));
            }
        }
        if self.targets_all_with_others() {
            return Err(invalid(
                "target",
                "all already runs every module; list modules without all".to_owned(),
            ));
        }
        let lifecycler = &self.ingester.lifecycler;
        if lifecycler.num_tokens == 0 {
            return Err(invalid(
                "ingester.lifecycler.num_tokens",
                "must be at least 1".to_owned(),
            ));
        }
        for (path, period) in [
            ("ingester.lifecycler.heartbeat_period", lifecycler.heartbeat_period),
            (
                "ingester.lifecycler.ring.heartbeat_timeout",
                lifecycler.ring.heartbeat_timeout,
            ),
            (
                "distributor.ring.heartbeat_period",
                self.distributor.ring.heartbeat_period,
            ),
            (
                "distributor.ring.heartbeat_timeout",
                self.distributor.ring.heartbeat_timeout,
            ),
            (
                "compactor.sharding_ring.heartbeat_period",
                self.compactor.sharding_ring.heartbeat_period,
            ),
            (
                "compactor.sharding_ring.heartbeat_timeout",
                self.compactor.sharding_ring.heartbeat_timeout,
            ),
            ("memberlist.gossip_interval", self.memberlist.gossip_interval),
            ("distributor.pushtimeout", self.distributor.pushtimeout),
            ("server.http_server_read_timeout", self.server.http_server_read_timeout),
            ("runtime_config.period", self.runtime_config.period),
            ("compactor.compaction_interval", self.compactor.compaction_interval),
        ] {
            if period.is_zero() {
                return Err(invalid(path, "must be longer than 0s".to_owned()));
            }
        }
        check_limits(&self.limits, "limits")?;
        if self.compactor.data_dir.is_empty() {
            return Err(invalid("compactor.data_dir", "must not be empty".to_owned()));
        }
        let ranges = &self.compactor.block_ranges;
        if ranges.is_empty() || ranges.iter().any(|range| range.is_zero()) {
            return Err(invalid(
                "compactor.block_ranges",
                "needs at least one range, each longer than 0s".to_owned(),
            ));
        }
        for pair in ranges.windows(2) {
            let (shorter, longer) = (pair[0].as_millis(), pair[1].as_millis());
            if longer <= shorter || longer % shorter != 0 {
                return Err(invalid(
                    "compactor.block_ranges",
                    "each range must be a multiple of the one before it, and longer".to_owned(),
                ));
            }
        }
        let resolutions = &self.compactor.downsampling_resolutions;
        let resolutions_ms: Vec<i64> = resolutions
            .iter()
            .map(|resolution| i64::try_from(resolution.as_millis()).unwrap_or(i64::MAX))
            .collect();
        if resolutions
            .iter()
            .any(|resolution| **resolution < Duration::from_secs(1))
            || (!resolutions_ms.is_empty() && flamedb_storage::block::check_resolutions(&resolutions_ms).is_err())
        {
            return Err(invalid(
                "compactor.downsampling_resolutions",
                "each must be at least 1s, and a multiple of the one before it, and longer".to_owned(),
            ));
        }
        if lifecycler.ring.replication_factor == Some(0) {
            return Err(invalid(
                "ingester.lifecycler.ring.replication_factor",
                "must be at least 1".to_owned(),
            ));
        }
        if self.pyroscopedb.data_path.is_empty() {
            return Err(invalid("pyroscopedb.data_path", "must not be empty".to_owned()));
        }
        if self.pyroscopedb.max_block_duration < Duration::from_secs(5) {
            return Err(invalid(
                "pyroscopedb.max_block_duration",
                "must be at least 5s".to_owned(),
            ));
        }
        if !(0.0..=1.0).contains(&self.pyroscopedb.min_disk_available_percentage) {
            return Err(invalid(
                "pyroscopedb.min_disk_available_percentage",
                "must be between 0 and 1 (0.05 is 5 %)".to_owned(),
            ));
        }
        if self.ingester.max_head_memory_bytes == 0 {
            return Err(invalid(
                "ingester.max_head_memory_bytes",
                "must be at least 1".to_owned(),
            ));
        }
        match self.storage.backend {
            StorageBackend::Filesystem if self.storage.filesystem.dir.is_empty() => {
                return Err(invalid("storage.filesystem.dir", "must not be empty".to_owned()));
            }
            StorageBackend::S3 if self.storage.s3.bucket_name.is_empty() => {
                return Err(invalid(
                    "storage.s3.bucket_name",
                    "is required with storage.backend s3".to_owned(),
                ));
            }
            _ => {}
        }
        for (path, address) in [
            ("memberlist.bind_addr", &self.memberlist.bind_addr),
            ("memberlist.advertise_addr", &self.memberlist.advertise_addr),
        ] {
            if !address.is_empty() && address.parse::<IpAddr>().is_err() {
                return Err(invalid(path, format!("{address:?} is not an IP address")));
            }
        }
        Ok(())
    }

    fn targets_all_with_others(&self) -> bool {
        self.target.0.len() > 1 && self.target.0.contains(&Target::All)
    }

    /// The configuration as YAML, for `/api/v1/status/config`.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).unwrap_or_else(|err| format!("# cannot render the configuration: {err}\n"))
    }
}

/// Checks limits (the defaults at `limits`, or a tenant's overrides).
pub fn check_limits(limits: &Limits, at: &str) -> Result<(), ConfigError> {
    for (key, mb) in [
        ("ingestion_rate_mb", limits.ingestion_rate_mb),
        ("ingestion_burst_size_mb", limits.ingestion_burst_size_mb),
        ("ingestion_body_limit_mb", limits.ingestion_body_limit_mb),
    ] {
        if !(mb.is_finite() && mb >= 0.0) {
            return Err(ConfigError::Invalid {
                path: format!("{at}.{key}"),
                message: format!("{mb} is not a size in MiB (0 or more)"),
            });
        }
    }
    Ok(())
}

/// The key paths (`server.http_listen_port`) of every setting, for docs.
#[cfg(test)]
fn leaf_paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        Value::Mapping(mapping) => {
            for (key, child) in mapping {
                let key = key.as_str().unwrap_or_default();
                let path = if prefix.is_empty() {
                    key.to_owned()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_paths(child, &path, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(serde_norway::from_str(yaml).unwrap())
    }

    #[test]
    fn test_compactor_block_ranges_must_grow_by_multiples() {
        for bad in ["[1h, 90m]", "[1h, 1h]", "[]", "[0s]"] {
            let err = parse(&format!("compactor:\n  block_ranges: {bad}\n")).unwrap_err();
            assert!(err.to_string().contains("compactor.block_ranges"), "{bad}: {err}");
        }
        let config = parse("compactor:\n  block_ranges: [30m, 1h, 4h]\n").unwrap();
        let ranges: Vec<Duration> = config.compactor.block_ranges.iter().map(|range| **range).collect();
        assert_eq!(ranges, [1800, 3600, 14_400].map(Duration::from_secs));
    }

    #[test]
    fn test_downsampling_resolutions_nest() {
        for bad in ["[1h, 90m]", "[15m, 40m]", "[500ms]"] {
            let err = parse(&format!("compactor:\n  downsampling_resolutions: {bad}\n")).unwrap_err();
            assert!(
                err.to_string().contains("compactor.downsampling_resolutions"),
                "{bad}: {err}"
            );
        }
        let config = parse("compactor:\n  downsampling_resolutions: []\n").unwrap();
        assert!(config.compactor.downsampling_resolutions.is_empty());
        let defaults: Vec<Duration> = Config::default()
            .compactor
            .downsampling_resolutions
            .iter()
            .map(|resolution| **resolution)
            .collect();
        assert_eq!(defaults, [900, 28_800].map(Duration::from_secs));
    }

    #[test]
    fn test_defaults() {
        let config = parse("{}").unwrap();
        assert_eq!(config, Config::default().resolved());
        assert_eq!(config.server.http_listen_port, 4040);
        assert_eq!(
            config.target.modules(),
            [
                Target::Distributor,
                Target::Ingester,
                Target::Querier,
                Target::Compactor
            ]
        );
        assert!(!config.multitenancy_enabled);
    }

    #[test]
    fn test_pyroscope_style_yaml() {
        let config = parse(
            "target: distributor, querier\nmultitenancy_enabled: true\nserver:\n  http_listen_port: 4100\n  \
             graceful_shutdown_timeout: 1m30s\nlimits:\n  max_label_names_per_series: 40\n  reject_older_than: 2h\n",
        )
        .unwrap();
        assert_eq!(config.target.0, [Target::Distributor, Target::Querier]);
        assert_eq!(config.target.modules(), [Target::Distributor, Target::Querier]);
        assert_eq!(config.server.graceful_shutdown_timeout, Duration::from_secs(90));
        assert_eq!(config.limits.max_label_names_per_series, 40);
        assert_eq!(config.limits.reject_older_than, Duration::from_secs(7200));
        assert_eq!(config.limits.max_label_value_length, 2048);
        let list = parse("target: [ingester]").unwrap();
        assert_eq!(list.target.0, [Target::Ingester]);
    }

    #[test]
    fn test_target_dependent_defaults() {
        let all = parse("{}").unwrap();
        let ring = &all.ingester.lifecycler.ring;
        assert_eq!(
            (ring.kvstore.store, ring.replication_factor),
            (Some(StoreKind::Inmemory), Some(1))
        );
        assert_eq!(ring.auto_forget_unhealthy_period, Some(Duration::from_secs(600)));
        let cluster =
            parse("target: distributor\ningester:\n  lifecycler:\n    ring:\n      heartbeat_timeout: 10s").unwrap();
        let ring = &cluster.ingester.lifecycler.ring;
        assert_eq!(
            (ring.kvstore.store, ring.replication_factor),
            (Some(StoreKind::Memberlist), Some(3))
        );
        assert_eq!(ring.auto_forget_unhealthy_period, Some(Duration::from_secs(100)));
        let explicit = parse(
            "target: ingester\ningester:\n  lifecycler:\n    ring:\n      replication_factor: 2\n      kvstore:\n        store: inmemory",
        )
        .unwrap();
        let ring = &explicit.ingester.lifecycler.ring;
        assert_eq!(
            (ring.kvstore.store, ring.replication_factor),
            (Some(StoreKind::Inmemory), Some(2))
        );
        assert_eq!(
            cluster
                .defaults_for_target()
                .ingester
                .lifecycler
                .ring
                .replication_factor,
            Some(3)
        );
    }

    #[test]
    fn test_errors_name_the_key() {
        let message = |yaml: &str| parse(yaml).unwrap_err().to_string();
        assert!(message("server:\n  http_listen_port: x").contains("at server.http_listen_port"));
        assert!(message("server:\n  http_listen_port: 70000").contains("at server.http_listen_port"));
        assert!(message("server:\n  nope: 1").contains("unknown field `nope`"));
        assert!(message("limits:\n  reject_older_than: soon").contains("at limits.reject_older_than"));
        assert!(message("target: storage").contains("unknown target \"storage\""));
        assert!(message("target: all,ingester").contains("at target"));
        assert!(message("server:\n  http_listen_address: localhost").contains("not an IP address"));
        assert!(message("server:\n  log_level: loud").contains("at server.log_level"));
        assert!(message("ingester:\n  lifecycler:\n    num_tokens: 0").contains("ingester.lifecycler.num_tokens"));
        assert!(
            message("ingester:\n  lifecycler:\n    ring:\n      kvstore:\n        store: consul")
                .contains("ingester.lifecycler.ring.kvstore.store")
        );
        assert!(message("memberlist:\n  bind_addr: somewhere").contains("memberlist.bind_addr"));
    }

    /// Every setting and every flag is documented in docs/configuration.md.
    #[test]
    fn test_configuration_reference_lists_every_key_and_flag() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md")).unwrap();
        let mut paths = Vec::new();
        leaf_paths(&serde_norway::to_value(Config::default()).unwrap(), "", &mut paths);
        assert!(paths.len() > 10);
        for path in paths {
            assert!(
                doc.contains(&format!("`{path}`")),
                "docs/configuration.md does not list `{path}`"
            );
        }
        for flag in crate::cli::FLAGS {
            assert!(
                doc.contains(&format!("`-{}`", flag.name)),
                "docs/configuration.md does not list -{}",
                flag.name
            );
        }
    }

    #[test]
    fn test_yaml_round_trip() {
        let config = parse("target: ingester\nserver:\n  log_format: json\n").unwrap();
        let back = Config::from_yaml(serde_norway::from_str(&config.to_yaml()).unwrap()).unwrap();
        assert_eq!(back, config);
    }
}
