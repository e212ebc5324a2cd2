//! `querier.v1.QuerierService` over Connect and gRPC: request checks (time
//! range, node limits, selectors) as Pyroscope's front end makes them,
//! then the [`Querier`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use flamedb_api::pb::ingester::v1 as ingester;
use flamedb_api::pb::querier::v1 as pb;
use flamedb_api::pb::types::v1 as types;
use flamedb_api::{RequestContext, RpcError, RpcOptions, RpcRouter, labels_to_pairs};
use flamedb_model::budget::RequestBudget;
use flamedb_model::pprof::Profile;
use flamedb_model::{Limits, ProfileType, TenantLimits, Tree, is_legacy_label_name, now_nanos, parse_selector};

use crate::querier::Querier;
use crate::time_series::{Aggregation, time_series};

const SERVICE: &str = "/querier.v1.QuerierService";
/// The Accept parameter by which clients say they take UTF-8 label names.
const UTF8_LABEL_NAMES: &str = "allow-utf8-labelnames=true";

#[derive(Clone)]
pub(crate) struct State {
    pub(crate) querier: Querier,
    pub(crate) limits: TenantLimits,
}

/// The routes of the querier service and of the legacy HTTP query API.
pub fn routes(querier: Querier, limits: TenantLimits, options: RpcOptions) -> Router {
    let state = State { querier, limits };
    let legacy = crate::render::routes(state.clone(), options.tenancy);
    macro_rules! method {
        ($router:expr, $name:literal, $handler:ident) => {{
            let state = state.clone();
            $router.unary(&format!("{SERVICE}/{}", $name), move |ctx, request| {
                $handler(state.clone(), ctx, request)
            })
        }};
    }
    let router = RpcRouter::new(options);
    let router = method!(router, "ProfileTypes", profile_types);
    let router = method!(router, "LabelNames", label_names);
    let router = method!(router, "LabelValues", label_values);
    let router = method!(router, "Series", series);
    let router = method!(router, "SelectMergeStacktraces", select_merge_stacktraces);
    let router = method!(router, "SelectMergeSpanProfile", select_merge_span_profile);
    let router = method!(router, "SelectMergeProfile", select_merge_profile);
    let router = method!(router, "Diff", diff);
    let router = method!(router, "SelectSeries", select_series);
    let router = method!(router, "GetProfileStats", profile_stats);
    router.into_router().merge(legacy)
}

async fn profile_types(
    state: State,
    ctx: RequestContext,
    request: pb::ProfileTypesRequest,
) -> Result<pb::ProfileTypesResponse, RpcError> {
    let tenant = ctx.tenant()?.as_str();
    let Some((start, end)) = label_range(request.start, request.end, &(state.limits)(tenant))? else {
        return Ok(pb::ProfileTypesResponse::default());
    };
    let request = ingester::ProfileTypesRequest { start, end };
    Ok(pb::ProfileTypesResponse {
        profile_types: state.querier.profile_types(tenant, request).await?,
    })
}

async fn label_names(
    state: State,
    ctx: RequestContext,
    mut request: types::LabelNamesRequest,
) -> Result<types::LabelNamesResponse, RpcError> {
    let tenant = ctx.tenant()?.as_str();
    let Some((start, end)) = label_range(request.start, request.end, &(state.limits)(tenant))? else {
        return Ok(types::LabelNamesResponse::default());
    };
    (request.start, request.end) = (start, end);
    let mut names = state.querier.label_names(tenant, request).await?;
    let utf8 = ctx
        .headers()
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.contains(UTF8_LABEL_NAMES));
    if !utf8 {
        names.retain(|name| is_legacy_label_name(name));
    }
    Ok(types::LabelNamesResponse { names })
}

async fn label_values(
    state: State,
    ctx: RequestContext,
    mut request: types::LabelValuesRequest,
) -> Result<types::LabelValuesResponse, RpcError> {
    let tenant = ctx.tenant()?.as_str();
    if request.name.is_empty() {
        return Err(RpcError::invalid_argument("name is required"));
    }
    let Some((start, end)) = label_range(request.start, request.end, &(state.limits)(tenant))? else {
        return Ok(types::LabelValuesResponse::default());
    };
    (request.start, request.end) = (start, end);
    Ok(types::LabelValuesResponse {
        names: state.querier.label_values(tenant, request).await?,
    })
}

