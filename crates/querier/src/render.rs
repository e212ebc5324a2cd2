//! Pyroscope's legacy HTTP query API, which Grafana Profiles Drilldown and
//! older UIs call: `GET /pyroscope/render` (flamebearer JSON with a
//! timeline), `/pyroscope/render-diff`, `/pyroscope/label-values` and
//! `/pyroscope/label-names`. Times are `attime` (Unix s/ms/µs/ns or
//! `now-1h`); errors are JSON `{"code","message"}`.

use axum::Router;
use axum::extract::{Query, State as AxumState};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flamedb_api::pb::ingester::v1 as ingester;
use flamedb_api::pb::types::v1 as types;
use flamedb_api::{RpcError, Tenancy};
use flamedb_model::{FlameGraph, ProfileType, Tree, attime, now_nanos, to_dot};
use serde_json::{Value, json};

use crate::querier::ListedProfile;
use crate::service::{State, max_nodes, merged, selection};

/// Timeline steps to choose from (s): the smallest that gives at most
/// about 1,500 points.
const STEPS: [i64; 14] = [
    15, 30, 60, 300, 600, 900, 1800, 3600, 10_800, 21_600, 43_200, 86_400, 604_800, 2_592_000,
];

#[derive(Clone)]
struct RenderState {
    state: State,
    tenancy: Tenancy,
}

pub(crate) fn routes(state: State, tenancy: Tenancy) -> Router {
    Router::new()
        .route("/pyroscope/render", get(render))
        .route("/pyroscope/render-diff", get(render_diff))
        .route("/pyroscope/label-values", get(label_values))
        .route("/pyroscope/label-names", get(label_names))
        .with_state(RenderState { state, tenancy })
}

type Params = Vec<(String, String)>;

fn param<'a>(params: &'a Params, names: &[&str]) -> Option<&'a str> {
    params
        .iter()
        .find(|(key, _)| names.contains(&key.as_str()))
        .map(|(_, value)| value.as_str())
}

fn answer(result: Result<Value, RpcError>) -> Response {
    match result {
        Ok(body) => axum::Json(body).into_response(),
        Err(err) => err.into_response(),
    }
}

/// `<profile type>{<matchers>}`: the profile type and the selector.
fn split_query(query: &str) -> Result<(String, String), RpcError> {
    let (profile_type, selector) = match query.find('{') {
        Some(at) => (&query[..at], &query[at..]),
        None => (query, "{}"),
    };
    let profile_type = profile_type.trim();
    if profile_type.is_empty() {
        return Err(RpcError::invalid_argument(format!(
            "query {query:?} names no profile type: write <profile type>{{<matchers>}}"
        )));
    }
    ProfileType::parse(profile_type).map_err(|err| RpcError::invalid_argument(err.to_string()))?;
    Ok((profile_type.to_owned(), selector.to_owned()))
}

/// `from`/`until` (attime; default now) in ms.
fn range(params: &Params, from: &str, until: &str) -> Result<(i64, i64), RpcError> {
    let now = now_nanos();
    let parse = |key: &str| -> Result<i64, RpcError> {
        match param(params, &[key]) {
            Some(text) => attime::parse(text, now)
                .map(|nanos| nanos / 1_000_000)
                .map_err(|err| RpcError::invalid_argument(format!("{key}: {err}"))),
            None => Ok(now / 1_000_000),
        }
    };
    Ok((parse(from)?, parse(until)?))
}

/// `maxNodes` / `max-nodes`; an unreadable value is ignored.
fn requested_nodes(params: &Params) -> Option<i64> {
    param(params, &["maxNodes", "max-nodes"]).and_then(|value| value.parse().ok())
}

/// What the UI shows values in: `units` and `sampleRate` of the metadata.
fn metadata(profile_type: &ProfileType, format: &str) -> Value {
    let units = match profile_type.sample_type.as_str() {
        "inuse_objects" | "alloc_objects" | "goroutine" | "samples" => "objects",
        "cpu" => "samples",
        _ => profile_type.sample_unit.as_str(),
    };
    let sample_rate: i64 = if profile_type.sample_type == "cpu" {
        1_000_000_000
    } else {
        100
    };
    json!({
        "format": format,
        "spyName": "",
        "sampleRate": sample_rate,
        "units": units,
        "name": profile_type.sample_type,
    })
}

