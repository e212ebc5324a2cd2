//! The three wire protocols of a unary call: Connect (the body is the
//! message, `Content-Encoding` compresses it, errors are JSON with a mapped
//! HTTP status), gRPC and gRPC-Web (the body is one length-prefixed frame,
//! the status travels in trailers).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use flamedb_model::budget::RequestBudget;
use http::header::{ACCEPT_ENCODING, ALLOW, CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body::Frame;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use super::codec::Codec;
use crate::error::{ErrorCode, RpcError};

const CONNECT_TIMEOUT_MS: HeaderName = HeaderName::from_static("connect-timeout-ms");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
const GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const ACCEPT_POST: HeaderName = HeaderName::from_static("accept-post");

/// Connect responses smaller than this are not worth compressing.
const MIN_COMPRESSED_RESPONSE_BYTES: usize = 1024;
/// gRPC frame header: a compressed flag and a big-endian u32 length.
const FRAME_HEADER_BYTES: usize = 5;
const TRAILER_FRAME_FLAG: u8 = 0x80;
/// Characters of `grpc-message` that must be percent-encoded.
const GRPC_MESSAGE_ESCAPES: &AsciiSet = &CONTROLS.add(b'%');

const SUPPORTED_CONTENT_TYPES: &str = "application/proto, application/x-protobuf, application/protobuf, application/json, application/grpc, application/grpc+proto, \
     application/grpc+json, application/grpc-web, application/grpc-web+proto, application/grpc-web+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    Connect(Codec),
    Grpc(Codec),
    GrpcWeb(Codec),
}

impl Protocol {
    /// The protocol and codec named by `Content-Type` (parameters such as
    /// `charset` are ignored), or `None` when unsupported.
    pub(super) fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let content_type = headers.get(CONTENT_TYPE)?.to_str().ok()?;
        let media_type = content_type.split(';').next()?.trim().to_ascii_lowercase();
        match media_type.as_str() {
            // The last two are OTLP/HTTP's names for protobuf.
            "application/proto" | "application/x-protobuf" | "application/protobuf" => {
                Some(Self::Connect(Codec::Proto))
            }
            "application/json" => Some(Self::Connect(Codec::Json)),
            "application/grpc" | "application/grpc+proto" => Some(Self::Grpc(Codec::Proto)),
            "application/grpc+json" => Some(Self::Grpc(Codec::Json)),
            "application/grpc-web" | "application/grpc-web+proto" => Some(Self::GrpcWeb(Codec::Proto)),
            "application/grpc-web+json" => Some(Self::GrpcWeb(Codec::Json)),
            _ => None,
        }
    }

    pub(super) fn codec(self) -> Codec {
        match self {
            Self::Connect(codec) | Self::Grpc(codec) | Self::GrpcWeb(codec) => codec,
        }
    }

    /// The caller's timeout: `Connect-Timeout-Ms` (up to 10 digits) or
    /// `grpc-timeout` (up to 8 digits and a unit of H, M, S, m, u, n).
    pub(super) fn timeout(self, headers: &HeaderMap) -> Result<Option<Duration>, RpcError> {
        let (name, parse): (HeaderName, fn(&str) -> Option<Duration>) = match self {
            Self::Connect(_) => (CONNECT_TIMEOUT_MS, parse_connect_timeout),
            Self::Grpc(_) | Self::GrpcWeb(_) => (GRPC_TIMEOUT, parse_grpc_timeout),
        };
        let Some(value) = headers.get(&name) else {
            return Ok(None);
        };
        value
            .to_str()
            .ok()
            .and_then(parse)
            .map(Some)
            .ok_or_else(|| RpcError::invalid_argument(format!("invalid {name} header: {value:?}")))
    }

    /// The request message from the body: decompressed (Connect) or
    /// unframed and decompressed (gRPC), at most `limit` bytes.
    pub(super) fn request_message(
        self,
        headers: &HeaderMap,
        body: Bytes,
        limit: usize,
        budget: &RequestBudget,
    ) -> Result<Bytes, RpcError> {
        match self {
            Self::Connect(_) => {
                let encoding = header_str(headers, &CONTENT_ENCODING).unwrap_or("identity");
                decompress(encoding, body, limit, "Content-Encoding", budget)
            }
            Self::Grpc(_) | Self::GrpcWeb(_) => {
                let (compressed, message) = unframe(body)?;
                if !compressed {
                    return Ok(message);
                }
                match header_str(headers, &GRPC_ENCODING) {
                    None | Some("identity") => Err(RpcError::internal(
                        "the message is flagged compressed but grpc-encoding names no compression",
                    )),
                    Some(encoding) => decompress(encoding, message, limit, "grpc-encoding", budget),
                }
            }
        }
    }

    /// The HTTP response for the call's outcome.
    pub(super) fn respond(self, request_headers: &HeaderMap, outcome: Result<Bytes, RpcError>) -> Response {
        match self {
            Self::Connect(codec) => match outcome {
                Ok(message) => connect_response(codec, request_headers, message),
                Err(err) => err.into_response(),
            },
            Self::Grpc(codec) | Self::GrpcWeb(codec) => {
                let web = matches!(self, Self::GrpcWeb(_));
                let content_type = match (web, codec) {
                    (false, Codec::Proto) => "application/grpc+proto",
                    (false, Codec::Json) => "application/grpc+json",
                    (true, Codec::Proto) => "application/grpc-web+proto",
                    (true, Codec::Json) => "application/grpc-web+json",
                };
                grpc_response(content_type, web, outcome)
            }
        }
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok()).map(str::trim)
}