async fn series(state: State, ctx: RequestContext, request: pb::SeriesRequest) -> Result<pb::SeriesResponse, RpcError> {
    let tenant = ctx.tenant()?.as_str();
    let Some((start, end)) = label_range(request.start, request.end, &(state.limits)(tenant))? else {
        return Ok(pb::SeriesResponse::default());
    };
    let request = ingester::SeriesRequest {
        matchers: request.matchers,
        label_names: request.label_names,
        start,
        end,
    };
    let labels_set = state
        .querier
        .series(tenant, request)
        .await?
        .iter()
        .map(|labels| types::Labels {
            labels: labels_to_pairs(labels),
        })
        .collect();
    Ok(pb::SeriesResponse { labels_set })
}

async fn select_merge_stacktraces(
    state: State,
    ctx: RequestContext,
    request: pb::SelectMergeStacktracesRequest,
) -> Result<pb::SelectMergeStacktracesResponse, RpcError> {
    let tenant = ctx.tenant()?.as_str();
    let limits = (state.limits)(tenant);
    let max_nodes = max_nodes(request.max_nodes, &limits)?;
    refuse_unsupported(
        &request.profile_id_selector,
        request.stack_trace_selector.as_ref(),
        &request.trace_id_selector,
    )?;
    let spans = span_ids(&request.span_selector)?;
    let format = pb::ProfileFormat::try_from(request.format).unwrap_or(pb::ProfileFormat::Unspecified);
    if format == pb::ProfileFormat::Dot {
        return Err(RpcError::new(
            flamedb_api::ErrorCode::Unimplemented,
            "format DOT is not supported: ask for FLAMEGRAPH, TREE or PPROF",
        ));
    }
    let selection = selection(
        &request.profile_type_id,
        &request.label_selector,
        request.start,
        request.end,
        &limits,
    )?;
    let tree = merged(&state, tenant, selection.as_ref(), spans, &limits.query_budget()).await?;
    off_runtime(move || {
        Ok(match format {
            pb::ProfileFormat::Tree => pb::SelectMergeStacktracesResponse {
                tree: tree.encode(max_nodes)?,
                ..Default::default()
            },
            pb::ProfileFormat::Pprof => pb::SelectMergeStacktracesResponse {
                pprof: Some(pb::PprofProfile {
                    profile: Some(pprof(&tree, &request.profile_type_id, selection.as_ref(), max_nodes)?),
                }),
                ..Default::default()
            },
            _ => pb::SelectMergeStacktracesResponse {
                flamegraph: Some(flame_graph(&tree, max_nodes)?),
                ..Default::default()
            },
        })
    })
    .await
}

/// The samples of some spans (trace to profiles): a flame graph, or tree
/// bytes with `format` TREE. No span selected is an empty answer.
async fn select_merge_span_profile(
    state: State,
    ctx: RequestContext,
    request: pb::SelectMergeSpanProfileRequest,
) -> Result<pb::SelectMergeSpanProfileResponse, RpcError> {
    let tenant = ctx.tenant()?.as_str();
    let limits = (state.limits)(tenant);
    let max_nodes = max_nodes(request.max_nodes, &limits)?;
    let spans = span_ids(&request.span_selector)?.unwrap_or_default();
    let selection = selection(
        &request.profile_type_id,
        &request.label_selector,
        request.start,
        request.end,
        &limits,
    )?;
    let tree = if spans.is_empty() {
        Tree::new()
    } else {
        merged(&state, tenant, selection.as_ref(), Some(spans), &limits.query_budget()).await?
    };
    let format = pb::ProfileFormat::try_from(request.format).unwrap_or(pb::ProfileFormat::Unspecified);
    off_runtime(move || {
        Ok(match format {
            pb::ProfileFormat::Tree => pb::SelectMergeSpanProfileResponse {
                tree: tree.encode(max_nodes)?,
                ..Default::default()
            },
            _ => pb::SelectMergeSpanProfileResponse {
                flamegraph: Some(flame_graph(&tree, max_nodes)?),
                ..Default::default()
            },
        })
    })
    .await
}

/// The span IDs of a span selector (16 hex digits each, as agents label
/// samples); `None` when it is empty.
fn span_ids(selector: &[String]) -> Result<Option<HashSet<u64>>, RpcError> {
    if selector.is_empty() {
        return Ok(None);
    }
    selector
        .iter()
        .map(|span| {
            let hex = !span.is_empty() && span.len() <= 16 && span.bytes().all(|byte| byte.is_ascii_hexdigit());
            hex.then(|| u64::from_str_radix(span, 16).ok())
                .flatten()
                .ok_or_else(|| {
                    RpcError::invalid_argument(format!(
                        "span_selector: {span:?} is not a span ID (up to 16 hex digits)"
                    ))
                })
        })
        .collect::<Result<HashSet<u64>, RpcError>>()
        .map(Some)
}

