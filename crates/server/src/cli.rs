//! Command-line flags. Every flag is one row of [`FLAGS`]: its
//! Pyroscope-style name, the YAML key it sets and its help text. Go-style
//! `-flag.name=value` and `-flag.name value` are accepted as well as
//! `--flag.name value`; bool flags take `-flag` or `-flag=false`. Flags
//! override the YAML file, which overrides the defaults.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches};
use serde_norway::{Mapping, Value};

use crate::config::{Config, ConfigError};

/// What a flag's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    Bool,
    /// A non-negative whole number.
    Int,
    /// A number such as `0.05`.
    Float,
    /// A duration such as `30s`, `1m30s` or `2h`.
    Duration,
    String,
    /// Comma-separated values; the flag may also be given several times.
    List,
}

/// A command-line flag and the configuration key it sets.
#[derive(Debug)]
pub struct Flag {
    pub name: &'static str,
    /// Another name of the flag: the `-ingester.ring.*` spelling of
    /// Pyroscope's documentation for the ingester's ring flags.
    pub alias: Option<&'static str>,
    /// The YAML key path, e.g. `server.http_listen_port`.
    pub path: &'static str,
    pub kind: FlagKind,
    pub help: &'static str,
}

const fn flag(name: &'static str, path: &'static str, kind: FlagKind, help: &'static str) -> Flag {
    Flag {
        name,
        alias: None,
        path,
        kind,
        help,
    }
}

/// A flag of the ingester's ring, also accepted as `-ingester.ring.<alias>`.
const fn ring_flag(
    name: &'static str,
    alias: &'static str,
    path: &'static str,
    kind: FlagKind,
    help: &'static str,
) -> Flag {
    Flag {
        name,
        alias: Some(alias),
        path,
        kind,
        help,
    }
}

