//! The ingester's internal API, `ingester.v1.IngesterService`, served by
//! the [`RpcRouter`] (Connect and gRPC) on the internal listener only: its
//! Push trusts the distributor's validation and limits. Distributors push
//! here; queriers read here. The operator endpoint `/ingester/flush` is
//! served on the public listener, POST only.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use bytes::Bytes;
use flamedb_api::pb::ingester::v1 as pb;
use flamedb_api::pb::push::v1::{PushRequest, PushResponse};
use flamedb_api::pb::types::v1 as types;
use flamedb_api::{
    Admission, ErrorCode, RequestContext, RpcError, RpcOptions, RpcRouter, labels_from_pairs, labels_to_pairs,
};
use flamedb_model::budget::RequestBudget;
use flamedb_model::gzip::GzipError;
use flamedb_model::{CompactTree, Labels, ProfileId, Selector, parse_selector};
use flamedb_storage::{BlockError, ProfileKey, ProfileQuery, TimeRange};

use crate::{FlushError, IncomingProfile, Ingester, PushError, QueryError};

const SERVICE: &str = "/ingester.v1.IngesterService";
const DEFAULT_PAGE_SIZE: usize = 65_536;

/// The routes of the ingester service, for the internal listener. Pushes
/// are admitted under `push` (bytes in flight, decoding slots), reads
/// under `queries`, so a flood of one never starves the other.
pub fn internal_routes(ingester: Ingester, push: RpcOptions, queries: RpcOptions) -> axum::Router {
    let admission = Arc::clone(&push.admission);
    let pushes = RpcRouter::new(push).unary(&format!("{SERVICE}/Push"), {
        let ingester = ingester.clone();
        move |ctx, request| self::push(ingester.clone(), Arc::clone(&admission), ctx, request)
    });
    let rpc = RpcRouter::new(queries)
        .unary(&format!("{SERVICE}/LabelNames"), {
            let ingester = ingester.clone();
            move |ctx, request| label_names(ingester.clone(), ctx, request)
        })
        .unary(&format!("{SERVICE}/LabelValues"), {
            let ingester = ingester.clone();
            move |ctx, request| label_values(ingester.clone(), ctx, request)
        })
        .unary(&format!("{SERVICE}/ProfileTypes"), {
            let ingester = ingester.clone();
            move |ctx, request| profile_types(ingester.clone(), ctx, request)
        })
        .unary(&format!("{SERVICE}/Series"), {
            let ingester = ingester.clone();
            move |ctx, request| series(ingester.clone(), ctx, request)
        })
        .unary(&format!("{SERVICE}/GetProfileStats"), {
            let ingester = ingester.clone();
            move |ctx, request| profile_stats(ingester.clone(), ctx, request)
        })
        .unary(&format!("{SERVICE}/SelectProfiles"), {
            let ingester = ingester.clone();
            move |ctx, request| select_profiles(ingester.clone(), ctx, request)
        })
        .unary(&format!("{SERVICE}/SummarizeSeries"), {
            let ingester = ingester.clone();
            move |ctx, request| summarize_series(ingester.clone(), ctx, request)
        })
        .unary(&format!("{SERVICE}/MergeProfiles"), {
            let ingester = ingester.clone();
            move |ctx, request| merge_profiles(ingester.clone(), ctx, request)
        })
        .unary(&format!("{SERVICE}/Flush"), {
            let ingester = ingester.clone();
            move |_, _: pb::FlushRequest| {
                let ingester = ingester.clone();
                async move {
                    ingester.flush().await.map_err(flush_error)?;
                    Ok(pb::FlushResponse {})
                }
            }
        });
    rpc.into_router().merge(pushes.into_router())
}

/// `/ingester/flush`, for the public listener: POST only, so a link
/// followed or a page prefetched never flushes.
pub fn operator_routes(ingester: Ingester) -> axum::Router {
    axum::Router::new().route(
        "/ingester/flush",
        axum::routing::post(flush_endpoint).with_state(ingester),
    )
}

async fn flush_endpoint(axum::extract::State(ingester): axum::extract::State<Ingester>) -> axum::response::Response {
    match ingester.flush().await {
        Ok(report) => (StatusCode::OK, format!("flushed: {} blocks written\n", report.blocks)).into_response(),
        Err(err) => flush_error(err).into_response(),
    }
}

