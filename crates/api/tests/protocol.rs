//! The protocol layer driven over real TCP on 127.0.0.1: Connect with proto
//! and JSON, gzip both ways, gRPC (with tonic's client) and gRPC-Web on the
//! same paths and port, the error mapping, 405/415, size limits, timeouts
//! and multitenancy on and off.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flamedb_api::pb::push::v1::pusher_service_client::PusherServiceClient;
use flamedb_api::pb::push::v1::{PushRequest, PushResponse, RawProfileSeries};
use flamedb_api::pb::querier::v1::querier_service_client::QuerierServiceClient;
use flamedb_api::pb::querier::v1::{
    ProfileTypesRequest, ProfileTypesResponse, SelectSeriesRequest, SelectSeriesResponse,
};
use flamedb_api::pb::types::v1::{
    LabelNamesRequest, LabelNamesResponse, LabelPair, LabelValuesRequest, LabelValuesResponse, Point, ProfileType,
    Series,
};
use flamedb_api::{Admission, ErrorCode, RequestContext, RpcError, RpcOptions, RpcRouter, Tenancy};
use flamedb_model::gzip::{gunzip, gzip};
use prost::Message;
use tokio::sync::oneshot;

const MAX_MESSAGE_BYTES: usize = 64 * 1024;
const ERROR_CODES: [(&str, ErrorCode, u16, tonic::Code); 8] = [
    (
        "invalid_argument",
        ErrorCode::InvalidArgument,
        400,
        tonic::Code::InvalidArgument,
    ),
    (
        "resource_exhausted",
        ErrorCode::ResourceExhausted,
        429,
        tonic::Code::ResourceExhausted,
    ),
    ("unavailable", ErrorCode::Unavailable, 503, tonic::Code::Unavailable),
    ("internal", ErrorCode::Internal, 500, tonic::Code::Internal),
    ("unknown", ErrorCode::Unknown, 500, tonic::Code::Unknown),
    ("not_found", ErrorCode::NotFound, 404, tonic::Code::NotFound),
    (
        "permission_denied",
        ErrorCode::PermissionDenied,
        403,
        tonic::Code::PermissionDenied,
    ),
    (
        "unimplemented",
        ErrorCode::Unimplemented,
        501,
        tonic::Code::Unimplemented,
    ),
];

