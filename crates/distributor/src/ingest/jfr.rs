//! JFR sent to `/ingest?format=jfr` by the Pyroscope Java agent: the body
//! is the recording, or multipart with the recording in `jfr` and
//! async-profiler's context labels in `labels` (a `LabelsSnapshot`; either
//! may be gzipped). Each kind of sample becomes one profile per context,
//! labelled with the context's labels and `jfr_event`, of Pyroscope's
//! types:
//!
//! | samples | `__name__` | sample types | period type |
//! |---|---|---|---|
//! | CPU (execution samples not sleeping) | `process_cpu` | `cpu:nanoseconds` | `cpu:nanoseconds` |
//! | wall clock | `wall` | `wall:nanoseconds` | `wall:nanoseconds` |
//! | allocations in new TLABs, outside TLABs, the JDK's allocation samples | `memory` | `alloc_in_new_tlab_objects:count`, `alloc_in_new_tlab_bytes:bytes` (`outside_tlab`, `alloc_sample`) | `space:bytes` |
//! | contended monitor enters | `mutex` | `contentions:count`, `delay:nanoseconds` | `mutex:count` |
//! | thread parks | `block` | `contentions:count`, `delay:nanoseconds` | `block:count` |
//! | live objects | `memory` | `live:count` | `objects:count` |
//! | native mallocs | `memory` | `malloc_objects:count`, `malloc_bytes:bytes` | |
//!
//! CPU and wall samples count `1e9 / sampleRate` nanoseconds each. The
//! whole recording, decompressed, must fit `max_profile_size_bytes`
//! (Pyroscope applies that limit to each profile made from it). A
//! recording without samples stores nothing and answers 200.

use std::collections::HashMap;
use std::sync::Arc;

use flamedb_api::{ErrorCode, RpcError};
use flamedb_model::jfr::{self, SampleKind, Totals};
use flamedb_model::pprof::StackProfileBuilder;
use prost::Message;

use super::IngestRequest;
use crate::batch::PushBatch;

/// async-profiler's context labels: context ID → label name and value IDs
/// → strings.
#[derive(Clone, PartialEq, prost::Message)]
struct LabelsSnapshot {
    #[prost(map = "int64, message", tag = "1")]
    contexts: HashMap<i64, Context>,
    #[prost(map = "int64, string", tag = "2")]
    strings: HashMap<i64, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Context {
    #[prost(map = "int64, int64", tag = "1")]
    labels: HashMap<i64, i64>,
}

fn unprocessable(message: String) -> RpcError {
    RpcError::new(ErrorCode::UnprocessableEntity, message)
}

/// What a kind of JFR sample is stored as.
struct JfrProfileType {
    metric: &'static str,
    sample_types: &'static [(&'static str, &'static str)],
    period_type: Option<(&'static str, &'static str)>,
}

impl JfrProfileType {
    fn of(kind: SampleKind) -> Self {
        let (metric, sample_types, period_type): (_, &'static [_], _) = match kind {
            SampleKind::Cpu => ("process_cpu", &[("cpu", "nanoseconds")], Some(("cpu", "nanoseconds"))),
            SampleKind::Wall => ("wall", &[("wall", "nanoseconds")], Some(("wall", "nanoseconds"))),
            SampleKind::AllocInNewTlab => (
                "memory",
                &[
                    ("alloc_in_new_tlab_objects", "count"),
                    ("alloc_in_new_tlab_bytes", "bytes"),
                ],
                Some(("space", "bytes")),
            ),
            SampleKind::AllocOutsideTlab => (
                "memory",
                &[
                    ("alloc_outside_tlab_objects", "count"),
                    ("alloc_outside_tlab_bytes", "bytes"),
                ],
                Some(("space", "bytes")),
            ),
            SampleKind::AllocSample => (
                "memory",
                &[("alloc_sample_objects", "count"), ("alloc_sample_bytes", "bytes")],
                Some(("space", "bytes")),
            ),
            SampleKind::Lock => (
                "mutex",
                &[("contentions", "count"), ("delay", "nanoseconds")],
                Some(("mutex", "count")),
            ),
            SampleKind::Park => (
                "block",
                &[("contentions", "count"), ("delay", "nanoseconds")],
                Some(("block", "count")),
            ),
            SampleKind::Live => ("memory", &[("live", "count")], Some(("objects", "count"))),
            SampleKind::Malloc => (
                "memory",
                &[("malloc_objects", "count"), ("malloc_bytes", "bytes")],
                None,
            ),
        };
        Self {
            metric,
            sample_types,
            period_type,
        }
    }