fn flush_error(err: FlushError) -> RpcError {
    let code = match err {
        FlushError::Stopped | FlushError::Failed => ErrorCode::Unavailable,
        FlushError::Block { .. } | FlushError::Wal(_) | FlushError::Snapshots { .. } => ErrorCode::Internal,
    };
    RpcError::new(code, err.to_string())
}

fn push_error(err: PushError) -> RpcError {
    RpcError::new(err.code(), err.to_string())
}

fn query_error(err: QueryError) -> RpcError {
    match err.source {
        BlockError::Budget(err) => err.into(),
        _ => RpcError::internal(err.to_string()),
    }
}

async fn push(
    ingester: Ingester,
    admission: Arc<Admission>,
    ctx: RequestContext,
    request: PushRequest,
) -> Result<PushResponse, RpcError> {
    let tenant = ctx.tenant()?.as_str().to_owned();
    // Refuse before decoding anything when memory is at the ceiling.
    ingester.check_accepting(&tenant).map_err(push_error)?;
    let budget = Arc::clone(ctx.budget());
    let profiles = admission.decode(move || decode_push(request, &budget)).await??;
    ingester.push(&tenant, profiles).await.map_err(push_error)?;
    Ok(PushResponse {})
}

/// Decompresses and decodes the profiles of a push, charging what they
/// decode into to `budget` first.
fn decode_push(request: PushRequest, budget: &RequestBudget) -> Result<Vec<IncomingProfile>, RpcError> {
    let mut profiles = Vec::new();
    for series in request.series {
        let labels = labels_from_pairs(series.labels);
        let label_bytes: usize = labels
            .iter()
            .map(|label| label.name.len() + label.value.len() + 64)
            .sum();
        for sample in series.samples {
            let id = ProfileId::parse(&sample.id).map_err(|err| RpcError::invalid_argument(err.to_string()))?;
            let failed = |err: &dyn std::fmt::Display| format!("profile {id} of series {}: {err}", labels.render());
            let raw = flamedb_model::gzip::gunzip_if_compressed(&sample.raw_profile, 0, budget).map_err(|err| {
                let code = match err {
                    GzipError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
                    GzipError::Invalid { .. } => ErrorCode::InvalidArgument,
                    GzipError::Budget(err) => return RpcError::from(err),
                };
                RpcError::new(code, failed(&err))
            })?;
            // The plain bytes go to the WAL as they came: no copy, no
            // second encoding.
            let pprof = match raw {
                Cow::Owned(plain) => Bytes::from(plain),
                Cow::Borrowed(_) => Bytes::from(sample.raw_profile),
            };
            budget.charge(
                flamedb_model::pprof::decoded_size(&pprof) + 2 * label_bytes,
                "the decoded profiles of the push",
            )?;
            let profile =
                flamedb_model::pprof::decode_plain(&pprof).map_err(|err| RpcError::invalid_argument(failed(&err)))?;
            profiles.push(IncomingProfile::from_decoded(
                labels.clone(),
                id,
                Arc::new(profile),
                pprof,
            ));
        }
    }
    Ok(profiles)
}

fn selectors(matchers: &[String]) -> Result<Vec<Selector>, RpcError> {
    matchers.iter().map(|matcher| selector(matcher)).collect()
}

fn selector(text: &str) -> Result<Selector, RpcError> {
    if text.trim().is_empty() {
        return Ok(Selector::default());
    }
    parse_selector(text).map_err(|err| RpcError::invalid_argument(format!("label selector {text:?}: {err}")))
}

/// `start`/`end` in ms; both 0 means any time.
fn time_range(start: i64, end: i64) -> Result<TimeRange, RpcError> {
    if start == 0 && end == 0 {
        return Ok(TimeRange::ALL);
    }
    if end < start {
        return Err(RpcError::invalid_argument(format!(
            "the time range ends ({end}) before it starts ({start})"
        )));
    }
    Ok(TimeRange {
        start_ms: start,
        end_ms: end,
    })
}