fn flamebearer(graph: &FlameGraph) -> Value {
    json!({
        "names": graph.names,
        "levels": graph.levels,
        "numTicks": graph.total,
        "maxSelf": graph.max_self,
    })
}

/// One timeline, as Pyroscope draws it: one sample per step of
/// `[snap(from), snap(until))` (snapped down to the step), each the sum
/// (or, with `average`, the mean) of the totals of the profiles in that
/// step, zero where there are none.
fn timeline<'a>(
    profiles: impl Iterator<Item = &'a ListedProfile>,
    from_ms: i64,
    until_ms: i64,
    step_s: i64,
    average: bool,
) -> Value {
    let step_ms = step_s * 1000;
    let start = from_ms.div_euclid(step_ms) * step_ms;
    let end = until_ms.div_euclid(step_ms) * step_ms;
    let count = usize::try_from((end - start) / step_ms).unwrap_or(0).max(1);
    let mut sums = vec![0i64; count];
    let mut counts = vec![0i64; count];
    for profile in profiles {
        let Ok(index) = usize::try_from((profile.time_ms - start).div_euclid(step_ms)) else {
            continue;
        };
        if index < count {
            sums[index] = sums[index].saturating_add(profile.total);
            counts[index] += 1;
        }
    }
    if average {
        for (sum, count) in sums.iter_mut().zip(counts) {
            if count > 0 {
                *sum /= count;
            }
        }
    }
    json!({
        "startTime": start / 1000,
        "samples": sums,
        "durationDelta": step_s,
        "watermarks": null,
    })
}

fn step_seconds(from_ms: i64, until_ms: i64) -> i64 {
    let raw = (until_ms - from_ms).max(0) / 1000 / 1500;
    STEPS
        .into_iter()
        .find(|&step| step >= raw)
        .unwrap_or(STEPS[STEPS.len() - 1])
}

