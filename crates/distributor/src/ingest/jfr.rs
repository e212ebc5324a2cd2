//! JFR sent to `/ingest?format=jfr` by the Pyroscope Java agent: the body
//! is the recording, or multipart with the recording in `jfr` and
//! async-profiler's context labels in `labels` (a `LabelsSnapshot`; either
//! may be gzipped). The CPU samples become one `process_cpu` profile per
//! context, labelled with the context's labels and `jfr_event`. The whole
//! recording, decompressed, must fit `max_profile_size_bytes` (Pyroscope
//! applies that limit to each profile made from it). A recording without
//! CPU samples stores nothing and answers 200.

use std::collections::HashMap;

use flamedb_api::{ErrorCode, RpcError};
use flamedb_model::jfr;
use flamedb_model::pprof::StackProfileBuilder;
use prost::Message;
use tracing::warn;

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

/// Adds the CPU samples of the recording `raw` (gzip or plain), with the
/// context labels of `labels`, to `batch`.
pub(super) fn add_jfr(
    batch: &mut PushBatch,
    request: &IngestRequest,
    raw: &[u8],
    labels: Option<&[u8]>,
) -> Result<(), RpcError> {
    let app = flamedb_model::Labels::from_pairs([("service_name", request.name.app_name.as_str())]);
    let Some(bytes) = batch
        .decompress(&app, raw)
        .map_err(|err| unprocessable(err.to_string()))?
    else {
        return Ok(());
    };
    let recording = jfr::parse(&bytes).map_err(|err| unprocessable(err.to_string()))?;
    if !recording.skipped.is_empty() {
        warn!(
            service = %request.name.app_name,
            events = ?recording.skipped,
            "JFR events of profile types flamedb does not read yet were not stored (only CPU samples are)"
        );
    }
    let snapshot = match labels {
        Some(labels) if !labels.is_empty() => {
            // Within the same size limits as the recording.
            let Some(plain) = batch
                .decompress(&app, labels)
                .map_err(|err| unprocessable(err.to_string()))?
            else {
                return Ok(());
            };
            LabelsSnapshot::decode(plain.as_ref())
                .map_err(|err| unprocessable(format!("the labels of the JFR are not a LabelsSnapshot: {err}")))?
        }
        _ => LabelsSnapshot::default(),
    };
    let period = 1_000_000_000 / i64::from(request.sample_rate.max(1));
    let duration = request.until.saturating_sub(request.from).max(0);
    let mut by_context: HashMap<i64, StackProfileBuilder> = HashMap::new();
    for ((context, stack), count) in &recording.cpu {
        let builder = by_context.entry(*context).or_insert_with(|| {
            StackProfileBuilder::new("cpu", "nanoseconds")
                .period("cpu", "nanoseconds", period)
                .time(request.from, duration)
        });
        let names = recording
            .stacks
            .get(*stack)
            .into_iter()
            .flatten()
            .filter_map(|&frame| recording.names.get(frame as usize).map(String::as_str));
        builder.add(names, i64::try_from(*count).unwrap_or(i64::MAX).saturating_mul(period));
    }
    let share = bytes.len() / by_context.len().max(1);
    for (context, builder) in by_context {
        let mut labels = request.labels("process_cpu", &request.name.app_name);
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
        batch.add(labels, builder.build(), share);
    }
    Ok(())
}