/// Runs CPU work (rendering large trees) off the async workers.
pub(crate) async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RpcError> + Send + 'static,
) -> Result<T, RpcError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| RpcError::internal(format!("the query failed: {err}")))?
}

/// The merged tree of a selection (only the samples of `spans`, when
/// given), charged to `budget`; empty when there is none (a range wholly
/// before the lookback limit).
pub(crate) async fn merged(
    state: &State,
    tenant: &str,
    selection: Option<&ingester::ProfileSelection>,
    spans: Option<HashSet<u64>>,
    budget: &Arc<RequestBudget>,
) -> Result<Tree, RpcError> {
    match selection {
        Some(selection) => state.querier.merge(tenant, selection, spans, budget).await,
        None => Ok(Tree::within(Arc::clone(budget))),
    }
}

fn flame_graph(tree: &Tree, max_nodes: usize) -> Result<pb::FlameGraph, RpcError> {
    let graph = tree.flame_graph(max_nodes)?;
    Ok(pb::FlameGraph {
        names: graph.names,
        levels: graph.levels.into_iter().map(|values| pb::Level { values }).collect(),
        total: graph.total,
        max_self: graph.max_self,
    })
}

/// The merged profile as pprof (stamped with the range it covers);
/// `max_nodes` 0 keeps every stack.
fn pprof(
    tree: &Tree,
    profile_type: &str,
    selection: Option<&ingester::ProfileSelection>,
    max_nodes: usize,
) -> Result<Profile, RpcError> {
    let (start_ms, end_ms) = selection.map_or((0, 0), |selection| (selection.start, selection.end));
    let profile_type = ProfileType::parse(profile_type).map_err(|err| RpcError::invalid_argument(err.to_string()))?;
    let truncated;
    let tree = if max_nodes == 0 {
        tree
    } else {
        truncated = tree.truncated(max_nodes)?;
        &truncated
    };
    Ok(tree.to_pprof(
        &profile_type,
        start_ms.saturating_mul(1_000_000),
        end_ms.saturating_sub(start_ms).max(0).saturating_mul(1_000_000),
    )?)
}

/// A pprof of the merged profiles (what Grafana downloads and Profiles
/// Drilldown reads function details from). Node limits apply only when
/// the request sets `max_nodes`.
async fn select_merge_profile(
    state: State,
    ctx: RequestContext,
    request: pb::SelectMergeProfileRequest,
) -> Result<Profile, RpcError> {
    let tenant = ctx.tenant()?.as_str();
    let limits = (state.limits)(tenant);
    let max_nodes = match request.max_nodes {
        None | Some(0) => 0,
        nodes => max_nodes(nodes, &limits)?,
    };
    refuse_unsupported(
        &request.profile_id_selector,
        request.stack_trace_selector.as_ref(),
        &request.trace_id_selector,
    )?;
    let selection = selection(
        &request.profile_type_id,
        &request.label_selector,
        request.start,
        request.end,
        &limits,
    )?;
    let tree = merged(&state, tenant, selection.as_ref(), None, &limits.query_budget()).await?;
    off_runtime(move || pprof(&tree, &request.profile_type_id, selection.as_ref(), max_nodes)).await
}

/// Two selections as one diff flame graph.
async fn diff(state: State, ctx: RequestContext, request: pb::DiffRequest) -> Result<pb::DiffResponse, RpcError> {
    let tenant = ctx.tenant()?.as_str();
    let limits = (state.limits)(tenant);
    let (Some(left), Some(right)) = (request.left, request.right) else {
        return Err(RpcError::invalid_argument("left and right are required"));
    };
    if left.profile_type_id != right.profile_type_id {
        return Err(RpcError::invalid_argument(format!(
            "left and right must select the same profile type, got {:?} and {:?}",
            left.profile_type_id, right.profile_type_id
        )));
    }
    let max_nodes = max_nodes(left.max_nodes.or(right.max_nodes), &limits)?;
    let left_selection = selection(
        &left.profile_type_id,
        &left.label_selector,
        left.start,
        left.end,
        &limits,
    )?;
    let right_selection = selection(
        &right.profile_type_id,
        &right.label_selector,
        right.start,
        right.end,
        &limits,
    )?;
    // Both sides and their union share one budget.
    let budget = limits.query_budget();
    let (left_tree, right_tree) = futures_util::try_join!(
        merged(&state, tenant, left_selection.as_ref(), None, &budget),
        merged(&state, tenant, right_selection.as_ref(), None, &budget)
    )?;
    let graph = off_runtime(move || Ok(Tree::flame_graph_diff(&left_tree, &right_tree, max_nodes)?)).await?;
    Ok(pb::DiffResponse {
        flamegraph: Some(pb::FlameGraphDiff {
            names: graph.names,
            levels: graph.levels.into_iter().map(|values| pb::Level { values }).collect(),
            total: graph.total,
            max_self: graph.max_self,
            left_ticks: graph.left_ticks,
            right_ticks: graph.right_ticks,
        }),
    })
}