/// A server with test procedures on a free 127.0.0.1 port; stopped on drop.
struct TestServer {
    base: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start(multitenancy_enabled: bool) -> TestServer {
    start_with(multitenancy_enabled, Admission::unlimited(2)).await
}

async fn start_with(multitenancy_enabled: bool, admission: Arc<Admission>) -> TestServer {
    let router = RpcRouter::new(RpcOptions {
        tenancy: Tenancy { multitenancy_enabled },
        max_message_bytes: MAX_MESSAGE_BYTES,
        admission,
    })
    // Echoes the tenant and the requested name.
    .unary(
        "/querier.v1.QuerierService/LabelValues",
        |ctx: RequestContext, request: LabelValuesRequest| async move {
            Ok(LabelValuesResponse {
                names: vec![ctx.tenant()?.to_string(), request.name],
            })
        },
    )
    // Slow: for timeouts.
    .unary(
        "/querier.v1.QuerierService/LabelNames",
        |_ctx: RequestContext, _request: LabelNamesRequest| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(LabelNamesResponse::default())
        },
    )
    // A large response: for response compression.
    .unary(
        "/querier.v1.QuerierService/ProfileTypes",
        |_ctx: RequestContext, _request: ProfileTypesRequest| async move {
            Ok(ProfileTypesResponse {
                profile_types: (0..200)
                    .map(|i| ProfileType {
                        id: format!("process_cpu:cpu:nanoseconds:cpu:nanoseconds{i}"),
                        ..ProfileType::default()
                    })
                    .collect(),
            })
        },
    )
    // int64 fields: for the JSON mapping.
    .unary(
        "/querier.v1.QuerierService/SelectSeries",
        |_ctx: RequestContext, request: SelectSeriesRequest| async move {
            Ok(SelectSeriesResponse {
                series: vec![Series {
                    labels: vec![],
                    points: vec![Point {
                        value: 1.5,
                        timestamp: request.end,
                        ..Point::default()
                    }],
                }],
            })
        },
    )
    // Fails with the code named by the first label's value, if any.
    .unary(
        "/push.v1.PusherService/Push",
        |_ctx: RequestContext, request: PushRequest| async move {
            let code = request
                .series
                .first()
                .and_then(|series| series.labels.first())
                .map(|label| label.value.clone());
            match code.and_then(|code| ERROR_CODES.iter().find(|(name, ..)| *name == code)) {
                Some((name, code, ..)) => Err(RpcError::new(*code, format!("failing with {name} as asked"))),
                None => Ok(PushResponse {}),
            }
        },
    )
    .into_router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    TestServer { base, stop: Some(stop) }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

fn push_with_label(value: &str) -> PushRequest {
    PushRequest {
        series: vec![RawProfileSeries {
            labels: vec![LabelPair {
                name: "code".into(),
                value: value.into(),
            }],
            ..RawProfileSeries::default()
        }],
    }
}

async fn post(
    server: &TestServer,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    post_with(server, path, &[("content-type", content_type)], body).await
}

async fn post_with(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut request = client().post(format!("{}{path}", server.base)).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

async fn json_error(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    (
        status,
        body["code"].as_str().unwrap_or_default().to_owned(),
        body["message"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn test_connect_proto_round_trip() {
    let server = start(false).await;
    let request = LabelValuesRequest {
        name: "service_name".into(),
        ..LabelValuesRequest::default()
    };
    let response = post(
        &server,
        "/querier.v1.QuerierService/LabelValues",
        "application/proto",
        request.encode_to_vec(),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/proto");
    let body = LabelValuesResponse::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(body.names, ["anonymous", "service_name"]);
}

#[tokio::test]
async fn test_connect_json_uses_proto3_json() {
    let server = start(false).await;
    for content_type in ["application/json", "application/json; charset=utf-8"] {
        let response = post(
            &server,
            "/querier.v1.QuerierService/SelectSeries",
            content_type,
            r#"{"profileTypeID":"process_cpu:cpu:nanoseconds:cpu:nanoseconds","start":1000,"end":"2000","step":15}"#,
        )
        .await;
        assert_eq!(response.status(), 200, "{content_type}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            body,
            serde_json::json!({"series": [{"points": [{"value": 1.5, "timestamp": "2000"}]}]})
        );
    }
    // {} is an empty message; an empty body and non-numbers are not.
    let response = post(
        &server,
        "/querier.v1.QuerierService/LabelValues",
        "application/json",
        "{}",
    )
    .await;
    assert_eq!(response.status(), 200);
    for body in ["", r#"{"start":"now-1h"}"#, "{"] {
        let response = post(
            &server,
            "/querier.v1.QuerierService/LabelValues",
            "application/json",
            body,
        )
        .await;
        let (status, code, message) = json_error(response).await;
        assert_eq!(
            (status, code.as_str()),
            (400, "invalid_argument"),
            "{body:?}: {message}"
        );
    }
}

#[tokio::test]
async fn test_connect_gzip_requests_and_responses() {
    let server = start(false).await;
    let request = LabelValuesRequest {
        name: "zipped".into(),
        ..LabelValuesRequest::default()
    };
    let response = post_with(
        &server,
        "/querier.v1.QuerierService/LabelValues",
        &[("content-type", "application/proto"), ("content-encoding", "gzip")],
        gzip(&request.encode_to_vec()),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        LabelValuesResponse::decode(response.bytes().await.unwrap())
            .unwrap()
            .names[1],
        "zipped"
    );

    // Large responses are compressed when the client accepts gzip.
    let response = post_with(
        &server,
        "/querier.v1.QuerierService/ProfileTypes",
        &[
            ("content-type", "application/proto"),
            ("accept-encoding", "br, gzip;q=0.9"),
        ],
        Vec::new(),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let body = gunzip(&response.bytes().await.unwrap(), 0).unwrap();
    assert_eq!(
        ProfileTypesResponse::decode(&body[..]).unwrap().profile_types.len(),
        200
    );
    // ... and not otherwise.
    let response = post(
        &server,
        "/querier.v1.QuerierService/ProfileTypes",
        "application/proto",
        Vec::new(),
    )
    .await;
    assert!(response.headers().get("content-encoding").is_none());
    assert_eq!(
        ProfileTypesResponse::decode(response.bytes().await.unwrap())
            .unwrap()
            .profile_types
            .len(),
        200
    );
}

#[tokio::test]
async fn test_connect_size_limits_and_bad_encodings() {
    let server = start(false).await;
    let path = "/push.v1.PusherService/Push";
    // A gzip bomb: small on the wire, over the limit once decompressed.
    let bomb = gzip(&vec![0u8; 10 * MAX_MESSAGE_BYTES]);
    assert!(bomb.len() < MAX_MESSAGE_BYTES);
    let response = post_with(
        &server,
        path,
        &[("content-type", "application/proto"), ("content-encoding", "gzip")],
        bomb,
    )
    .await;
    let (status, code, message) = json_error(response).await;
    assert_eq!((status, code.as_str()), (413, "resource_exhausted"), "{message}");
    assert!(message.contains(&MAX_MESSAGE_BYTES.to_string()), "{message}");
    // A body over the limit as received.
    let response = post(&server, path, "application/proto", vec![0u8; MAX_MESSAGE_BYTES + 1]).await;
    assert_eq!(json_error(response).await.0, 413);
    // Not gzip at all.
    let response = post_with(
        &server,
        path,
        &[("content-type", "application/proto"), ("content-encoding", "gzip")],
        "plain",
    )
    .await;
    assert_eq!(json_error(response).await.0, 400);
    // An encoding nobody speaks here.
    let response = post_with(
        &server,
        path,
        &[("content-type", "application/proto"), ("content-encoding", "br")],
        Vec::new(),
    )
    .await;
    assert_eq!(json_error(response).await.1, "unimplemented");
    // Not protobuf.
    let response = post(&server, path, "application/proto", vec![0x0a, 0xff]).await;
    assert_eq!(json_error(response).await.0, 400);
}

#[tokio::test]
async fn test_connect_error_mapping() {
    let server = start(false).await;
    for (name, _, status, _) in ERROR_CODES {
        let response = post(
            &server,
            "/push.v1.PusherService/Push",
            "application/proto",
            push_with_label(name).encode_to_vec(),
        )
        .await;
        assert_eq!(response.headers()["content-type"], "application/json");
        let (got_status, code, message) = json_error(response).await;
        assert_eq!((got_status, code.as_str()), (status, name));
        assert_eq!(message, format!("failing with {name} as asked"));
    }
}

#[tokio::test]
async fn test_method_and_content_type_checks() {
    let server = start(false).await;
    let url = format!("{}/push.v1.PusherService/Push", server.base);
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    let response = post(&server, "/push.v1.PusherService/Push", "text/plain", "x").await;
    assert_eq!(response.status(), 415);
    assert!(
        response.headers()["accept-post"]
            .to_str()
            .unwrap()
            .contains("application/proto")
    );
    let response = client().post(&url).body("x").send().await.unwrap();
    assert_eq!(response.status(), 415);
    let response = post(&server, "/push.v1.PusherService/Nope", "application/proto", "").await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn test_connect_timeouts() {
    let server = start(false).await;
    let path = "/querier.v1.QuerierService/LabelNames";
    let response = post_with(
        &server,
        path,
        &[("content-type", "application/json"), ("connect-timeout-ms", "50")],
        "{}",
    )
    .await;
    let (status, code, message) = json_error(response).await;
    assert_eq!((status, code.as_str()), (504, "deadline_exceeded"), "{message}");
    let response = post_with(
        &server,
        path,
        &[("content-type", "application/json"), ("connect-timeout-ms", "soon")],
        "{}",
    )
    .await;
    assert_eq!(json_error(response).await.0, 400);
}

#[tokio::test]
async fn test_multitenancy_on() {
    let server = start(true).await;
    let path = "/querier.v1.QuerierService/LabelValues";
    let body = LabelValuesRequest::default().encode_to_vec();
    let response = post(&server, path, "application/proto", body.clone()).await;
    let (status, code, message) = json_error(response).await;
    assert_eq!((status, code.as_str()), (401, "unauthenticated"));
    assert!(message.contains("X-Scope-OrgID"), "{message}");
    for (org_id, status) in [("team-a", 200), ("bad/tenant", 401), ("a|b", 401)] {
        let headers = [("content-type", "application/proto"), ("x-scope-orgid", org_id)];
        let response = post_with(&server, path, &headers, body.clone()).await;
        assert_eq!(response.status(), status, "{org_id}");
        if status == 200 {
            let names = LabelValuesResponse::decode(response.bytes().await.unwrap())
                .unwrap()
                .names;
            assert_eq!(names[0], org_id);
        }
    }
    // gRPC: Unauthenticated without the header, the tenant with it.
    let mut grpc = QuerierServiceClient::connect(server.base.clone()).await.unwrap();
    let status = grpc.label_values(LabelValuesRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let mut request = tonic::Request::new(LabelValuesRequest::default());
    request
        .metadata_mut()
        .insert("x-scope-orgid", "team-b".parse().unwrap());
    assert_eq!(
        grpc.label_values(request).await.unwrap().into_inner().names[0],
        "team-b"
    );
}

#[tokio::test]
async fn test_multitenancy_off_ignores_the_header() {
    let server = start(false).await;
    let response = post_with(
        &server,
        "/querier.v1.QuerierService/LabelValues",
        &[("content-type", "application/proto"), ("x-scope-orgid", "someone")],
        Vec::new(),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        LabelValuesResponse::decode(response.bytes().await.unwrap())
            .unwrap()
            .names[0],
        "anonymous"
    );
}

#[tokio::test]
async fn test_grpc_on_the_same_path_and_port() {
    let server = start(false).await;
    let mut pusher = PusherServiceClient::connect(server.base.clone()).await.unwrap();
    pusher.push(push_with_label("fine")).await.unwrap();
    for (name, _, _, grpc_code) in ERROR_CODES {
        let status = pusher.push(push_with_label(name)).await.unwrap_err();
        assert_eq!(status.code(), grpc_code, "{name}");
        assert_eq!(status.message(), format!("failing with {name} as asked"));
    }
    // Compressed requests (responses go uncompressed, which gRPC allows).
    let mut querier = QuerierServiceClient::connect(server.base.clone())
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    let names = querier
        .label_values(LabelValuesRequest {
            name: "x".repeat(4096),
            ..LabelValuesRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .names;
    assert_eq!(names[1].len(), 4096);
    // The grpc-timeout header, sent raw: tonic's own client-side timeout
    // would race the server's answer.
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let response = h2
        .post(format!("{}/querier.v1.QuerierService/LabelNames", server.base))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "50m")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "4");
    let message = response.headers()["grpc-message"].to_str().unwrap();
    assert!(message.ends_with("within its timeout of 50ms"), "{message}");
}

#[tokio::test]
async fn test_grpc_web() {
    let server = start(false).await;
    let message = LabelValuesRequest {
        name: "web".into(),
        ..LabelValuesRequest::default()
    }
    .encode_to_vec();
    let mut body = BytesMut::new();
    body.put_u8(0);
    body.put_u32(message.len() as u32);
    body.put_slice(&message);
    let response = post(
        &server,
        "/querier.v1.QuerierService/LabelValues",
        "application/grpc-web+proto",
        body.freeze(),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/grpc-web+proto");
    let mut body: Bytes = response.bytes().await.unwrap();
    let mut frames = Vec::new();
    while body.has_remaining() {
        let flags = body.get_u8();
        let length = body.get_u32() as usize;
        frames.push((flags, body.split_to(length)));
    }
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].0, 0);
    assert_eq!(
        LabelValuesResponse::decode(frames[0].1.clone()).unwrap().names[1],
        "web"
    );
    assert_eq!(frames[1].0, 0x80);
    assert_eq!(&frames[1].1[..], b"grpc-status:0\r\n");
}

/// What a request decodes into is counted before decoding: 20,000 empty
/// series (40 KB on the wire, over 2 MB decoded) get 413 naming the
/// request budget, in proto, JSON and gzip; a small push still passes; a
/// pool with room for no request answers 429 at once.
#[tokio::test]
async fn test_decoded_size_is_charged_before_decoding() {
    use flamedb_model::budget::{BudgetFlags, InflightBudget};

    const FLAGS: BudgetFlags = BudgetFlags {
        request_bytes: "-distributor.max-request-memory",
        inflight_bytes: "-distributor.instance-limits.max-inflight-push-requests-bytes",
        inflight_requests: "-distributor.instance-limits.max-inflight-push-requests",
    };
    let admission = Admission::new(InflightBudget::new(FLAGS, 1 << 20, 0, 0), 1);
    let server = start_with(false, admission).await;
    let empty_series = [0x0a_u8, 0x00].repeat(20_000);
    let json = format!("{{\"series\":[{}{{}}]}}", "{},".repeat(20_000));
    let cases: [(&str, &[(&str, &str)], Vec<u8>); 3] = [
        ("proto", &[("content-type", "application/proto")], empty_series.clone()),
        ("json", &[("content-type", "application/json")], json.into_bytes()),
        (
            "gzip",
            &[("content-type", "application/proto"), ("content-encoding", "gzip")],
            gzip(&empty_series),
        ),
    ];
    for (name, headers, body) in cases {
        let response = post_with(&server, "/push.v1.PusherService/Push", headers, body).await;
        let (status, code, message) = json_error(response).await;
        assert_eq!(
            (status, code.as_str()),
            (413, "resource_exhausted"),
            "{name}: {message}"
        );
        assert!(
            message.contains("-distributor.max-request-memory (1048576 bytes)"),
            "{name}: {message}"
        );
    }
    let small = post(
        &server,
        "/push.v1.PusherService/Push",
        "application/proto",
        push_with_label("fine").encode_to_vec(),
    )
    .await;
    assert_eq!(small.status(), 200);

    // Other requests in flight hold the pool: 429 at once, naming it.
    let busy = Admission::new(InflightBudget::new(FLAGS, 1 << 20, 0, 1 << 20), 1);
    let holder = busy.admit().unwrap();
    holder.budget.charge((1 << 20) - 100, "another request").unwrap();
    let server = start_with(false, Arc::clone(&busy)).await;
    let response = post(
        &server,
        "/push.v1.PusherService/Push",
        "application/proto",
        push_with_label("fine").encode_to_vec(),
    )
    .await;
    let (status, _, message) = json_error(response).await;
    assert_eq!(status, 429, "{message}");
    assert!(
        message.contains("-distributor.instance-limits.max-inflight-push-requests-bytes")
            && message.contains("try again later"),
        "{message}"
    );
    // Once they are done, it goes through.
    drop(holder);
    let response = post(
        &server,
        "/push.v1.PusherService/Push",
        "application/proto",
        push_with_label("fine").encode_to_vec(),
    )
    .await;
    assert_eq!(response.status(), 200);
}

/// Every message the wire knows has a shape, and the shapes' struct sizes
/// bound the real ones.
#[test]
fn test_message_shapes_cover_the_wire() {
    use flamedb_api::pb::opentelemetry::proto::collector::profiles::v1development::ExportProfilesServiceRequest;
    use flamedb_api::pb::opentelemetry::proto::common::v1::{AnyValue, KeyValue};
    use flamedb_api::pb::opentelemetry::proto::profiles::v1development as otlp;
    use flamedb_api::pb::push::v1::RawSample;

    let shapes = flamedb_api::message_shapes().unwrap();
    let cases = [
        ("push.v1.PushRequest", size_of::<PushRequest>()),
        ("push.v1.RawProfileSeries", size_of::<RawProfileSeries>()),
        ("push.v1.RawSample", size_of::<RawSample>()),
        ("types.v1.LabelPair", size_of::<LabelPair>()),
        ("querier.v1.SelectSeriesRequest", size_of::<SelectSeriesRequest>()),
        (
            "opentelemetry.proto.collector.profiles.v1development.ExportProfilesServiceRequest",
            size_of::<ExportProfilesServiceRequest>(),
        ),
        ("opentelemetry.proto.common.v1.KeyValue", size_of::<KeyValue>()),
        ("opentelemetry.proto.common.v1.AnyValue", size_of::<AnyValue>()),
        (
            "opentelemetry.proto.profiles.v1development.Profile",
            size_of::<otlp::Profile>(),
        ),
        (
            "opentelemetry.proto.profiles.v1development.Sample",
            size_of::<otlp::Sample>(),
        ),
        (
            "opentelemetry.proto.profiles.v1development.Location",
            size_of::<otlp::Location>(),
        ),
        ("google.v1.Profile", size_of::<flamedb_api::pb::google::Profile>()),
    ];
    for (name, real) in cases {
        let scanned = shapes
            .struct_size(name)
            .unwrap_or_else(|| panic!("no shape for {name}"));
        assert!(scanned >= real, "{name}: {scanned} < {real}");
    }
}