/// Every flag that sets a configuration key.
pub const FLAGS: &[Flag] = &[
    flag(
        "target",
        "target",
        FlagKind::String,
        "Modules to run: all, or a comma-separated list of distributor, ingester, querier, compactor.",
    ),
    flag(
        "auth.multitenancy-enabled",
        "multitenancy_enabled",
        FlagKind::Bool,
        "Require the X-Scope-OrgID header and keep tenants apart; off, every request is tenant \"anonymous\".",
    ),
    flag(
        "server.http-listen-address",
        "server.http_listen_address",
        FlagKind::String,
        "IP address to listen on; empty for every interface.",
    ),
    flag(
        "server.http-listen-port",
        "server.http_listen_port",
        FlagKind::Int,
        "Port of the HTTP server (HTTP/1.1 and h2c: Connect, gRPC, operator pages); 0 picks a free port.",
    ),
    flag(
        "server.grpc-listen-address",
        "server.grpc_listen_address",
        FlagKind::String,
        "IP address of the internal listener (the ingester API distributors and queriers call); empty: loopback with the in-memory ring, else every interface.",
    ),
    flag(
        "server.grpc-listen-port",
        "server.grpc_listen_port",
        FlagKind::Int,
        "Port of the internal listener; 0 picks a free port. The ingester advertises it in the ring.",
    ),
    flag(
        "server.graceful-shutdown-timeout",
        "server.graceful_shutdown_timeout",
        FlagKind::Duration,
        "How long in-flight requests may take to finish on SIGTERM or SIGINT.",
    ),
    flag(
        "server.http-server-read-timeout",
        "server.http_server_read_timeout",
        FlagKind::Duration,
        "How long a request body may take to arrive; a slower one gets 408.",
    ),
    flag(
        "log.level",
        "server.log_level",
        FlagKind::String,
        "Log level: debug, info, warn or error.",
    ),
    flag(
        "log.format",
        "server.log_format",
        FlagKind::String,
        "Log format: logfmt (lines for people) or json.",
    ),
    flag(
        "distributor.ingestion-rate-limit-mb",
        "limits.ingestion_rate_mb",
        FlagKind::Float,
        "Per-tenant ingestion rate in MiB/s of uncompressed profiles, shared by the healthy distributors (0: no limit).",
    ),
    flag(
        "distributor.ingestion-burst-size-mb",
        "limits.ingestion_burst_size_mb",
        FlagKind::Float,
        "Per-tenant burst in MiB on each distributor; a larger single profile is always refused.",
    ),
    flag(
        "distributor.ingestion-body-limit-mb",
        "limits.ingestion_body_limit_mb",
        FlagKind::Float,
        "Largest push body in MiB, as sent and after decompression (0: no limit).",
    ),
    flag(
        "distributor.push.timeout",
        "distributor.pushtimeout",
        FlagKind::Duration,
        "How long a push to an ingester may take; replicas still writing when the client is answered finish within it.",
    ),
    flag(
        "runtime-config.file",
        "runtime_config.file",
        FlagKind::String,
        "YAML file with per-tenant limit overrides (overrides: {tenant: {limit: value}}), re-read while running.",
    ),
    flag(
        "runtime-config.reload-period",
        "runtime_config.period",
        FlagKind::Duration,
        "How often the runtime config file is re-read.",
    ),
    flag(
        "querier.query-store-after",
        "querier.query_store_after",
        FlagKind::Duration,
        "Query ranges older than this also read the blocks in object storage.",
    ),
    flag(
        "querier.block-cache-dir",
        "querier.block_cache_dir",
        FlagKind::String,
        "Where the querier caches blocks read from object storage (emptied at start).",
    ),
    flag(
        "querier.block-cache-max-bytes",
        "querier.block_cache_max_bytes",
        FlagKind::Int,
        "Most bytes of cached blocks; least recently used ones are removed first.",
    ),
    flag(
        "querier.symbol-cache-max-bytes",
        "querier.symbol_cache_max_bytes",
        FlagKind::Int,
        "Most bytes of cached blocks' decoded symbols kept in memory between queries; 0 decodes them per query.",
    ),
    flag(
        "querier.bucket-index-max-stale-period",
        "querier.bucket_index_max_stale_period",
        FlagKind::Duration,
        "How old a tenant's bucket index may be and still be read instead of listing the bucket (also at most half -querier.query-store-after and half the compactor's deletion delay); 0 always lists.",
    ),
    flag(
        "compactor.data-dir",
        "compactor.data_dir",
        FlagKind::String,
        "Where the compactor downloads and compacts blocks (emptied at start).",
    ),
    flag(
        "compactor.compaction-interval",
        "compactor.compaction_interval",
        FlagKind::Duration,
        "How often the compactor runs a round over the tenants it owns.",
    ),
    flag(
        "compactor.first-level-compaction-wait-period",
        "compactor.first_level_compaction_wait_period",
        FlagKind::Duration,
        "How long after a block window ends its blocks are compacted, so every replica has uploaded its copy.",
    ),
    flag(
        "compactor.block-ranges",
        "compactor.block_ranges",
        FlagKind::List,
        "Widths of the windows blocks are compacted by, shortest first, each a multiple of the one before.",
    ),
    flag(
        "compactor.max-memory-bytes",
        "compactor.max_memory_bytes",
        FlagKind::Int,
        "Most memory one compaction may take, estimated from its blocks before they are read (0: no limit).",
    ),
    flag(
        "compactor.downsampling-resolutions",
        "compactor.downsampling_resolutions",
        FlagKind::List,
        "Time buckets compacted blocks also keep each series' profiles merged by, finest first, for fast long-range queries (empty: off).",
    ),
    flag(
        "compactor.blocks-retention-period",
        "limits.compactor_blocks_retention_period",
        FlagKind::Duration,
        "How long a tenant's blocks are kept in object storage (0s: forever).",
    ),
    flag(
        "compactor.deletion-delay",
        "compactor.deletion_delay",
        FlagKind::Duration,
        "How long compacted blocks stay, marked for deletion, before they are deleted.",
    ),
    flag(
        "compactor.ring.instance-id",
        "compactor.sharding_ring.instance_id",
        FlagKind::String,
        "Instance ID of the compactor in the compactor ring; empty: the hostname.",
    ),
    flag(
        "compactor.ring.instance-addr",
        "compactor.sharding_ring.instance_addr",
        FlagKind::String,
        "Address advertised in the compactor ring; empty: as for ingesters.",
    ),
    flag(
        "compactor.ring.heartbeat-period",
        "compactor.sharding_ring.heartbeat_period",
        FlagKind::Duration,
        "How often a compactor heartbeats in the compactor ring.",
    ),
    flag(
        "compactor.ring.heartbeat-timeout",
        "compactor.sharding_ring.heartbeat_timeout",
        FlagKind::Duration,
        "A compactor whose last heartbeat is older is UNHEALTHY: its tenants pass to the next compactor (forgotten after 10 x this).",
    ),
    flag(
        "querier.max-query-length",
        "limits.max_query_length",
        FlagKind::Duration,
        "Longest time range of a query (0s: any).",
    ),
    flag(
        "querier.max-query-lookback",
        "limits.max_query_lookback",
        FlagKind::Duration,
        "How far back queries may look; older parts of a range are cut off (0s: no limit).",
    ),
    flag(
        "querier.max-flamegraph-nodes-default",
        "limits.max_flamegraph_nodes_default",
        FlagKind::Int,
        "Nodes of a flame graph when the query does not set max_nodes (0: all).",
    ),
    flag(
        "querier.max-flamegraph-nodes-max",
        "limits.max_flamegraph_nodes_max",
        FlagKind::Int,
        "Most flame graph nodes a query may ask for (0: any).",
    ),
    flag(
        "querier.max-query-memory-bytes",
        "limits.max_query_memory_bytes",
        FlagKind::Int,
        "Most memory the call trees of one query may take on the querier, and of one merge request on an ingester, in bytes (0: no limit).",
    ),
    flag(
        "validation.max-length-label-name",
        "limits.max_label_name_length",
        FlagKind::Int,
        "Longest label name in bytes (0: no limit).",
    ),
    flag(
        "validation.max-length-label-value",
        "limits.max_label_value_length",
        FlagKind::Int,
        "Longest label value in bytes (0: no limit).",
    ),
    flag(
        "validation.max-label-names-per-series",
        "limits.max_label_names_per_series",
        FlagKind::Int,
        "Most labels per series (0: no limit).",
    ),
    flag(
        "validation.max-profile-size-bytes",
        "limits.max_profile_size_bytes",
        FlagKind::Int,
        "Largest profile after decompression, in bytes (0: no limit).",
    ),
    flag(
        "validation.max-profile-stacktrace-samples",
        "limits.max_profile_stacktrace_samples",
        FlagKind::Int,
        "Most samples per profile (0: no limit).",
    ),
    flag(
        "validation.max-profile-stacktrace-sample-labels",
        "limits.max_profile_stacktrace_sample_labels",
        FlagKind::Int,
        "Most labels per sample (0: no limit).",
    ),
    flag(
        "validation.max-profile-stacktrace-depth",
        "limits.max_profile_stacktrace_depth",
        FlagKind::Int,
        "Deeper stacks keep the frames closest to the root (0: no limit).",
    ),
    flag(
        "validation.max-profile-symbol-value-length",
        "limits.max_profile_symbol_value_length",
        FlagKind::Int,
        "Longer symbols keep their last bytes (0: no limit).",
    ),
    flag(
        "validation.reject-older-than",
        "limits.reject_older_than",
        FlagKind::Duration,
        "Reject profiles older than this (0s: accept any age).",
    ),
    flag(
        "validation.reject-newer-than",
        "limits.reject_newer_than",
        FlagKind::Duration,
        "Reject profiles dated further ahead than this (0s: accept any).",
    ),
    flag(
        "validation.disable-label-sanitization",
        "limits.disable_label_sanitization",
        FlagKind::Bool,
        "Accept any UTF-8 label name; when false, names follow [A-Za-z_.][A-Za-z0-9_.]* and dots become underscores.",
    ),
    flag(
        "ingester.max-local-series-per-tenant",
        "limits.max_local_series_per_tenant",
        FlagKind::Int,
        "Most active series of a tenant on one ingester (0: no limit).",
    ),
    flag(
        "ingester.max-global-series-per-tenant",
        "limits.max_global_series_per_tenant",
        FlagKind::Int,
        "Most active series of a tenant in the cluster; each ingester takes its share (0: no limit).",
    ),
    ring_flag(
        "ingester.lifecycler.ID",
        "ingester.ring.instance-id",
        "ingester.lifecycler.id",
        FlagKind::String,
        "Instance ID of the ingester in the ring; empty: the hostname.",
    ),
    ring_flag(
        "ingester.lifecycler.addr",
        "ingester.ring.instance-addr",
        "ingester.lifecycler.address",
        FlagKind::String,
        "Address advertised in the ring; empty: the internal listen address if it is an IP, else the HTTP listen address if it is one, else the first private IP.",
    ),
    ring_flag(
        "ingester.lifecycler.port",
        "ingester.ring.instance-port",
        "ingester.lifecycler.port",
        FlagKind::Int,
        "Port advertised in the ring; 0: the internal listener's port (-server.grpc-listen-port).",
    ),
    ring_flag(
        "ingester.availability-zone",
        "ingester.ring.instance-availability-zone",
        "ingester.lifecycler.availability_zone",
        FlagKind::String,
        "Availability zone of the ingester (with zone awareness, one replica per zone).",
    ),
    ring_flag(
        "ingester.num-tokens",
        "ingester.ring.num-tokens",
        "ingester.lifecycler.num_tokens",
        FlagKind::Int,
        "Tokens each ingester holds in the ring.",
    ),
    ring_flag(
        "ingester.heartbeat-period",
        "ingester.ring.heartbeat-period",
        "ingester.lifecycler.heartbeat_period",
        FlagKind::Duration,
        "How often an ingester heartbeats in the ring.",
    ),
    flag(
        "ingester.join-after",
        "ingester.lifecycler.join_after",
        FlagKind::Duration,
        "Wait before taking tokens, to see the ring first.",
    ),
    ring_flag(
        "ingester.observe-period",
        "ingester.ring.observe-period",
        "ingester.lifecycler.observe_period",
        FlagKind::Duration,
        "Hold new tokens in JOINING this long and replace any lost to a conflict; 0s: turn ACTIVE at once.",
    ),
    ring_flag(
        "ingester.final-sleep",
        "ingester.ring.final-sleep",
        "ingester.lifecycler.final_sleep",
        FlagKind::Duration,
        "Pause in LEAVING after the shutdown flush, before leaving the ring.",
    ),
    ring_flag(
        "ingester.tokens-file-path",
        "ingester.ring.tokens-file-path",
        "ingester.lifecycler.tokens_file_path",
        FlagKind::String,
        "File that keeps the ingester's tokens across restarts; empty: not kept.",
    ),
    ring_flag(
        "ring.store",
        "ingester.ring.store",
        "ingester.lifecycler.ring.kvstore.store",
        FlagKind::String,
        "Where rings are kept: inmemory (one process) or memberlist (gossip); unset: inmemory for -target=all, else memberlist.",
    ),
    ring_flag(
        "ring.heartbeat-timeout",
        "ingester.ring.heartbeat-timeout",
        "ingester.lifecycler.ring.heartbeat_timeout",
        FlagKind::Duration,
        "An ingester whose last heartbeat is older is UNHEALTHY.",
    ),
    ring_flag(
        "ring.auto-forget-unhealthy-period",
        "ingester.ring.auto-forget-unhealthy-period",
        "ingester.lifecycler.ring.auto_forget_unhealthy_period",
        FlagKind::Duration,
        "Ingesters unhealthy this long are removed from the ring; unset: 10 x the heartbeat timeout.",
    ),
    ring_flag(
        "distributor.replication-factor",
        "ingester.ring.replication-factor",
        "ingester.lifecycler.ring.replication_factor",
        FlagKind::Int,
        "Copies of each series; a write succeeds once a quorum (RF/2+1) has it. Unset: 1 for -target=all, else 3.",
    ),
    ring_flag(
        "distributor.zone-awareness-enabled",
        "ingester.ring.zone-awareness-enabled",
        "ingester.lifecycler.ring.zone_awareness_enabled",
        FlagKind::Bool,
        "Place the replicas of a series in different availability zones.",
    ),
    flag(
        "ingester.max-head-memory",
        "ingester.max_head_memory_bytes",
        FlagKind::Int,
        "Head memory in bytes (all tenants) past which pushes get 429; heads are flushed early from 80 % of it.",
    ),
    flag(
        "ingester.wal.skip-corrupt-records",
        "ingester.wal.skip_corrupt_records",
        FlagKind::Bool,
        "At WAL replay, skip corrupt records (losing what they held) and keep every later one, instead of staying unready at the first.",
    ),
    flag(
        "ingester.instance-limits.max-inflight-push-requests",
        "ingester.instance_limits.max_inflight_push_requests",
        FlagKind::Int,
        "Pushes from distributors an ingester receives, decodes and stores at once; more get 429 (0: no limit).",
    ),
    flag(
        "ingester.instance-limits.max-inflight-push-requests-bytes",
        "ingester.instance_limits.max_inflight_push_requests_bytes",
        FlagKind::Int,
        "Memory in bytes the pushes in flight on an ingester may hold together, as decoded; past it 429 (0: no limit).",
    ),
    flag(
        "ingester.instance-limits.max-tenants",
        "ingester.instance_limits.max_tenants",
        FlagKind::Int,
        "Tenants an ingester holds data of; a push of one more gets 429 (0: any number). Tenants holding nothing are forgotten.",
    ),
    flag(
        "distributor.max-request-memory",
        "distributor.max_request_memory_bytes",
        FlagKind::Int,
        "Most memory in bytes one request may make a process allocate (body, decompressed and decoded, and its copies until stored); past it 413.",
    ),
    flag(
        "distributor.instance-limits.max-inflight-push-requests",
        "distributor.instance_limits.max_inflight_push_requests",
        FlagKind::Int,
        "Pushes a distributor receives, decodes and stores at once; more get 429 (0: no limit).",
    ),
    flag(
        "distributor.instance-limits.max-inflight-push-requests-bytes",
        "distributor.instance_limits.max_inflight_push_requests_bytes",
        FlagKind::Int,
        "Memory in bytes the pushes in flight on a distributor may hold together, as decoded; past it 429 (0: no limit).",
    ),
    flag(
        "pyroscopedb.data-path",
        "pyroscopedb.data_path",
        FlagKind::String,
        "Directory of the ingester's WAL and local blocks.",
    ),
    flag(
        "pyroscopedb.max-block-duration",
        "pyroscopedb.max_block_duration",
        FlagKind::Duration,
        "Width of a head's time window (by profile time); each window becomes its own block.",
    ),
    flag(
        "pyroscopedb.retention-policy-min-free-disk-gb",
        "pyroscopedb.min_free_disk_gb",
        FlagKind::Int,
        "Below this much free disk (GiB), uploaded local blocks are deleted early, oldest first.",
    ),
    flag(
        "pyroscopedb.retention-policy-min-disk-available-percentage",
        "pyroscopedb.min_disk_available_percentage",
        FlagKind::Float,
        "Below this share of free disk (0.05 = 5 %), uploaded local blocks are deleted early, oldest first.",
    ),
    flag(
        "storage.backend",
        "storage.backend",
        FlagKind::String,
        "Object storage for blocks: filesystem or s3.",
    ),
    flag(
        "storage.filesystem.dir",
        "storage.filesystem.dir",
        FlagKind::String,
        "Directory of the filesystem backend.",
    ),
    flag(
        "storage.s3.endpoint",
        "storage.s3.endpoint",
        FlagKind::String,
        "S3 endpoint, host[:port] or a URL; empty: AWS for the region.",
    ),
    flag(
        "storage.s3.bucket-name",
        "storage.s3.bucket_name",
        FlagKind::String,
        "S3 bucket.",
    ),
    flag("storage.s3.region", "storage.s3.region", FlagKind::String, "S3 region."),
    flag(
        "storage.s3.access-key-id",
        "storage.s3.access_key_id",
        FlagKind::String,
        "S3 access key ID.",
    ),
    flag(
        "storage.s3.secret-access-key",
        "storage.s3.secret_access_key",
        FlagKind::String,
        "S3 secret access key (never shown on the configuration pages).",
    ),
    flag(
        "storage.s3.insecure",
        "storage.s3.insecure",
        FlagKind::Bool,
        "Talk plain HTTP to the S3 endpoint.",
    ),
    flag(
        "distributor.ring.instance-id",
        "distributor.ring.instance_id",
        FlagKind::String,
        "Instance ID of the distributor in the distributor ring; empty: the hostname.",
    ),
    flag(
        "distributor.ring.instance-addr",
        "distributor.ring.instance_addr",
        FlagKind::String,
        "Address advertised in the distributor ring; empty: as for ingesters.",
    ),
    flag(
        "distributor.ring.heartbeat-period",
        "distributor.ring.heartbeat_period",
        FlagKind::Duration,
        "How often a distributor heartbeats in the distributor ring.",
    ),
    flag(
        "distributor.ring.heartbeat-timeout",
        "distributor.ring.heartbeat_timeout",
        FlagKind::Duration,
        "A distributor whose last heartbeat is older is UNHEALTHY (and forgotten after 10 x this).",
    ),
    flag(
        "memberlist.nodename",
        "memberlist.node_name",
        FlagKind::String,
        "Name of this process in gossip; empty: the hostname.",
    ),
    flag(
        "memberlist.randomize-node-name",
        "memberlist.randomize_node_name",
        FlagKind::Bool,
        "Add a random suffix to the gossip name.",
    ),
    flag(
        "memberlist.join",
        "memberlist.join_members",
        FlagKind::List,
        "Members to join, host:port, comma-separated or repeated.",
    ),
    flag(
        "memberlist.bind-addr",
        "memberlist.bind_addr",
        FlagKind::String,
        "IP address gossip listens on; empty: every interface.",
    ),
    flag(
        "memberlist.bind-port",
        "memberlist.bind_port",
        FlagKind::Int,
        "UDP port for gossip; 0 picks a free port.",
    ),
    flag(
        "memberlist.advertise-addr",
        "memberlist.advertise_addr",
        FlagKind::String,
        "Address peers gossip to; empty: as for ingesters.",
    ),
    flag(
        "memberlist.advertise-port",
        "memberlist.advertise_port",
        FlagKind::Int,
        "Port peers gossip to; 0: the bind port.",
    ),
    flag(
        "memberlist.cluster-label",
        "memberlist.cluster_label",
        FlagKind::String,
        "Clusters with different labels never merge, even on one network.",
    ),
    flag(
        "memberlist.gossip-interval",
        "memberlist.gossip_interval",
        FlagKind::Duration,
        "How often each process gossips.",
    ),
];

