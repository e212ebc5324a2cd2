//! The legacy HTTP ingest API, `POST /ingest` and `/pyroscope/ingest`, as
//! Pyroscope's SDKs and Alloy's `pyroscope.receive_http` send it.
//!
//! Query: `name` (`app.cpu{k=v}`), `from`/`until`, `sampleRate` (default
//! 100), `spyName` (default `unknown`), `format`; `units` and
//! `aggregationType` are accepted and unused, as in Pyroscope. Formats:
//! `format=pprof` (raw pprof body), multipart `profile` (+
//! `sample_type_config`, `prev_profile`), `format=lines`,
//! `format=speedscope` (one series per speedscope profile, labelled
//! `profile_name`), `format=jfr` (the samples of a Java Flight Recorder
//! file, raw or multipart `jfr` + `labels`), the binary `trie` and `tree`
//! of old agents (`format=` or `Content-Type: binary/octet-stream+trie` /
//! `+tree`), and folded stacks otherwise.
//!
//! Success is 200 with an empty body; errors are JSON `{"code","message"}`:
//! 400 bad `name` or time (and invalid text profiles), 408 a body that did
//! not arrive (in time), 413 body over the limit, 422 a pprof, JFR,
//! speedscope, trie or tree body that cannot be read or fails validation,
//! 429 limits, 5xx when no quorum.

mod jfr;
mod pprof;
mod speedscope;
mod text;

use std::collections::HashMap;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use std::sync::Arc;

use flamedb_api::{BodyError, ErrorCode, RpcError, Tenancy};
use flamedb_model::budget::{RequestBudget, allocation_size};
use flamedb_model::{IngestName, Labels, attime, now_nanos, parse_ingest_name};

use crate::batch::{BatchError, PushBatch, Rejection};
use crate::distributor::{Distributor, PushError};
use flamedb_model::tree_formats::{self, TreeFormat};

const DEFAULT_SAMPLE_RATE: u32 = 100;
/// The sample rate of values in nanoseconds (a period of 1 ns).
const NANOS_PER_SECOND: u32 = 1_000_000_000;
/// Labels of `name` that start with `__` are dropped, except this one.
const SESSION_ID: &str = "__session_id__";

#[derive(Clone)]
struct IngestState {
    distributor: Distributor,
    tenancy: Tenancy,
}

pub(crate) fn routes(distributor: Distributor, tenancy: Tenancy) -> Router {
    Router::new()
        .route("/ingest", post(ingest))
        .route("/pyroscope/ingest", post(ingest))
        .with_state(IngestState { distributor, tenancy })
        // The tenant's own body limit applies (413), not axum's default.
        .layer(DefaultBodyLimit::disable())
}

/// How the body is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Folded,
    Lines,
    Pprof,
    Multipart,
    Speedscope,
    /// Raw JFR, or multipart `jfr` + `labels`.
    Jfr,
    Trie,
    Tree,
}

fn format(params: &HashMap<String, String>, headers: &HeaderMap) -> Format {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let format = params.get("format").map(String::as_str).unwrap_or_default();
    // Pyroscope's order: the binary formats first, by parameter or type.
    if format == "trie" || content_type.contains("binary/octet-stream+trie") {
        return Format::Trie;
    }
    if format == "tree" || content_type.contains("binary/octet-stream+tree") {
        return Format::Tree;
    }
    match format {
        "pprof" => Format::Pprof,
        "lines" => Format::Lines,
        "speedscope" => Format::Speedscope,
        "jfr" => Format::Jfr,
        _ if is_multipart(headers) => Format::Multipart,
        _ => Format::Folded,
    }
}

fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|content_type| content_type.contains("multipart/form-data"))
}

async fn ingest(
    State(state): State<IngestState>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match handle(&state, &params, &headers, body).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(err) => err.into_response(),
    }
}