async fn render(
    AxumState(render): AxumState<RenderState>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Response {
    if param(&params, &["format"]) == Some("dot") {
        return match render_dot(&render, &params, &headers).await {
            Ok(dot) => ([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], dot).into_response(),
            Err(err) => err.into_response(),
        };
    }
    answer(render_json(&render, &params, &headers).await)
}

/// `format=dot`: the call graph of the merged profiles in Graphviz DOT,
/// from a tree of at most 512 nodes, showing `maxNodes` (default 100)
/// functions; an empty body when there is no data.
async fn render_dot(render: &RenderState, params: &Params, headers: &HeaderMap) -> Result<String, RpcError> {
    const SOURCE_NODES: usize = 512;
    const SHOWN_NODES: usize = 100;
    let tenant = render.tenancy.tenant(headers)?;
    let tenant = tenant.as_str();
    let state = &render.state;
    let limits = (state.limits)(tenant);
    let query =
        param(params, &["query"]).ok_or_else(|| RpcError::invalid_argument("the query parameter is required"))?;
    let (profile_type, selector) = split_query(query)?;
    let (from, until) = range(params, "from", "until")?;
    let shown = match requested_nodes(params) {
        Some(nodes) if nodes > 0 => usize::try_from(nodes).unwrap_or(SHOWN_NODES),
        _ => SHOWN_NODES,
    };
    let parsed_type = ProfileType::parse(&profile_type).map_err(|err| RpcError::invalid_argument(err.to_string()))?;
    let Some(selection) = selection(&profile_type, &selector, from, until, &limits)? else {
        return Ok(String::new());
    };
    let tree = state
        .querier
        .merge(tenant, &selection, None, &limits.query_budget())
        .await?;
    crate::service::off_runtime(move || Ok(to_dot(&tree.truncated(SOURCE_NODES)?, shown, &parsed_type.sample_unit)))
        .await
}

async fn render_json(render: &RenderState, params: &Params, headers: &HeaderMap) -> Result<Value, RpcError> {
    let tenant = render.tenancy.tenant(headers)?;
    let tenant = tenant.as_str();
    let state = &render.state;
    let limits = (state.limits)(tenant);
    let query =
        param(params, &["query"]).ok_or_else(|| RpcError::invalid_argument("the query parameter is required"))?;
    let (profile_type, selector) = split_query(query)?;
    let (from, until) = range(params, "from", "until")?;
    let nodes = max_nodes(requested_nodes(params), &limits)?;
    let parsed_type = ProfileType::parse(&profile_type).map_err(|err| RpcError::invalid_argument(err.to_string()))?;
    let Some(selection) = selection(&profile_type, &selector, from, until, &limits)? else {
        return Ok(json!({
            "version": 1,
            "flamebearer": flamebearer(&Tree::new().flame_graph(0)?),
            "metadata": metadata(&parsed_type, "single"),
            "timeline": null,
            "groups": null,
            "heatmap": null,
        }));
    };
    let (tree, profiles) = state
        .querier
        .merge_and_list(tenant, &selection, &limits.query_budget())
        .await?;
    // The range as checked (the lookback cut its start): at most about
    // 1,500 steps.
    let (from, until) = (selection.start, selection.end);
    let step = step_seconds(from, until);
    let average = param(params, &["aggregation"]) == Some("avg");
    let timeline_value = timeline(profiles.iter(), from, until, step, average);
    let groups = match param(params, &["groupBy"]) {
        Some(group_by) => {
            let mut by_value: std::collections::BTreeMap<String, Vec<&ListedProfile>> =
                std::collections::BTreeMap::new();
            for profile in &profiles {
                let value = profile.labels.get(group_by).unwrap_or("*").to_owned();
                by_value.entry(value).or_default().push(profile);
            }
            let groups: serde_json::Map<String, Value> = by_value
                .into_iter()
                .map(|(value, members)| (value, timeline(members.into_iter(), from, until, step, average)))
                .collect();
            Value::Object(groups)
        }
        None => Value::Null,
    };
    let flame_graph = crate::service::off_runtime(move || Ok(tree.flame_graph(nodes)?)).await?;
    Ok(json!({
        "version": 1,
        "flamebearer": flamebearer(&flame_graph),
        "metadata": metadata(&parsed_type, "single"),
        "timeline": timeline_value,
        "groups": groups,
        "heatmap": null,
    }))
}

async fn render_diff(
    AxumState(render): AxumState<RenderState>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Response {
    answer(render_diff_json(&render, &params, &headers).await)
}

async fn render_diff_json(render: &RenderState, params: &Params, headers: &HeaderMap) -> Result<Value, RpcError> {
    let tenant = render.tenancy.tenant(headers)?;
    let tenant = tenant.as_str();
    let state = &render.state;
    let limits = (state.limits)(tenant);
    let side = |query: &str, from: &str, until: &str| -> Result<(String, String, i64, i64), RpcError> {
        let query =
            param(params, &[query]).ok_or_else(|| RpcError::invalid_argument(format!("{query} is required")))?;
        let (profile_type, selector) = split_query(query)?;
        let (from, until) = range(params, from, until)?;
        Ok((profile_type, selector, from, until))
    };
    let left = side("leftQuery", "leftFrom", "leftUntil")?;
    let right = side("rightQuery", "rightFrom", "rightUntil")?;
    if left.0 != right.0 {
        return Err(RpcError::invalid_argument(format!(
            "left and right queries must have the same profile type, got {} and {}",
            left.0, right.0
        )));
    }
    let nodes = max_nodes(requested_nodes(params), &limits)?;
    let left_selection = selection(&left.0, &left.1, left.2, left.3, &limits)?;
    let right_selection = selection(&right.0, &right.1, right.2, right.3, &limits)?;
    // Both sides and their union share one budget.
    let budget = limits.query_budget();
    let (left_tree, right_tree) = futures_util::try_join!(
        merged(state, tenant, left_selection.as_ref(), None, &budget),
        merged(state, tenant, right_selection.as_ref(), None, &budget)
    )?;
    let graph =
        crate::service::off_runtime(move || Ok(Tree::flame_graph_diff(&left_tree, &right_tree, nodes)?)).await?;
    let profile_type = ProfileType::parse(&left.0).map_err(|err| RpcError::invalid_argument(err.to_string()))?;
    Ok(json!({
        "version": 1,
        "flamebearer": {
            "names": graph.names,
            "levels": graph.levels,
            "numTicks": graph.total,
            "maxSelf": graph.max_self,
        },
        "metadata": metadata(&profile_type, "double"),
        "leftTicks": graph.left_ticks,
        "rightTicks": graph.right_ticks,
        "timeline": null,
        "groups": null,
        "heatmap": null,
    }))
}

async fn label_values(
    AxumState(render): AxumState<RenderState>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Response {
    answer(
        async {
            let tenant = render.tenancy.tenant(&headers)?;
            let tenant = tenant.as_str();
            let label = param(&params, &["label"])
                .ok_or_else(|| RpcError::invalid_argument("the label parameter is required"))?;
            let (start, end) = optional_range(&params)?;
            let values = if label == "__name__" {
                // The profile types, as Pyroscope's UI expects.
                let request = ingester::ProfileTypesRequest { start, end };
                render
                    .state
                    .querier
                    .profile_types(tenant, request)
                    .await?
                    .into_iter()
                    .map(|profile_type| profile_type.id)
                    .collect()
            } else {
                let request = types::LabelValuesRequest {
                    name: label.to_owned(),
                    matchers: Vec::new(),
                    start,
                    end,
                };
                render.state.querier.label_values(tenant, request).await?
            };
            Ok(json!(values))
        }
        .await,
    )
}

async fn label_names(
    AxumState(render): AxumState<RenderState>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Response {
    answer(
        async {
            let tenant = render.tenancy.tenant(&headers)?;
            let (start, end) = optional_range(&params)?;
            let request = types::LabelNamesRequest {
                matchers: Vec::new(),
                start,
                end,
            };
            Ok(json!(render.state.querier.label_names(tenant.as_str(), request).await?))
        }
        .await,
    )
}

/// `from`/`until` when given (ms), else the whole range the ingesters hold.
fn optional_range(params: &Params) -> Result<(i64, i64), RpcError> {
    if param(params, &["from"]).is_none() && param(params, &["until"]).is_none() {
        return Ok((0, 0));
    }
    range(params, "from", "until")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use flamedb_model::{Labels, ProfileId};

    use super::*;

    #[test]
    fn test_query_splits_into_type_and_selector() {
        assert_eq!(
            split_query(r#"process_cpu:cpu:nanoseconds:cpu:nanoseconds{service_name="a"}"#).unwrap(),
            (
                "process_cpu:cpu:nanoseconds:cpu:nanoseconds".to_owned(),
                r#"{service_name="a"}"#.to_owned()
            )
        );
        assert_eq!(split_query("memory:inuse_space:bytes::").unwrap().1, "{}");
        assert!(split_query(r#"{service_name="a"}"#).is_err());
        assert!(split_query("cpu{}").is_err());
    }

    #[test]
    fn test_timeline_snaps_to_steps_and_fills_zeros() {
        let profile = |time_ms: i64, total: i64| ListedProfile {
            id: ProfileId::default(),
            labels: Arc::new(Labels::default()),
            time_ms,
            total,
        };
        let profiles = [
            profile(100_000, 5),
            profile(110_000, 2),
            profile(131_000, 7),
            profile(134_000, 1),
            profile(150_000, 9),
        ];
        let value = timeline(profiles.iter(), 95_000, 150_000, 15, false);
        assert_eq!(value["startTime"], 90);
        assert_eq!(value["durationDelta"], 15);
        // Steps [90,105) [105,120) [120,135) [135,150): 150 s is past the end.
        assert_eq!(value["samples"], json!([5, 2, 8, 0]));
        let average = timeline(profiles.iter(), 95_000, 150_000, 15, true);
        assert_eq!(average["samples"], json!([5, 2, 4, 0]));
        assert_eq!(step_seconds(0, 3_600_000), 15);
        assert_eq!(step_seconds(0, 24 * 3_600_000), 60);
    }

    #[test]
    fn test_units_as_the_ui_expects() {
        let cpu = ProfileType::parse("process_cpu:cpu:nanoseconds:cpu:nanoseconds").unwrap();
        assert_eq!(metadata(&cpu, "single")["units"], "samples");
        assert_eq!(metadata(&cpu, "single")["sampleRate"], 1_000_000_000);
        let space = ProfileType::parse("memory:inuse_space:bytes:space:bytes").unwrap();
        assert_eq!(metadata(&space, "single")["units"], "bytes");
        assert_eq!(metadata(&space, "single")["sampleRate"], 100);
    }
}
