//! The one place where failures become wire codes: [`ErrorCode`] maps to
//! the HTTP status, the Connect code name and the gRPC status code, and
//! [`RpcError`] is what every API handler returns.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

/// The outcome class of a failed call. The names and HTTP statuses are the
/// Connect protocol's (the same as connect-go's), plus `PayloadTooLarge`
/// for bodies over a size limit (Connect `resource_exhausted`, HTTP 413)
/// and `UnprocessableEntity` for a legacy `/ingest` pprof that fails
/// validation (Connect `invalid_argument`, HTTP 422, as Pyroscope answers),
/// and `RequestTimeout` for a request body not received in time (Connect
/// `deadline_exceeded`, HTTP 408).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
    PayloadTooLarge,
    UnprocessableEntity,
    RequestTimeout,
}

impl ErrorCode {
    /// The Connect code name, as sent in error bodies.
    pub fn connect_name(self) -> &'static str {
        match self {
            Self::Canceled => "canceled",
            Self::Unknown => "unknown",
            Self::InvalidArgument | Self::UnprocessableEntity => "invalid_argument",
            Self::DeadlineExceeded | Self::RequestTimeout => "deadline_exceeded",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::PermissionDenied => "permission_denied",
            Self::ResourceExhausted | Self::PayloadTooLarge => "resource_exhausted",
            Self::FailedPrecondition => "failed_precondition",
            Self::Aborted => "aborted",
            Self::OutOfRange => "out_of_range",
            Self::Unimplemented => "unimplemented",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
            Self::DataLoss => "data_loss",
            Self::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status of a Connect (or plain HTTP) error response.
    pub fn http_status(self) -> StatusCode {
        match self {
            Self::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Self::Unknown | Self::Internal | Self::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
            Self::InvalidArgument | Self::FailedPrecondition | Self::OutOfRange => StatusCode::BAD_REQUEST,
            Self::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::AlreadyExists | Self::Aborted => StatusCode::CONFLICT,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Self::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnprocessableEntity => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The gRPC status code number.
    pub fn grpc_code(self) -> u32 {
        match self {
            Self::Canceled => 1,
            Self::Unknown => 2,
            Self::InvalidArgument | Self::UnprocessableEntity => 3,
            Self::DeadlineExceeded | Self::RequestTimeout => 4,
            Self::NotFound => 5,
            Self::AlreadyExists => 6,
            Self::PermissionDenied => 7,
            Self::ResourceExhausted | Self::PayloadTooLarge => 8,
            Self::FailedPrecondition => 9,
            Self::Aborted => 10,
            Self::OutOfRange => 11,
            Self::Unimplemented => 12,
            Self::Internal => 13,
            Self::Unavailable => 14,
            Self::DataLoss => 15,
            Self::Unauthenticated => 16,
        }
    }

    /// The code of a gRPC status number (unknown numbers are `Unknown`).
    pub fn from_grpc_code(code: u32) -> Self {
        match code {
            1 => Self::Canceled,
            3 => Self::InvalidArgument,
            4 => Self::DeadlineExceeded,
            5 => Self::NotFound,
            6 => Self::AlreadyExists,
            7 => Self::PermissionDenied,
            8 => Self::ResourceExhausted,
            9 => Self::FailedPrecondition,
            10 => Self::Aborted,
            11 => Self::OutOfRange,
            12 => Self::Unimplemented,
            13 => Self::Internal,
            14 => Self::Unavailable,
            15 => Self::DataLoss,
            16 => Self::Unauthenticated,
            _ => Self::Unknown,
        }
    }
}

/// A failed call: a code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.connect_name())]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The Connect JSON error body, `{"code": "...", "message": "..."}`.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Body<'a> {
            code: &'a str,
            message: &'a str,
        }
        serde_json::to_string(&Body {
            code: self.code.connect_name(),
            message: &self.message,
        })
        .unwrap_or_default()
    }
}

impl From<tonic::Status> for RpcError {
    fn from(status: tonic::Status) -> Self {
        Self::new(
            ErrorCode::from_grpc_code(status.code() as u32),
            status.message().to_owned(),
        )
    }
}

/// A Connect-style JSON error with the mapped HTTP status; used by the
/// Connect protocol and by plain HTTP endpoints alike.
impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        (
            self.code.http_status(),
            [(http::header::CONTENT_TYPE, "application/json")],
            self.to_json(),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorCode; 19] = [
        ErrorCode::Canceled,
        ErrorCode::Unknown,
        ErrorCode::InvalidArgument,
        ErrorCode::DeadlineExceeded,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::PermissionDenied,
        ErrorCode::ResourceExhausted,
        ErrorCode::FailedPrecondition,
        ErrorCode::Aborted,
        ErrorCode::OutOfRange,
        ErrorCode::Unimplemented,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::DataLoss,
        ErrorCode::Unauthenticated,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnprocessableEntity,
        ErrorCode::RequestTimeout,
    ];

    #[test]
    fn test_connect_http_mapping_matches_connect_go() {
        let expected = [
            499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500, 401, 413, 422, 408,
        ];
        for (code, status) in ALL.iter().zip(expected) {
            assert_eq!(code.http_status().as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn test_grpc_codes_round_trip() {
        for code in ALL {
            let back = ErrorCode::from_grpc_code(code.grpc_code());
            let expected = match code {
                ErrorCode::PayloadTooLarge => ErrorCode::ResourceExhausted,
                ErrorCode::UnprocessableEntity => ErrorCode::InvalidArgument,
                ErrorCode::RequestTimeout => ErrorCode::DeadlineExceeded,
                code => code,
            };
            assert_eq!(back, expected);
        }
        assert_eq!(ErrorCode::from_grpc_code(99), ErrorCode::Unknown);
    }

    #[test]
    fn test_error_json_body() {
        let err = RpcError::invalid_argument("bad \"input\"");
        assert_eq!(
            err.to_json(),
            r#"{"code":"invalid_argument","message":"bad \"input\""}"#
        );
    }
}