async fn select_series(
    state: State,
    ctx: RequestContext,
    request: pb::SelectSeriesRequest,
) -> Result<pb::SelectSeriesResponse, RpcError> {
    let tenant = ctx.tenant()?.as_str();
    let limits = (state.limits)(tenant);
    if !(request.step.is_finite() && request.step > 0.0) {
        return Err(RpcError::invalid_argument(
            "missing step: step (in seconds) must be above 0",
        ));
    }
    refuse_unsupported(&[], request.stack_trace_selector.as_ref(), &[])?;
    // Saturating conversion; a step longer than any range is one point.
    let step_ms = ((request.step * 1000.0) as i64).clamp(1, MAX_STEP_MS);
    let aggregation = match request.aggregation.map(types::TimeSeriesAggregationType::try_from) {
        None | Some(Ok(types::TimeSeriesAggregationType::Sum)) => Aggregation::Sum,
        Some(Ok(types::TimeSeriesAggregationType::Average)) => Aggregation::Average,
        Some(Err(_)) => return Err(RpcError::invalid_argument("unknown aggregation")),
    };
    let limit = match request.limit {
        Some(limit) if limit < 0 => return Err(RpcError::invalid_argument("limit must not be negative")),
        Some(0) | None => None,
        Some(limit) => Some(limit as usize),
    };
    let Some(selection) = selection(
        &request.profile_type_id,
        &request.label_selector,
        request.start,
        request.end,
        &limits,
    )?
    else {
        return Ok(pb::SelectSeriesResponse::default());
    };
    let profiles = state.querier.select_profiles(tenant, &selection).await?;
    let series = time_series(
        &profiles,
        selection.start,
        step_ms,
        &request.group_by,
        aggregation,
        limit,
    )
    .into_iter()
    .map(|series| types::Series {
        labels: labels_to_pairs(&series.labels),
        points: series
            .points
            .into_iter()
            .map(|(timestamp, value)| types::Point {
                value,
                timestamp,
                ..Default::default()
            })
            .collect(),
    })
    .collect();
    Ok(pb::SelectSeriesResponse { series })
}

async fn profile_stats(
    state: State,
    ctx: RequestContext,
    _: types::GetProfileStatsRequest,
) -> Result<types::GetProfileStatsResponse, RpcError> {
    state.querier.profile_stats(ctx.tenant()?.as_str()).await
}

/// Longest SelectSeries step: 10 years.
const MAX_STEP_MS: i64 = 10 * 365 * 24 * 3_600_000;

/// Selectors flamedb does not apply yet: refused rather than ignored, so
/// no one reads a merge of everything as the selection they asked for.
fn refuse_unsupported(
    profile_ids: &[String],
    stack_trace: Option<&types::StackTraceSelector>,
    trace_ids: &[String],
) -> Result<(), RpcError> {
    let stack_trace = stack_trace.is_some_and(|selector| !selector.call_site.is_empty() || selector.go_pgo.is_some());
    let unsupported = [
        ("profile_id_selector", !profile_ids.is_empty()),
        ("stack_trace_selector", stack_trace),
        ("trace_id_selector", !trace_ids.is_empty()),
    ];
    match unsupported.iter().find(|(_, given)| *given) {
        Some((name, _)) => Err(RpcError::new(
            flamedb_api::ErrorCode::Unimplemented,
            format!("{name} is not supported yet"),
        )),
        None => Ok(()),
    }
}

/// The range of a label, series or profile type query: both 0 is any time
/// (the ingesters' data, as in Pyroscope); otherwise checked like a select.
/// `None`: wholly before the lookback limit (an empty answer).
fn label_range(start: i64, end: i64, limits: &Limits) -> Result<Option<(i64, i64)>, RpcError> {
    if start == 0 && end == 0 {
        return Ok(Some((0, 0)));
    }
    time_range(start, end, limits, now_nanos() / 1_000_000)
}

/// The flame graph node limit of a query.
pub(crate) fn max_nodes(requested: Option<i64>, limits: &Limits) -> Result<usize, RpcError> {
    let requested = match requested {
        None | Some(0) => return Ok(limits.max_flamegraph_nodes_default),
        Some(nodes) if nodes < 0 => return Err(RpcError::invalid_argument(format!("max_nodes {nodes} is negative"))),
        Some(nodes) => usize::try_from(nodes).unwrap_or(usize::MAX),
    };
    let max = limits.max_flamegraph_nodes_max;
    if max != 0 && requested > max {
        return Err(RpcError::invalid_argument(format!(
            "max_nodes {requested} is above the limit max_flamegraph_nodes_max ({max})"
        )));
    }
    Ok(requested)
}