fn query(selection: Option<pb::ProfileSelection>) -> Result<ProfileQuery, RpcError> {
    let selection = selection.ok_or_else(|| RpcError::invalid_argument("selection is required"))?;
    if selection.profile_type_id.is_empty() {
        return Err(RpcError::invalid_argument("selection.profile_type_id is required"));
    }
    Ok(ProfileQuery {
        profile_type: selection.profile_type_id,
        selector: selector(&selection.label_selector)?,
        range: time_range(selection.start, selection.end)?,
        series: None,
    })
}

async fn label_names(
    ingester: Ingester,
    ctx: RequestContext,
    request: types::LabelNamesRequest,
) -> Result<types::LabelNamesResponse, RpcError> {
    let tenant = ctx.tenant()?;
    let names = ingester.label_names(
        tenant.as_str(),
        &selectors(&request.matchers)?,
        time_range(request.start, request.end)?,
    );
    Ok(types::LabelNamesResponse { names })
}

async fn label_values(
    ingester: Ingester,
    ctx: RequestContext,
    request: types::LabelValuesRequest,
) -> Result<types::LabelValuesResponse, RpcError> {
    let tenant = ctx.tenant()?;
    if request.name.is_empty() {
        return Err(RpcError::invalid_argument("name is required"));
    }
    let names = ingester.label_values(
        tenant.as_str(),
        &request.name,
        &selectors(&request.matchers)?,
        time_range(request.start, request.end)?,
    );
    Ok(types::LabelValuesResponse { names })
}

async fn profile_types(
    ingester: Ingester,
    ctx: RequestContext,
    request: pb::ProfileTypesRequest,
) -> Result<pb::ProfileTypesResponse, RpcError> {
    let tenant = ctx.tenant()?;
    let profile_types = ingester
        .profile_types(tenant.as_str(), time_range(request.start, request.end)?)
        .iter()
        .map(flamedb_api::profile_type_to_proto)
        .collect();
    Ok(pb::ProfileTypesResponse { profile_types })
}

async fn series(
    ingester: Ingester,
    ctx: RequestContext,
    request: pb::SeriesRequest,
) -> Result<pb::SeriesResponse, RpcError> {
    let tenant = ctx.tenant()?;
    let labels_set = ingester
        .series(
            tenant.as_str(),
            &selectors(&request.matchers)?,
            &request.label_names,
            time_range(request.start, request.end)?,
        )
        .iter()
        .map(|labels| types::Labels {
            labels: labels_to_pairs(labels),
        })
        .collect();
    Ok(pb::SeriesResponse { labels_set })
}

async fn profile_stats(
    ingester: Ingester,
    ctx: RequestContext,
    _: types::GetProfileStatsRequest,
) -> Result<types::GetProfileStatsResponse, RpcError> {
    let tenant = ctx.tenant()?;
    Ok(match ingester.profile_time_span(tenant.as_str()) {
        Some((oldest, newest)) => types::GetProfileStatsResponse {
            data_ingested: true,
            oldest_profile_time: oldest,
            newest_profile_time: newest,
        },
        None => types::GetProfileStatsResponse {
            data_ingested: false,
            oldest_profile_time: 0,
            newest_profile_time: 0,
        },
    })
}

/// A page token: the last profile's key (time, fingerprint, ID).
fn encode_page_token((time_nanos, fingerprint, id): ProfileKey) -> Vec<u8> {
    let mut token = Vec::with_capacity(32);
    token.extend_from_slice(&time_nanos.to_be_bytes());
    token.extend_from_slice(&fingerprint.to_be_bytes());
    token.extend_from_slice(&id.0);
    token
}

fn decode_page_token(token: &[u8]) -> Result<Option<ProfileKey>, RpcError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || RpcError::invalid_argument("page_token is not one this ingester gave out");
    let (time, rest) = token.split_first_chunk::<8>().ok_or_else(invalid)?;
    let (fingerprint, id) = rest.split_first_chunk::<8>().ok_or_else(invalid)?;
    let id = ProfileId::from_slice(id).ok_or_else(invalid)?;
    Ok(Some((i64::from_be_bytes(*time), u64::from_be_bytes(*fingerprint), id)))
}