async fn handle(
    state: &IngestState,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(), RpcError> {
    // In flight until answered (the slot); the budget is shared with
    // work that outlives the answer.
    let admitted = state.distributor.admission().admit()?;
    let budget = admitted.budget;
    let tenant = state.tenancy.tenant(headers)?;
    let tenant = tenant.as_str();
    let request = IngestRequest::parse(params)?;
    let format = format(params, headers);
    let limits = state.distributor.limits(tenant);
    let body = read_body(body, limits.ingestion_body_limit_bytes(), headers, &budget).await?;
    if request
        .name
        .labels
        .iter()
        .any(|label| label.name == "profile_id" && !label.value.is_empty())
    {
        // Pyroscope drops these silently (span profiles of old agents).
        return Ok(());
    }
    let distributor = &state.distributor;
    match format {
        Format::Folded | Format::Lines | Format::Speedscope | Format::Trie | Format::Tree => {
            // The body becomes a pprof at least as large (a trie or tree
            // may grow further, within its parser's budget): the profile
            // size limit bounds it before any parsing.
            let max = limits.max_profile_size_bytes;
            if max != 0 && body.len() > max {
                return Err(RpcError::invalid_argument(format!(
                    "the profile of {} ({} bytes) is larger than max_profile_size_bytes ({max} bytes)",
                    request.name.app_name,
                    body.len()
                )));
            }
            let prepared = distributor
                .prepare(tenant, budget, move |batch| match format {
                    Format::Speedscope => add_speedscope(batch, &request, &body),
                    Format::Trie => add_tree_format(batch, &request, &body, TreeFormat::Trie),
                    Format::Tree => add_tree_format(batch, &request, &body, TreeFormat::Tree),
                    _ => add_text(batch, &request, &body, format),
                })
                .await?;
            distributor.store(prepared).await.map(|_| ()).map_err(RpcError::from)
        }
        Format::Jfr => {
            let (jfr, labels) = if is_multipart(headers) {
                let form = read_multipart(headers, body, &budget).await?;
                let jfr = form.jfr.ok_or_else(|| {
                    RpcError::new(ErrorCode::UnprocessableEntity, "the multipart body has no jfr field")
                })?;
                (jfr, form.labels)
            } else {
                (body, None)
            };
            let prepared = distributor
                .prepare(tenant, budget, move |batch| {
                    jfr::add_jfr(batch, &request, &jfr, labels.as_deref())
                })
                .await?;
            distributor.store(prepared).await.map(|_| ()).map_err(pprof_error)
        }
        Format::Pprof => {
            let prepared = distributor
                .prepare(tenant, budget, move |batch| add_pprof(batch, &request, &body, None))
                .await?;
            distributor.store(prepared).await.map(|_| ()).map_err(pprof_error)
        }
        Format::Multipart => {
            let form = read_multipart(headers, body, &budget).await?;
            if form.prev_profile.as_ref().is_some_and(|prev| !prev.is_empty()) {
                return Err(RpcError::new(
                    ErrorCode::UnprocessableEntity,
                    "prev_profile is not supported (cumulative profiles of old Go agents): update github.com/grafana/pyroscope-go",
                ));
            }
            let Some(profile) = form.profile.filter(|profile| !profile.is_empty()) else {
                // An empty profile field: nothing to store.
                return Ok(());
            };
            let config = match &form.sample_type_config {
                Some(json) => Some(serde_json::from_slice::<pprof::SampleTypeConfig>(json).map_err(|err| {
                    RpcError::new(
                        ErrorCode::UnprocessableEntity,
                        format!("sample_type_config is not valid JSON of sample type settings: {err}"),
                    )
                })?),
                None => None,
            };
            let prepared = distributor
                .prepare(tenant, budget, move |batch| {
                    add_pprof(batch, &request, &profile, config.as_ref())
                })
                .await?;
            distributor.store(prepared).await.map(|_| ()).map_err(pprof_error)
        }
    }
}

/// Parses folded stacks or lines sent to `/ingest` into a profile of the
/// type the name's suffix gives, added under the labels of the request.
fn add_text(batch: &mut PushBatch, request: &IngestRequest, body: &[u8], format: Format) -> Result<(), RpcError> {
    // The parsed stacks, before they are parsed: at most a frame (16
    // bytes) per 2 bytes of text, twice as the vectors grow.
    batch
        .budget()
        .charge(body.len().saturating_mul(16), "the stacks of the text profile")?;
    let text = std::str::from_utf8(body)
        .map_err(|err| RpcError::invalid_argument(format!("the body is not UTF-8 text: {err}")))?;
    let stacks = if format == Format::Lines {
        text::parse_lines(text)
    } else {
        text::parse_folded(text).map_err(|err| RpcError::new(ErrorCode::UnprocessableEntity, err.to_string()))?
    };
    let kind = text::profile_type(&request.name.app_name).map_err(|err| RpcError::invalid_argument(err.to_string()))?;
    let budget = Arc::clone(batch.budget());
    let profile = text::build_profile(&stacks, &kind, request.sample_rate, request.from, request.until, budget)?;
    let labels = request.labels(kind.metric, &kind.app_name);
    batch.add(labels, profile, body.len())?;
    Ok(())
}

/// Parses the trie or tree of an old agent into a profile of the type the
/// name's suffix gives, added under the labels of the request.
fn add_tree_format(
    batch: &mut PushBatch,
    request: &IngestRequest,
    body: &[u8],
    format: TreeFormat,
) -> Result<(), RpcError> {
    let kind = text::profile_type(&request.name.app_name).map_err(|err| RpcError::invalid_argument(err.to_string()))?;
    // The parser's own stacks (open nodes, the path, key ends): at most 32
    // bytes per node of 4 body bytes, twice as they grow.
    batch
        .budget()
        .charge(body.len().saturating_mul(16), "the parsing of the trie or tree")?;
    let mut builder = text::TextProfileBuilder::new(&kind, request.sample_rate, request.from, request.until)
        .within(Arc::clone(batch.budget()));
    tree_formats::parse(format, body, |frames, value| builder.add(frames, value))
        .map_err(|err| RpcError::new(ErrorCode::UnprocessableEntity, err.to_string()))?;
    let profile = builder.finish()?;
    // The rate limit and the size limit count the profile the body
    // expanded to.
    let bytes = prost::Message::encoded_len(&profile);
    let max = batch.limits.max_profile_size_bytes;
    if max != 0 && bytes > max {
        return Err(RpcError::invalid_argument(format!(
            "the {format} of {} expands to a profile of {bytes} bytes, more than max_profile_size_bytes ({max} bytes)",
            request.name.app_name
        )));
    }
    batch.add(request.labels(kind.metric, &kind.app_name), profile, bytes)?;
    Ok(())
}

/// How many stack frames a speedscope file may expand to, per byte of it
/// (a folded text of the same stacks takes at least 2 bytes per frame).
const SPEEDSCOPE_FRAMES_PER_BYTE: usize = 8;

/// Parses a speedscope file sent to `/ingest`: one profile per speedscope
/// profile name, of the type the name's suffix gives, labelled
/// `profile_name`. Time units make the values nanoseconds unless the
/// request set its own `sampleRate`.
fn add_speedscope(batch: &mut PushBatch, request: &IngestRequest, body: &[u8]) -> Result<(), RpcError> {
    let file = speedscope::parse(
        body,
        body.len().saturating_mul(SPEEDSCOPE_FRAMES_PER_BYTE),
        batch.budget(),
    )
    .map_err(|err| match err {
        speedscope::SpeedscopeError::Budget(err) => err.into(),
        err => RpcError::new(ErrorCode::UnprocessableEntity, err.to_string()),
    })?;
    let kind = text::profile_type(&request.name.app_name).map_err(|err| RpcError::invalid_argument(err.to_string()))?;
    let share = body.len() / file.profiles.len().max(1);
    for profile in &file.profiles {
        let in_nanos = kind.timed
            && request.sample_rate == DEFAULT_SAMPLE_RATE
            && matches!(profile.unit, speedscope::Unit::Time { .. });
        let sample_rate = if in_nanos {
            NANOS_PER_SECOND
        } else {
            request.sample_rate
        };
        let stacks = file.stacks(profile, in_nanos, batch.budget())?;
        let budget = Arc::clone(batch.budget());
        let pprof = text::build_profile(&stacks, &kind, sample_rate, request.from, request.until, budget)?;
        let mut labels = request.labels(kind.metric, &kind.app_name);
        labels.set("profile_name", profile.name.as_str());
        batch.add(labels, pprof, share)?;
    }
    Ok(())
}

/// Decodes a pprof sent to `/ingest`, applies the legacy fix-ups and adds
/// it under the labels of the request; a profile that cannot be decoded
/// becomes a rejection of the batch (422 once pushed).
fn add_pprof(
    batch: &mut PushBatch,
    request: &IngestRequest,
    raw: &[u8],
    config: Option<&pprof::SampleTypeConfig>,
) -> Result<(), RpcError> {
    // The labels are known only after decoding (the metric name comes
    // from the sample types); errors name the application.
    let app = Labels::from_pairs([("service_name", request.name.app_name.as_str())]);
    let bytes = batch.decompress(&app, raw).map_err(decompress_error)?;
    let Some(bytes) = bytes else {
        return Ok(());
    };
    batch
        .budget()
        .charge(flamedb_model::pprof::decoded_size(&bytes), "the decoded pprof profile")?;
    match flamedb_model::pprof::decode_plain(&bytes) {
        Ok(mut profile) => {
            let limits = Arc::clone(&batch.limits);
            let metric = pprof::prepare(
                &mut profile,
                &request.spy_name,
                config,
                request.from,
                &limits,
                batch.budget(),
            )?;
            let labels = request.labels(&metric, &request.name.app_name);
            batch.add(labels, profile, bytes.len())?;
        }
        Err(source) => batch.reject(Rejection::invalid(
            &flamedb_model::ValidationError::from_decode(&app, source),
            bytes.len(),
        )),
    }
    Ok(())
}

/// A request refused while decompressing a pprof or JFR body: over the
/// body limit is invalid input (422, as in Pyroscope), over the memory
/// budget 413 or 429.
fn decompress_error(err: BatchError) -> RpcError {
    match err {
        BatchError::BodyTooLarge { .. } => RpcError::new(ErrorCode::UnprocessableEntity, err.to_string()),
        BatchError::Budget(err) => err.into(),
    }
}

/// pprof errors of `/ingest`: invalid input is 422, as in Pyroscope.
fn pprof_error(err: PushError) -> RpcError {
    let code = if err.code == ErrorCode::InvalidArgument {
        ErrorCode::UnprocessableEntity
    } else {
        err.code
    };
    RpcError::new(code, err.message)
}

/// The body, within the tenant's body limit and charged to the request's
/// budget.
async fn read_body(body: Body, limit: usize, headers: &HeaderMap, budget: &RequestBudget) -> Result<Bytes, RpcError> {
    flamedb_api::read_body(body, limit, headers, budget)
        .await
        .map_err(|err| match err {
            BodyError::TooLarge { limit } => RpcError::new(
                ErrorCode::PayloadTooLarge,
                format!("the request body is larger than ingestion_body_limit_mb ({limit} bytes)"),
            ),
            BodyError::Timeout(timeout) => RpcError::new(ErrorCode::RequestTimeout, timeout.to_string()),
            // The connection broke: 408, as Pyroscope answers.
            BodyError::Broken { message } => RpcError::new(
                ErrorCode::RequestTimeout,
                format!("cannot read the request body: {message}"),
            ),
            BodyError::Budget(err) => err.into(),
        })
}

/// The fields of a multipart `/ingest`.
#[derive(Debug, Default)]
struct Form {
    profile: Option<Bytes>,
    prev_profile: Option<Bytes>,
    sample_type_config: Option<Bytes>,
    jfr: Option<Bytes>,
    labels: Option<Bytes>,
}

async fn read_multipart(headers: &HeaderMap, body: Bytes, budget: &RequestBudget) -> Result<Form, RpcError> {
    // The fields are copied out of the body: at most its size.
    budget.charge(allocation_size(body.len()), "the fields of the multipart body")?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let boundary = multer::parse_boundary(content_type)
        .map_err(|err| RpcError::invalid_argument(format!("multipart Content-Type {content_type:?}: {err}")))?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut form = Form::default();
    let bad = |err: multer::Error| RpcError::new(ErrorCode::UnprocessableEntity, format!("multipart body: {err}"));
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let slot = match field.name() {
            Some("profile") => &mut form.profile,
            Some("prev_profile") => &mut form.prev_profile,
            Some("sample_type_config") => &mut form.sample_type_config,
            Some("jfr") => &mut form.jfr,
            Some("labels") => &mut form.labels,
            _ => continue,
        };
        *slot = Some(field.bytes().await.map_err(bad)?);
    }
    Ok(form)
}