const CONFIG_FILE: &str = "config.file";
const VERSION: &str = "version";

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    Run(Box<Config>),
    /// Print this text (help or version) and exit successfully.
    Print(String),
}

/// Why the command line could not be used; printed as is, exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("invalid value {value:?} for flag -{flag}: {expected}")]
    InvalidValue {
        flag: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{0}")]
    Config(#[from] ConfigError),
}

/// Parses the command line (without the program name) into what to do.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Invocation, CliError> {
    let argv = std::iter::once(OsString::from("flamedb")).chain(args.into_iter().map(go_style_to_long));
    let matches = match command().try_get_matches_from(argv) {
        Ok(matches) => matches,
        Err(err) if err.kind() == clap::error::ErrorKind::DisplayHelp => {
            return Ok(Invocation::Print(err.render().to_string()));
        }
        Err(err) => return Err(CliError::Usage(err.render().to_string().trim_end().to_owned())),
    };
    if matches.get_flag(VERSION) {
        return Ok(Invocation::Print(format!("flamedb {}\n", env!("CARGO_PKG_VERSION"))));
    }
    let config_file = matches.get_one::<PathBuf>(CONFIG_FILE);
    let mut tree = Config::read_yaml(config_file.map(PathBuf::as_path))?;
    apply_flags(&matches, &mut tree)?;
    Ok(Invocation::Run(Box::new(Config::from_yaml(tree)?)))
}