async fn select_profiles(
    ingester: Ingester,
    ctx: RequestContext,
    request: pb::SelectProfilesRequest,
) -> Result<pb::SelectProfilesResponse, RpcError> {
    let tenant = ctx.tenant()?.as_str().to_owned();
    let query = query(request.selection)?;
    let after = decode_page_token(&request.page_token)?;
    let page_size = match request.page_size {
        0 => DEFAULT_PAGE_SIZE,
        size => (size as usize).min(DEFAULT_PAGE_SIZE),
    };
    let (page, more) = tokio::task::spawn_blocking(move || ingester.select_profiles(&tenant, &query, after, page_size))
        .await
        .map_err(|err| RpcError::internal(err.to_string()))?
        .map_err(query_error)?;
    let mut response = pb::SelectProfilesResponse::default();
    // Series by label set: colliding fingerprints stay apart.
    let mut series_index: HashMap<Arc<Labels>, u32> = HashMap::new();
    for profile in &page {
        let series = *series_index.entry(profile.labels.clone()).or_insert_with(|| {
            response.series.push(types::Labels {
                labels: labels_to_pairs(&profile.labels),
            });
            response.fingerprints.push(profile.fingerprint);
            (response.fingerprints.len() - 1) as u32
        });
        response.profiles.push(pb::SelectedProfile {
            id: profile.id.0.to_vec(),
            series,
            time_nanos: profile.time_nanos,
            total: profile.total,
        });
    }
    if more && let Some(last) = page.last() {
        response.next_page_token = encode_page_token(last.key());
    }
    Ok(response)
}

async fn summarize_series(
    ingester: Ingester,
    ctx: RequestContext,
    request: pb::SummarizeSeriesRequest,
) -> Result<pb::SummarizeSeriesResponse, RpcError> {
    let tenant = ctx.tenant()?.as_str().to_owned();
    let query = query(request.selection)?;
    let summaries = tokio::task::spawn_blocking(move || ingester.summarize_series(&tenant, &query))
        .await
        .map_err(|err| RpcError::internal(err.to_string()))?
        .map_err(query_error)?;
    Ok(pb::SummarizeSeriesResponse {
        series: summaries
            .into_iter()
            .map(|summary| pb::SeriesSummary {
                fingerprint: summary.fingerprint,
                profiles: summary.profiles,
                id_sum: summary.id_sum.to_be_bytes().to_vec(),
                total: summary.total,
            })
            .collect(),
    })
}

async fn merge_profiles(
    ingester: Ingester,
    ctx: RequestContext,
    request: pb::MergeProfilesRequest,
) -> Result<pb::MergeProfilesResponse, RpcError> {
    let tenant = ctx.tenant()?.as_str().to_owned();
    let mut query = query(request.selection)?;
    if !request.series.is_empty() {
        query.series = Some(Arc::new(request.series.into_iter().collect()));
    }
    let only: Option<HashSet<ProfileId>> = if request.only_listed {
        Some(
            request
                .profile_ids
                .iter()
                .map(|id| {
                    ProfileId::from_slice(id).ok_or_else(|| RpcError::invalid_argument("a profile id is not 16 bytes"))
                })
                .collect::<Result<_, _>>()?,
        )
    } else {
        None
    };
    let spans: Option<HashSet<u64>> = (!request.span_ids.is_empty()).then(|| request.span_ids.into_iter().collect());
    let max_nodes = usize::try_from(request.max_nodes).unwrap_or(0);
    let compact = request.compact;
    tokio::task::spawn_blocking(move || {
        let tree = ingester
            .merge(&tenant, &query, only.as_ref(), spans.as_ref())
            .map_err(query_error)?;
        if !compact {
            return Ok(pb::MergeProfilesResponse {
                tree: tree.encode(max_nodes)?,
                ..Default::default()
            });
        }
        let tree = if max_nodes == 0 {
            tree
        } else {
            tree.truncated(max_nodes)?
        };
        let CompactTree { names, nodes } = tree.into_compact()?;
        Ok(pb::MergeProfilesResponse {
            names,
            nodes,
            ..Default::default()
        })
    })
    .await
    .map_err(|err| RpcError::internal(err.to_string()))?
}
