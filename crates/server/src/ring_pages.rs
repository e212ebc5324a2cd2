//! Operator pages for the rings and gossip: `/ring` (ingesters),
//! `/distributor/ring`, `/compactor/ring` and `/memberlist`. HTML for people, JSON with
//! `Accept: application/json`. `POST` with `forget=<instance>` removes an
//! unhealthy instance from a ring (`force=true` a healthy one too), from
//! the page itself or a tool, never from another site's page.

use std::fmt::Write;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Redirect, Response};
use axum::routing::get;
use flamedb_api::{ErrorCode, RpcError};
use flamedb_ring::{MemberlistStore, RingClient, RingStore, now_ms};
use serde::{Deserialize, Serialize};

use crate::membership::Membership;

/// One ring page: which ring, and the store forgetting goes through.
#[derive(Clone)]
struct RingPage {
    path: &'static str,
    title: &'static str,
    client: RingClient,
    store: Arc<dyn RingStore>,
}

/// The ring pages and `/memberlist` of a process.
pub fn routes(membership: &Membership) -> Router {
    let ingesters = RingPage {
        path: "/ring",
        title: "Ingester ring",
        client: membership.ingester_ring.clone(),
        store: membership.store.clone(),
    };
    let mut router = Router::new().route("/ring", get(show_ring).post(forget).with_state(ingesters));
    let instance_rings = [
        (&membership.distributor_ring, "/distributor/ring", "Distributor ring"),
        (&membership.compactor_ring, "/compactor/ring", "Compactor ring"),
    ];
    for (client, path, title) in instance_rings {
        if let Some(client) = client {
            let page = RingPage {
                path,
                title,
                client: client.clone(),
                store: membership.store.clone(),
            };
            router = router.route(path, get(show_ring).post(forget).with_state(page));
        }
    }
    router.route(
        "/memberlist",
        get(show_memberlist).with_state(membership.gossip.clone()),
    )
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"))
}

#[derive(Debug, Serialize)]
struct RingStatus {
    ring: &'static str,
    now: String,
    heartbeat_timeout_seconds: u64,
    replication_factor: usize,
    shards: Vec<Shard>,
}

/// One instance as the page shows it.
#[derive(Debug, Serialize)]
struct Shard {
    id: String,
    /// The ring state, or `UNHEALTHY` when the heartbeat is stale.
    state: String,
    address: String,
    zone: String,
    /// Last heartbeat, RFC 3339.
    timestamp: String,
    heartbeat_age_seconds: f64,
    registered_timestamp: String,
    num_tokens: usize,
    ownership_percent: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens: Option<Vec<u32>>,
}

#[derive(Debug, Deserialize)]
struct RingQuery {
    #[serde(default)]
    tokens: bool,
}

fn rfc3339(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}

fn ring_status(page: &RingPage, show_tokens: bool) -> RingStatus {
    let ring = page.client.ring();
    let now = now_ms();
    let ownership = ring.ownership();
    let shards = ring
        .instances()
        .iter()
        .zip(ownership)
        .map(|(desc, (_, share))| {
            let healthy = desc.is_heartbeat_healthy(now, ring.heartbeat_timeout());
            Shard {
                id: desc.id.clone(),
                state: if healthy {
                    desc.state.to_string()
                } else {
                    "UNHEALTHY".to_owned()
                },
                address: desc.addr.clone(),
                zone: desc.zone.clone(),
                timestamp: rfc3339(desc.heartbeat_ms),
                heartbeat_age_seconds: desc.heartbeat_age(now).as_secs_f64(),
                registered_timestamp: rfc3339(desc.registered_ms),
                num_tokens: desc.tokens.len(),
                ownership_percent: share * 100.0,
                tokens: show_tokens.then(|| desc.tokens.clone()),
            }
        })
        .collect();
    RingStatus {
        ring: page.client.name(),
        now: rfc3339(now),
        heartbeat_timeout_seconds: ring.heartbeat_timeout().as_secs(),
        replication_factor: ring.config().replication_factor,
        shards,
    }
}

async fn show_ring(State(page): State<RingPage>, Query(query): Query<RingQuery>, headers: HeaderMap) -> Response {
    let status = ring_status(&page, query.tokens);
    if wants_json(&headers) {
        return Json(status).into_response();
    }
    Html(render_ring(&page, &status)).into_response()
}