/// The query parameters of one `/ingest`.
#[derive(Debug)]
struct IngestRequest {
    name: IngestName,
    from: i64,
    until: i64,
    sample_rate: u32,
    spy_name: String,
}

impl IngestRequest {
    fn parse(params: &HashMap<String, String>) -> Result<Self, RpcError> {
        let name = params
            .get("name")
            .ok_or_else(|| RpcError::invalid_argument("the name parameter is required (app.cpu{label=value})"))?;
        let name = parse_ingest_name(name).map_err(|err| RpcError::invalid_argument(err.to_string()))?;
        let now = now_nanos();
        let time = |key: &str| -> Result<i64, RpcError> {
            match params.get(key) {
                Some(value) => {
                    attime::parse(value, now).map_err(|err| RpcError::invalid_argument(format!("{key}: {err}")))
                }
                None => Ok(now),
            }
        };
        // Pyroscope falls back to 100 for a missing or invalid rate.
        let sample_rate = params
            .get("sampleRate")
            .and_then(|rate| rate.parse().ok())
            .unwrap_or(DEFAULT_SAMPLE_RATE);
        Ok(Self {
            from: time("from")?,
            until: time("until")?,
            sample_rate,
            spy_name: params.get("spyName").cloned().unwrap_or_else(|| "unknown".to_owned()),
            name,
        })
    }