fn parse_connect_timeout(value: &str) -> Option<Duration> {
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().map(Duration::from_millis)
}

fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    match unit {
        "H" => Some(Duration::from_secs(amount * 3600)),
        "M" => Some(Duration::from_secs(amount * 60)),
        "S" => Some(Duration::from_secs(amount)),
        "m" => Some(Duration::from_millis(amount)),
        "u" => Some(Duration::from_micros(amount)),
        "n" => Some(Duration::from_nanos(amount)),
        _ => None,
    }
}

fn decompress(
    encoding: &str,
    body: Bytes,
    limit: usize,
    header: &str,
    budget: &RequestBudget,
) -> Result<Bytes, RpcError> {
    use flamedb_model::gzip::GzipError;
    match encoding.to_ascii_lowercase().as_str() {
        "identity" | "" => Ok(body),
        "gzip" => flamedb_model::gzip::gunzip_within(&body, limit, budget)
            .map(Bytes::from)
            .map_err(|err| match err {
                GzipError::TooLarge { limit } => RpcError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("decompressed request is larger than the limit of {limit} bytes"),
                ),
                invalid @ GzipError::Invalid { .. } => {
                    RpcError::invalid_argument(format!("cannot decompress request: {invalid}"))
                }
                GzipError::Budget(err) => err.into(),
            }),
        other => Err(RpcError::new(
            ErrorCode::Unimplemented,
            format!("unsupported {header} {other:?}; supported are gzip and identity"),
        )),
    }
}

/// Splits the single message frame of a unary gRPC request.
fn unframe(mut body: Bytes) -> Result<(bool, Bytes), RpcError> {
    if body.len() < FRAME_HEADER_BYTES {
        return Err(RpcError::invalid_argument(format!(
            "gRPC request body of {} bytes holds no message frame",
            body.len()
        )));
    }
    let header = body.split_to(FRAME_HEADER_BYTES);
    let compressed = match header[0] {
        0 => false,
        1 => true,
        flags => {
            return Err(RpcError::invalid_argument(format!(
                "invalid gRPC frame flags {flags:#04x}"
            )));
        }
    };
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if body.len() != length {
        return Err(RpcError::invalid_argument(format!(
            "gRPC frame announces {length} bytes but the unary request holds {} after its header",
            body.len()
        )));
    }
    Ok((compressed, body))
}

fn frame(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(FRAME_HEADER_BYTES + payload.len());
    out.put_u8(flags);
    out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    out.put_slice(payload);
    out.freeze()
}