/// The checked selection of a query, or `None` when its range is wholly
/// before the lookback limit (the answer is empty).
pub(crate) fn selection(
    profile_type: &str,
    selector: &str,
    start: i64,
    end: i64,
    limits: &Limits,
) -> Result<Option<ingester::ProfileSelection>, RpcError> {
    ProfileType::parse(profile_type).map_err(|err| RpcError::invalid_argument(err.to_string()))?;
    if !selector.trim().is_empty() {
        parse_selector(selector)
            .map_err(|err| RpcError::invalid_argument(format!("label selector {selector:?}: {err}")))?;
    }
    let Some((start, end)) = time_range(start, end, limits, now_nanos() / 1_000_000)? else {
        return Ok(None);
    };
    Ok(Some(ingester::ProfileSelection {
        label_selector: selector.to_owned(),
        profile_type_id: profile_type.to_owned(),
        start,
        end,
    }))
}

/// Checks a query's range (ms) against the limits: `None` when it lies
/// wholly before the lookback limit.
fn time_range(start: i64, end: i64, limits: &Limits, now_ms: i64) -> Result<Option<(i64, i64)>, RpcError> {
    if start == 0 || end == 0 {
        return Err(RpcError::invalid_argument(
            "missing time range in the query: set start and end (ms)",
        ));
    }
    if start > end {
        return Err(RpcError::invalid_argument(format!(
            "the time range ends ({end}) before it starts ({start})"
        )));
    }
    let mut start = start;
    if !limits.max_query_lookback.is_zero() {
        let oldest = now_ms - millis(limits.max_query_lookback);
        if end < oldest {
            return Ok(None);
        }
        start = start.max(oldest);
    }
    if !limits.max_query_length.is_zero() && end.saturating_sub(start) > millis(limits.max_query_length) {
        return Err(RpcError::invalid_argument(format!(
            "the query time range exceeds the limit (max_query_length, actual: {}, limit: {})",
            humanize_ms(end.saturating_sub(start)),
            humanize_ms(millis(limits.max_query_length))
        )));
    }
    Ok(Some((start, end)))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn humanize_ms(ms: i64) -> String {
    format!("{:?}", Duration::from_millis(ms.max(0).unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;
    const HOUR: i64 = 3_600_000;

    #[test]
    fn test_time_range_checks() {
        let limits = Limits::default();
        assert!(
            time_range(0, NOW, &limits, NOW)
                .unwrap_err()
                .message
                .contains("missing time range")
        );
        assert!(time_range(NOW, NOW - 1, &limits, NOW).is_err());
        assert_eq!(
            time_range(NOW - HOUR, NOW, &limits, NOW).unwrap(),
            Some((NOW - HOUR, NOW))
        );
        const DAY: i64 = 24 * HOUR;
        assert!(time_range(NOW - 30 * DAY, NOW, &limits, NOW).is_ok());
        let err = time_range(NOW - 31 * DAY, NOW, &limits, NOW).unwrap_err();
        assert!(err.message.contains("max_query_length"), "{}", err.message);
        // Any age by default; older than a lookback limit: cut, or empty.
        assert_eq!(
            time_range(NOW - 400 * DAY, NOW - 399 * DAY, &limits, NOW).unwrap(),
            Some((NOW - 400 * DAY, NOW - 399 * DAY))
        );
        let limits = Limits {
            max_query_lookback: Duration::from_secs(7 * 24 * 3600),
            ..limits
        };
        assert_eq!(
            time_range(NOW - 200 * HOUR, NOW - 190 * HOUR, &limits, NOW).unwrap(),
            None
        );
        assert_eq!(
            time_range(NOW - 170 * HOUR, NOW - 160 * HOUR, &limits, NOW).unwrap(),
            Some((NOW - 168 * HOUR, NOW - 160 * HOUR))
        );
    }

    #[test]
    fn test_max_nodes_defaults_and_bounds() {
        let limits = Limits::default();
        assert_eq!(max_nodes(None, &limits).unwrap(), 8192);
        assert_eq!(max_nodes(Some(0), &limits).unwrap(), 8192);
        assert_eq!(max_nodes(Some(16), &limits).unwrap(), 16);
        assert!(max_nodes(Some(-1), &limits).is_err());
        assert!(max_nodes(Some(2_000_000), &limits).is_err());
    }
}