/// `-name...` (Go style) becomes `--name...`; `-h` and values such as
/// `-1` stay as they are.
fn go_style_to_long(arg: OsString) -> OsString {
    match arg.to_str() {
        Some(text) if text.len() > 2 && text.starts_with('-') && text.as_bytes()[1].is_ascii_alphabetic() => {
            OsString::from(format!("-{text}"))
        }
        _ => arg,
    }
}

fn command() -> clap::Command {
    let defaults = serde_norway::to_value(Config::default()).unwrap_or(Value::Null);
    let mut command = clap::Command::new("flamedb")
        .about("flamedb: a continuous-profiling database that speaks Grafana Pyroscope's APIs.")
        .after_help(
            "Flags may be written Go-style (-server.http-listen-port=4040) or with two dashes.\n\
             Flags override the config file, which overrides the defaults.",
        )
        .disable_version_flag(true)
        .arg(
            Arg::new(CONFIG_FILE)
                .long(CONFIG_FILE)
                .value_name("PATH")
                .value_parser(clap::value_parser!(PathBuf))
                .help("YAML configuration file (keys as in Pyroscope's: target, server, limits, ...)."),
        )
        .arg(
            Arg::new(VERSION)
                .long(VERSION)
                .action(ArgAction::SetTrue)
                .help("Print the version and exit."),
        );
    for flag in FLAGS {
        let default = lookup(&defaults, flag.path).map(render_default).unwrap_or_default();
        let mut arg = Arg::new(flag.name)
            .long(flag.name)
            .help(format!("{} [default: {default}] (YAML: {})", flag.help, flag.path));
        if let Some(alias) = flag.alias {
            arg = arg.visible_alias(alias);
        }
        // As with Go's flags, a flag given twice takes its last value (a
        // list collects them all).
        let arg = if flag.kind == FlagKind::List {
            arg
        } else {
            arg.overrides_with(flag.name)
        };
        let arg = match flag.kind {
            FlagKind::Bool => arg
                .value_name("BOOL")
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true"),
            FlagKind::Int => arg.value_name("N"),
            FlagKind::Float => arg.value_name("NUMBER"),
            FlagKind::Duration => arg.value_name("DURATION"),
            FlagKind::String => arg.value_name("VALUE"),
            FlagKind::List => arg.value_name("VALUES").action(ArgAction::Append),
        };
        command = command.arg(arg);
    }
    command
}