fn connect_response(codec: Codec, request_headers: &HeaderMap, message: Bytes) -> Response {
    let content_type = match codec {
        // Answered in the protobuf media type the request named.
        Codec::Proto => {
            let request_type = header_str(request_headers, &CONTENT_TYPE)
                .unwrap_or_default()
                .to_ascii_lowercase();
            if request_type.starts_with("application/x-protobuf") {
                "application/x-protobuf"
            } else if request_type.starts_with("application/protobuf") {
                "application/protobuf"
            } else {
                "application/proto"
            }
        }
        Codec::Json => "application/json",
    };
    let gzip_accepted = header_str(request_headers, &ACCEPT_ENCODING).is_some_and(accepts_gzip);
    if gzip_accepted && message.len() >= MIN_COMPRESSED_RESPONSE_BYTES {
        let compressed = flamedb_model::gzip::gzip(&message);
        return (
            StatusCode::OK,
            [(CONTENT_TYPE, content_type), (CONTENT_ENCODING, "gzip")],
            compressed,
        )
            .into_response();
    }
    (StatusCode::OK, [(CONTENT_TYPE, content_type)], message).into_response()
}

/// Returns whether an `Accept-Encoding` value accepts gzip (`q=0` refuses).
fn accepts_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|encoding| {
        let mut parts = encoding.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let refused = parts.any(|parameter| {
            parameter
                .strip_prefix("q=")
                .and_then(|quality| quality.parse::<f32>().ok())
                .is_some_and(|quality| quality <= 0.0)
        });
        (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
    })
}

fn grpc_status_headers(outcome: &Result<Bytes, RpcError>) -> HeaderMap {
    let (code, message) = match outcome {
        Ok(_) => (0, None),
        Err(err) => (err.code.grpc_code(), Some(err.message.as_str())),
    };
    let mut headers = HeaderMap::new();
    headers.insert(GRPC_STATUS, HeaderValue::from(code));
    if let Some(message) = message {
        let encoded = utf8_percent_encode(message, GRPC_MESSAGE_ESCAPES).to_string();
        if let Ok(value) = HeaderValue::from_str(&encoded) {
            headers.insert(GRPC_MESSAGE, value);
        }
    }
    headers
}

fn grpc_response(content_type: &'static str, web: bool, outcome: Result<Bytes, RpcError>) -> Response {
    let status = grpc_status_headers(&outcome);
    let body = match outcome {
        // Errors are "trailers-only": the status rides in the headers.
        Err(_) => {
            let mut response = (StatusCode::OK, [(CONTENT_TYPE, content_type)]).into_response();
            response.headers_mut().extend(status);
            return response;
        }
        Ok(message) if web => {
            let mut trailers = Vec::new();
            for (name, value) in &status {
                trailers.extend_from_slice(name.as_str().as_bytes());
                trailers.push(b':');
                trailers.extend_from_slice(value.as_bytes());
                trailers.extend_from_slice(b"\r\n");
            }
            let mut body = BytesMut::from(&frame(0, &message)[..]);
            body.extend_from_slice(&frame(TRAILER_FRAME_FLAG, &trailers));
            Body::from(body.freeze())
        }
        Ok(message) => Body::new(UnaryGrpcBody {
            message: Some(frame(0, &message)),
            trailers: Some(status),
        }),
    };
    (StatusCode::OK, [(CONTENT_TYPE, content_type)], body).into_response()
}

/// A response body of one data frame followed by HTTP/2 trailers.
struct UnaryGrpcBody {
    message: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for UnaryGrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(message) = this.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        Poll::Ready(this.trailers.take().map(|trailers| Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && self.trailers.is_none()
    }
}

/// 405: unary procedures take POST only.
pub(super) fn method_not_allowed() -> Response {
    let err = RpcError::new(ErrorCode::Unimplemented, "method not allowed: use POST");
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(ALLOW, "POST"), (CONTENT_TYPE, "application/json")],
        err.to_json(),
    )
        .into_response()
}