fn render_ring(page: &RingPage, status: &RingStatus) -> String {
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title>{STYLE}</head><body>\
         <h1>{title}</h1><p>{count} instances · replication factor {rf} · heartbeat timeout {timeout}s · now {now}</p>\
         <table><tr><th>Instance</th><th>State</th><th>Address</th><th>Zone</th><th>Last heartbeat</th>\
         <th>Tokens</th><th>Ownership</th><th></th></tr>",
        title = page.title,
        count = status.shards.len(),
        rf = status.replication_factor,
        timeout = status.heartbeat_timeout_seconds,
        now = escape(&status.now),
    );
    for shard in &status.shards {
        let _ = write!(
            html,
            "<tr class=\"{class}\"><td>{id}</td><td>{state}</td><td>{address}</td><td>{zone}</td>\
             <td>{age:.1}s ago</td><td>{tokens}</td><td>{ownership:.1}%</td><td><form method=\"post\" \
             action=\"{path}\"><input type=\"hidden\" name=\"forget\" value=\"{id}\">{force}<button type=\"submit\">\
             {label}</button></form></td></tr>",
            class = if shard.state == "UNHEALTHY" { "unhealthy" } else { "" },
            force = if shard.state == "UNHEALTHY" {
                ""
            } else {
                "<input type=\"hidden\" name=\"force\" value=\"true\">"
            },
            label = if shard.state == "UNHEALTHY" {
                "Forget"
            } else {
                "Forget (healthy: it may register again)"
            },
            id = escape(&shard.id),
            state = escape(&shard.state),
            address = escape(&shard.address),
            zone = escape(&shard.zone),
            age = shard.heartbeat_age_seconds,
            tokens = shard.num_tokens,
            ownership = shard.ownership_percent,
            path = page.path,
        );
    }
    html.push_str(
        "</table><p><a href=\"?tokens=true\">Show tokens (JSON: Accept: application/json)</a></p></body></html>",
    );
    html
}

#[derive(Debug, Deserialize)]
struct ForgetForm {
    forget: String,
    /// Forget a healthy instance too (it registers again at its next
    /// heartbeat if it is alive).
    #[serde(default)]
    force: bool,
}

/// Whether a state-changing request comes from another site's page (a
/// browser says so in `Sec-Fetch-Site` or `Origin`); tools like curl send
/// neither and are let through.
fn cross_site(headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    let Some(origin) = header("origin") else {
        return false;
    };
    let origin_host = origin.split_once("://").map_or(origin, |(_, host)| host);
    header("host").is_none_or(|host| host != origin_host)
}

async fn forget(State(page): State<RingPage>, headers: HeaderMap, Form(form): Form<ForgetForm>) -> Response {
    if cross_site(&headers) {
        return RpcError::new(
            ErrorCode::PermissionDenied,
            "forgetting an instance is only allowed from this server's own page or from a tool, not from another site",
        )
        .into_response();
    }
    let ring = page.client.ring();
    let Some(instance) = ring.instance(&form.forget) else {
        return RpcError::new(
            ErrorCode::NotFound,
            format!("instance {:?} is not in the {} ring", form.forget, page.client.name()),
        )
        .into_response();
    };
    let now = now_ms();
    if !form.force && instance.is_heartbeat_healthy(now, ring.heartbeat_timeout()) {
        return RpcError::new(
            ErrorCode::FailedPrecondition,
            format!(
                "instance {:?} is healthy (last heartbeat {:.1}s ago, timeout {}s): only unhealthy instances are forgotten; send force=true to forget it anyway",
                form.forget,
                instance.heartbeat_age(now).as_secs_f64(),
                ring.heartbeat_timeout().as_secs()
            ),
        )
        .into_response();
    }
    if let Err(err) = page.store.forget(page.client.name(), &form.forget).await {
        return RpcError::new(ErrorCode::Internal, err.to_string()).into_response();
    }
    tracing::info!(ring = page.client.name(), instance = %form.forget, "instance forgotten by an operator");
    if wants_json(&headers) {
        return (StatusCode::OK, Json(serde_json::json!({"forgotten": form.forget}))).into_response();
    }
    Redirect::to(page.path).into_response()
}

async fn show_memberlist(State(gossip): State<Option<Arc<MemberlistStore>>>, headers: HeaderMap) -> Response {
    let Some(gossip) = gossip else {
        let message = "gossip is not used: the rings are kept in this process (-ring.store=inmemory)";
        if wants_json(&headers) {
            return Json(serde_json::json!({"members": [], "message": message})).into_response();
        }
        return Html(format!(
            "<!doctype html><html><body><h1>Memberlist</h1><p>{message}</p></body></html>"
        ))
        .into_response();
    };
    let members = gossip.members().await;
    if wants_json(&headers) {
        return Json(serde_json::json!({ "members": members })).into_response();
    }
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Memberlist</title>{STYLE}</head><body>\
         <h1>Memberlist</h1><p>{} processes known through gossip</p><table><tr><th>Node</th><th>Generation</th>\
         <th>Gossip address</th><th>Status</th><th>Keys</th></tr>",
        members.len()
    );
    for member in &members {
        let _ = write!(
            html,
            "<tr class=\"{class}\"><td>{node}</td><td>{generation}</td><td>{address}</td><td>{status}</td><td>{keys}</td></tr>",
            class = if member.live { "" } else { "unhealthy" },
            node = escape(&member.node),
            generation = member.generation,
            address = member.address,
            status = if member.live { "live" } else { "dead" },
            keys = member.keys,
        );
    }
    html.push_str("</table></body></html>");
    Html(html).into_response()
}

const STYLE: &str = "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
    td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}tr.unhealthy{background:#fdd}</style>";

fn escape(text: &str) -> String {
    text.chars().fold(String::with_capacity(text.len()), |mut out, c| {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
        out
    })
}