fn lookup<'a>(tree: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(tree, |node, key| node.get(key))
}

fn render_default(value: &Value) -> String {
    match value {
        Value::Null => "depends on -target".to_owned(),
        Value::Sequence(values) if values.is_empty() => "none".to_owned(),
        Value::String(text) if text.is_empty() => "\"\"".to_owned(),
        Value::String(text) => text.clone(),
        other => serde_norway::to_string(other).unwrap_or_default().trim_end().to_owned(),
    }
}

/// Writes every flag given on the command line into the YAML tree.
fn apply_flags(matches: &ArgMatches, tree: &mut Value) -> Result<(), CliError> {
    for flag in FLAGS {
        if matches.value_source(flag.name) != Some(ValueSource::CommandLine) {
            continue;
        }
        if flag.kind == FlagKind::List {
            let values = matches
                .get_many::<String>(flag.name)
                .into_iter()
                .flatten()
                .flat_map(|value| value.split(','))
                .map(str::trim)
                .filter(|value| !value.is_empty())
                .map(|value| Value::String(value.to_owned()))
                .collect();
            set(tree, flag.path, Value::Sequence(values));
            continue;
        }
        let Some(text) = matches.get_one::<String>(flag.name) else {
            continue;
        };
        let invalid = |expected| CliError::InvalidValue {
            flag: flag.name,
            value: text.clone(),
            expected,
        };
        let value = match flag.kind {
            FlagKind::Bool => match text.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return Err(invalid("expected true or false")),
            },
            FlagKind::Int => Value::Number(
                text.parse::<u64>()
                    .map_err(|_| invalid("expected a whole number"))?
                    .into(),
            ),
            FlagKind::Float => Value::Number(
                text.parse::<f64>()
                    .ok()
                    .filter(|value| value.is_finite())
                    .ok_or_else(|| invalid("expected a number such as 0.05"))?
                    .into(),
            ),
            FlagKind::Duration => {
                humantime::parse_duration(text).map_err(|_| invalid("expected a duration such as 30s, 5m or 1h30m"))?;
                Value::String(text.clone())
            }
            FlagKind::String => Value::String(text.clone()),
            FlagKind::List => continue,
        };
        set(tree, flag.path, value);
    }
    Ok(())
}