/// 415 with the media types that are served.
pub(super) fn unsupported_media_type(headers: &HeaderMap) -> Response {
    let given = header_str(headers, &CONTENT_TYPE).unwrap_or("none");
    let err = RpcError::new(
        ErrorCode::Unimplemented,
        format!("unsupported content type {given:?}; supported are {SUPPORTED_CONTENT_TYPES}"),
    );
    (
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        [
            (ACCEPT_POST, SUPPORTED_CONTENT_TYPES),
            (CONTENT_TYPE, "application/json"),
        ],
        err.to_json(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (HeaderName::from_static(name), HeaderValue::from_static(value)))
            .collect()
    }

    #[test]
    fn test_protocol_from_content_type() {
        let protocol = |content_type| Protocol::from_headers(&headers(&[("content-type", content_type)]));
        assert_eq!(protocol("application/proto"), Some(Protocol::Connect(Codec::Proto)));
        assert_eq!(
            protocol("application/x-protobuf"),
            Some(Protocol::Connect(Codec::Proto))
        );
        assert_eq!(protocol("application/protobuf"), Some(Protocol::Connect(Codec::Proto)));
        assert_eq!(
            protocol("application/json; charset=utf-8"),
            Some(Protocol::Connect(Codec::Json))
        );
        assert_eq!(protocol("Application/JSON"), Some(Protocol::Connect(Codec::Json)));
        assert_eq!(protocol("application/grpc"), Some(Protocol::Grpc(Codec::Proto)));
        assert_eq!(protocol("application/grpc+json"), Some(Protocol::Grpc(Codec::Json)));
        assert_eq!(
            protocol("application/grpc-web+proto"),
            Some(Protocol::GrpcWeb(Codec::Proto))
        );
        assert_eq!(protocol("text/plain"), None);
        assert_eq!(protocol("application/grpc-web-text"), None);
        assert_eq!(Protocol::from_headers(&HeaderMap::new()), None);
    }

    #[test]
    fn test_timeouts() {
        let connect = Protocol::Connect(Codec::Proto);
        let grpc = Protocol::Grpc(Codec::Proto);
        assert_eq!(connect.timeout(&headers(&[])).unwrap(), None);
        assert_eq!(
            connect.timeout(&headers(&[("connect-timeout-ms", "1500")])).unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert!(
            connect
                .timeout(&headers(&[("connect-timeout-ms", "12345678901")]))
                .is_err()
        );
        assert!(connect.timeout(&headers(&[("connect-timeout-ms", "-1")])).is_err());
        assert_eq!(
            grpc.timeout(&headers(&[("grpc-timeout", "2S")])).unwrap(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            grpc.timeout(&headers(&[("grpc-timeout", "99999999m")])).unwrap(),
            Some(Duration::from_millis(99_999_999))
        );
        for bad in ["", "S", "1", "1x", "123456789S"] {
            let mut map = HeaderMap::new();
            map.insert(GRPC_TIMEOUT, HeaderValue::from_str(bad).unwrap());
            assert!(grpc.timeout(&map).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn test_protobuf_is_answered_in_the_media_type_asked() {
        let content_type = |request_type| {
            let request = headers(&[("content-type", request_type)]);
            connect_response(Codec::Proto, &request, Bytes::new()).headers()[CONTENT_TYPE].clone()
        };
        assert_eq!(content_type("application/proto"), "application/proto");
        assert_eq!(content_type("application/x-protobuf"), "application/x-protobuf");
        assert_eq!(content_type("application/protobuf"), "application/protobuf");
        assert_eq!(content_type("Application/X-Protobuf"), "application/x-protobuf");
    }

    #[test]
    fn test_accept_encoding() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("br, GZIP;q=0.5"));
        assert!(accepts_gzip("*"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("gzip; q=0.0, br"));
        assert!(!accepts_gzip("identity"));
    }

    #[test]
    fn test_unframe() {
        assert_eq!(unframe(frame(0, b"abc")).unwrap(), (false, Bytes::from_static(b"abc")));
        assert_eq!(unframe(frame(1, b"")).unwrap(), (true, Bytes::new()));
        assert!(unframe(Bytes::from_static(&[0, 0, 0])).is_err());
        assert!(unframe(Bytes::from_static(&[0, 0, 0, 0, 5, 1])).is_err());
        assert!(unframe(Bytes::from_static(&[2, 0, 0, 0, 0])).is_err());
        let mut two = BytesMut::from(&frame(0, b"a")[..]);
        two.extend_from_slice(&frame(0, b"b"));
        assert!(unframe(two.freeze()).is_err());
    }
}