    /// The values of a stack's samples; CPU and wall samples each count
    /// `period` nanoseconds.
    fn values(kind: SampleKind, totals: Totals, period: i64) -> Vec<i64> {
        let events = i64::try_from(totals.events).unwrap_or(i64::MAX);
        match kind {
            SampleKind::Cpu | SampleKind::Wall => vec![events.saturating_mul(period)],
            SampleKind::Live => vec![events],
            _ => vec![events, totals.amount],
        }
    }
}

/// Adds the samples of the recording `raw` (gzip or plain), with the
/// context labels of `labels`, to `batch`.
pub(super) fn add_jfr(
    batch: &mut PushBatch,
    request: &IngestRequest,
    raw: &[u8],
    labels: Option<&[u8]>,
) -> Result<(), RpcError> {
    let app = flamedb_model::Labels::from_pairs([("service_name", request.name.app_name.as_str())]);
    let Some(bytes) = batch.decompress(&app, raw).map_err(super::decompress_error)? else {
        return Ok(());
    };
    let recording = jfr::parse_within(&bytes, batch.budget()).map_err(|err| match err {
        jfr::JfrError::Budget(err) => err.into(),
        err => unprocessable(err.to_string()),
    })?;
    let snapshot = match labels {
        Some(labels) if !labels.is_empty() => {
            // Within the same size limits as the recording.
            let Some(plain) = batch.decompress(&app, labels).map_err(super::decompress_error)? else {
                return Ok(());
            };
            // Each map entry takes at least 4 bytes on the wire and at most
            // 128 in memory (key, value, slot, growth).
            batch
                .budget()
                .charge(plain.len().saturating_mul(32), "the labels of the JFR")?;
            LabelsSnapshot::decode(plain.as_ref())
                .map_err(|err| unprocessable(format!("the labels of the JFR are not a LabelsSnapshot: {err}")))?
        }
        _ => LabelsSnapshot::default(),
    };
    let period = 1_000_000_000 / i64::from(request.sample_rate.max(1));
    let duration = request.until.saturating_sub(request.from).max(0);
    let mut profiles: HashMap<(SampleKind, i64), StackProfileBuilder> = HashMap::new();
    for (&(kind, context, stack), &totals) in &recording.samples {
        let profile_type = JfrProfileType::of(kind);
        let budget = batch.budget();
        let builder = profiles.entry((kind, context)).or_insert_with(|| {
            let builder = StackProfileBuilder::with_types(profile_type.sample_types)
                .within(Arc::clone(budget))
                .time(request.from, duration);
            match (kind, profile_type.period_type) {
                (SampleKind::Cpu | SampleKind::Wall, Some((r#type, unit))) => builder.period(r#type, unit, period),
                (_, Some((r#type, unit))) => builder.period(r#type, unit, 0),
                (_, None) => builder,
            }
        });
        let names = recording
            .stacks
            .get(stack)
            .into_iter()
            .flatten()
            .filter_map(|&frame| recording.names.get(frame as usize).map(String::as_str));
        builder.add_values(names, JfrProfileType::values(kind, totals, period));
    }
    let share = bytes.len() / profiles.len().max(1);
    for ((kind, context), builder) in profiles {
        let mut labels = request.labels(JfrProfileType::of(kind).metric, &request.name.app_name);
        if let Some(event) = &recording.event {
            labels.set("jfr_event", event.as_str());
        }
        if let Some(context) = snapshot.contexts.get(&context) {
            for (name, value) in &context.labels {
                if let (Some(name), Some(value)) = (snapshot.strings.get(name), snapshot.strings.get(value)) {
                    labels.set(name, value.as_str());
                }
            }
        }
        batch.add(labels, builder.finish()?, share)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use flamedb_model::Limits;
    use flamedb_model::jfr::synthetic::{Event, FieldValue, recording};
    use flamedb_model::pprof::string_at;

    use super::*;

    fn sample(name: &'static str, stack: i64, fields: Vec<(&'static str, FieldValue)>) -> Event {
        Event { name, stack, fields }
    }

    #[test]
    fn test_each_kind_of_sample_is_a_profile_of_its_type() {
        let stacks: &[&[&str]] = &[&["App.work", "App.main"], &["Lock.wait", "App.main"]];
        let runnable = || vec![("state", FieldValue::State("STATE_RUNNABLE"))];
        let file = recording(
            "itimer",
            1_000_000_000,
            stacks,
            &[
                sample("jdk.ExecutionSample", 1, runnable()),
                sample("jdk.ExecutionSample", 1, runnable()),
                sample(
                    "jdk.ObjectAllocationInNewTLAB",
                    1,
                    vec![("tlabSize", FieldValue::Long(4096))],
                ),
                sample("jdk.JavaMonitorEnter", 2, vec![("duration", FieldValue::Long(2_000))]),
                sample("jdk.ThreadPark", 2, vec![("duration", FieldValue::Long(7))]),
            ],
        );
        let params: HashMap<String, String> = [("name", "app{env=x}"), ("from", "100"), ("until", "110")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let request = IngestRequest::parse(&params).unwrap();
        let mut batch = PushBatch::new(
            Arc::new(Limits::default()),
            Arc::new(flamedb_model::budget::RequestBudget::unlimited()),
        );
        add_jfr(&mut batch, &request, &file, None).unwrap();

        // __name__ → (sample types, period type, values of the one sample).
        let profiles: BTreeMap<String, (Vec<String>, String, Vec<i64>)> = batch
            .profiles
            .iter()
            .map(|received| {
                let labels = &received.labels;
                assert_eq!(labels.get("service_name"), Some("app"));
                assert_eq!(labels.get("env"), Some("x"));
                assert_eq!(labels.get("jfr_event"), Some("itimer"));
                let profile = &received.profile;
                let types = profile
                    .sample_type
                    .iter()
                    .map(|t| format!("{}:{}", string_at(profile, t.r#type), string_at(profile, t.unit)))
                    .collect();
                let period = profile.period_type.as_ref().map_or(String::new(), |t| {
                    format!("{}:{}", string_at(profile, t.r#type), string_at(profile, t.unit))
                });
                assert_eq!(profile.sample.len(), 1);
                assert_eq!(profile.time_nanos, 100_000_000_000);
                (
                    labels.get("__name__").unwrap().to_owned(),
                    (types, period, profile.sample[0].value.clone()),
                )
            })
            .collect();
        let strings = |items: &[&str]| items.iter().map(|item| (*item).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            profiles,
            BTreeMap::from([
                (
                    "process_cpu".to_owned(),
                    (
                        strings(&["cpu:nanoseconds"]),
                        "cpu:nanoseconds".to_owned(),
                        vec![20_000_000]
                    )
                ),
                (
                    "memory".to_owned(),
                    (
                        strings(&["alloc_in_new_tlab_objects:count", "alloc_in_new_tlab_bytes:bytes"]),
                        "space:bytes".to_owned(),
                        vec![1, 4096]
                    )
                ),
                (
                    "mutex".to_owned(),
                    (
                        strings(&["contentions:count", "delay:nanoseconds"]),
                        "mutex:count".to_owned(),
                        vec![1, 2_000]
                    )
                ),
                (
                    "block".to_owned(),
                    (
                        strings(&["contentions:count", "delay:nanoseconds"]),
                        "block:count".to_owned(),
                        vec![1, 7]
                    )
                ),
            ])
        );
    }
}