/// Sets `path` (dot-separated keys) in `tree`, creating mappings on the way.
fn set(tree: &mut Value, path: &str, value: Value) {
    let mut node = tree;
    for key in path.split('.') {
        if !node.is_mapping() {
            *node = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(mapping) = node else { return };
        node = mapping.entry(Value::String(key.to_owned())).or_insert(Value::Null);
    }
    *node = value;
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;
    use crate::config::Target;

    fn run(args: &[&str]) -> Result<Config, CliError> {
        match parse(args.iter().map(OsString::from))? {
            Invocation::Run(config) => Ok(*config),
            Invocation::Print(text) => panic!("printed {text}"),
        }
    }

    #[test]
    fn test_every_ingester_ring_alias_sets_what_its_flag_sets() {
        let value = |flag: &Flag| match flag.kind {
            FlagKind::Bool => "true".to_owned(),
            FlagKind::Int => "7".to_owned(),
            FlagKind::Duration => "7s".to_owned(),
            FlagKind::String if flag.path.ends_with("store") => "memberlist".to_owned(),
            _ => "/tmp/flamedb-alias".to_owned(),
        };
        let aliased: Vec<&Flag> = FLAGS.iter().filter(|flag| flag.alias.is_some()).collect();
        assert_eq!(aliased.len(), 14);
        let by_alias: Vec<String> = aliased
            .iter()
            .map(|flag| format!("-{}={}", flag.alias.unwrap_or_default(), value(flag)))
            .collect();
        let by_name: Vec<String> = aliased
            .iter()
            .map(|flag| format!("-{}={}", flag.name, value(flag)))
            .collect();
        let as_args = |args: &[String]| run(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        let (aliased_config, named_config) = (as_args(&by_alias), as_args(&by_name));
        assert_eq!(aliased_config, named_config);
        assert_ne!(aliased_config, run(&[]).unwrap());
        assert_eq!(
            aliased_config.ingester.lifecycler.tokens_file_path,
            "/tmp/flamedb-alias"
        );
    }

    #[test]
    fn test_no_arguments_gives_the_defaults() {
        assert_eq!(run(&[]).unwrap(), Config::default().resolved());
    }

    #[test]
    fn test_go_style_and_gnu_style_flags() {
        let config = run(&[
            "-server.http-listen-port=4100",
            "--target",
            "ingester",
            "-auth.multitenancy-enabled",
            "-validation.reject-older-than",
            "2h",
            "--log.format=json",
        ])
        .unwrap();
        assert_eq!(config.server.http_listen_port, 4100);
        assert_eq!(config.target.0, [Target::Ingester]);
        assert!(config.multitenancy_enabled);
        assert_eq!(config.limits.reject_older_than, Duration::from_secs(7200));
        assert_eq!(config.server.log_format, crate::config::LogFormat::Json);
        assert!(!run(&["-auth.multitenancy-enabled=false"]).unwrap().multitenancy_enabled);
        let twice = run(&["-server.http-listen-port=1", "-server.http-listen-port=2"]).unwrap();
        assert_eq!(twice.server.http_listen_port, 2);
        let joined = run(&[
            "-memberlist.join=a:1,b:2",
            "-memberlist.join",
            "c:3",
            "-distributor.replication-factor=2",
        ])
        .unwrap();
        assert_eq!(joined.memberlist.join_members, ["a:1", "b:2", "c:3"]);
        assert_eq!(joined.ingester.lifecycler.ring.replication_factor, Some(2));
    }

    #[test]
    fn test_flags_override_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "server:\n  http_listen_port: 5000\n  log_level: debug\ntarget: querier"
        )
        .unwrap();
        let path = file.path().to_str().unwrap().to_owned();
        let config = run(&["-config.file", &path, "-server.http-listen-port=6000"]).unwrap();
        assert_eq!(config.server.http_listen_port, 6000);
        assert_eq!(config.server.log_level, crate::config::LogLevel::Debug);
        assert_eq!(config.target.0, [Target::Querier]);
    }

    #[test]
    fn test_errors_name_the_flag_or_key() {
        let message = |args: &[&str]| run(args).unwrap_err().to_string();
        assert!(message(&["-no.such-flag=1"]).contains("--no.such-flag"));
        assert!(message(&["stray"]).contains("stray"));
        assert_eq!(
            message(&["-server.http-listen-port=abc"]),
            r#"invalid value "abc" for flag -server.http-listen-port: expected a whole number"#
        );
        assert!(message(&["-server.http-listen-port=70000"]).contains("server.http_listen_port"));
        assert!(message(&["-validation.reject-older-than=soon"]).contains("-validation.reject-older-than"));
        assert!(message(&["-auth.multitenancy-enabled=yes"]).contains("expected true or false"));
        assert!(message(&["-target=storage"]).contains("unknown target"));
        assert!(message(&["-log.level=loud"]).contains("server.log_level"));
        assert!(message(&["-config.file=/nonexistent/flamedb.yaml"]).contains("/nonexistent/flamedb.yaml"));
    }

    #[test]
    fn test_help_lists_every_flag_with_its_default() {
        let Invocation::Print(help) = parse([OsString::from("-h")]).unwrap() else {
            panic!("expected help");
        };
        for flag in FLAGS {
            assert!(
                help.contains(&format!("--{}", flag.name)),
                "{} missing from help",
                flag.name
            );
        }
        assert!(help.contains("[default: 4040]"), "{help}");
        assert!(help.contains("--config.file"));
        let Invocation::Print(long) = parse([OsString::from("-help")]).unwrap() else {
            panic!("expected help");
        };
        assert_eq!(long, help);
    }

    #[test]
    fn test_every_flag_sets_an_existing_key() {
        let defaults = serde_norway::to_value(Config::default()).unwrap();
        for flag in FLAGS {
            assert!(
                lookup(&defaults, flag.path).is_some(),
                "{} sets unknown key {}",
                flag.name,
                flag.path
            );
        }
    }
}