    /// The series labels: `__name__`, `__delta__="false"`, the spy, the
    /// labels of `name` (without reserved ones), and `service_name` (or
    /// `app_name` when `name` gave a `service_name`).
    fn labels(&self, metric: &str, app_name: &str) -> Labels {
        let mut labels = Labels::from_pairs([("__name__", metric), ("__delta__", "false")]);
        if !self.spy_name.is_empty() {
            labels.set("pyroscope_spy", self.spy_name.as_str());
        }
        for label in &self.name.labels {
            if !label.name.starts_with("__") || label.name == SESSION_ID {
                labels.set(&label.name, label.value.as_str());
            }
        }
        if labels.get("service_name").is_some() {
            labels.set_if_absent("app_name", app_name);
        } else {
            labels.set("service_name", app_name);
        }
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn test_labels_of_an_ingest_request() {
        let request = IngestRequest::parse(&params(&[
            ("name", "app.cpu{env=prod,__private=x,__session_id__=s1}"),
            ("spyName", "gospy"),
        ]))
        .unwrap();
        let labels = request.labels("process_cpu", "app");
        assert_eq!(
            labels.render(),
            r#"{__delta__="false", __name__="process_cpu", __session_id__="s1", env="prod", pyroscope_spy="gospy", service_name="app"}"#
        );
        let request = IngestRequest::parse(&params(&[("name", "app{service_name=svc}")])).unwrap();
        let labels = request.labels("process_cpu", "app");
        assert_eq!(labels.get("service_name"), Some("svc"));
        assert_eq!(labels.get("app_name"), Some("app"));
        assert_eq!(labels.get("pyroscope_spy"), Some("unknown"));
    }

    #[test]
    fn test_request_parameters() {
        let request = IngestRequest::parse(&params(&[
            ("name", "app"),
            ("from", "1700000000"),
            ("until", "1700000010000"),
            ("sampleRate", "-5"),
        ]))
        .unwrap();
        assert_eq!(request.from, 1_700_000_000_000_000_000);
        assert_eq!(request.until, 1_700_000_010_000_000_000);
        assert_eq!(request.sample_rate, DEFAULT_SAMPLE_RATE);
        assert!(IngestRequest::parse(&params(&[("name", "{env=x}")])).is_err());
        assert!(IngestRequest::parse(&params(&[])).is_err());
        let err = IngestRequest::parse(&params(&[("name", "a"), ("from", "yesterday")])).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
    }

    #[test]
    fn test_format_dispatch() {
        let mut headers = HeaderMap::new();
        assert_eq!(format(&params(&[]), &headers), Format::Folded);
        assert_eq!(format(&params(&[("format", "folded")]), &headers), Format::Folded);
        assert_eq!(format(&params(&[("format", "lines")]), &headers), Format::Lines);
        headers.insert(header::CONTENT_TYPE, "multipart/form-data; boundary=x".parse().unwrap());
        assert_eq!(format(&params(&[]), &headers), Format::Multipart);
        // format=pprof wins over the content type, as in Pyroscope.
        assert_eq!(format(&params(&[("format", "pprof")]), &headers), Format::Pprof);
        assert_eq!(format(&params(&[("format", "tree")]), &headers), Format::Tree);
        assert_eq!(format(&params(&[("format", "jfr")]), &headers), Format::Jfr);
        assert_eq!(
            format(&params(&[("format", "speedscope")]), &headers),
            Format::Speedscope
        );
        // The binary formats win over any other format, as in Pyroscope.
        headers.insert(header::CONTENT_TYPE, "binary/octet-stream+trie".parse().unwrap());
        assert_eq!(format(&params(&[("format", "lines")]), &headers), Format::Trie);
    }
}
