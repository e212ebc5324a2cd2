//! `flamedb-loadgen`: realistic push traffic from real pprof files, the
//! query mix of Grafana and Profiles Drilldown, and the one-command
//! benchmark (`bench`) that prints the table of docs/benchmarks.md.
//!
//! ```text
//!  workload (pprof files → push requests) ─▶ push (client threads, rate) ─▶ PushStats
//!  query (QueryClient: one kind, or the production mix) ─▶ Latencies
//!  bench: single binary and RF=3 cluster started via flamedb-testkit, both of the above
//! ```

pub mod bench;
pub mod measure;
pub mod push;
pub mod query;
pub mod stats;
pub mod workload;
