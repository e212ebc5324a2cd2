//! flamedb's wire API: the generated protobuf messages (with proto3 JSON),
//! the protocol layer that serves them over HTTP, tenants and error codes.
//!
//! ```text
//!  HTTP :4040 (HTTP/1.1 + h2c)
//!     │  POST /<package.Service>/<Method>
//!     ▼
//!  RpcRouter ── Connect (proto | JSON, gzip) / gRPC / gRPC-Web
//!     │  Tenancy: X-Scope-OrgID → TenantId (401)
//!     ▼
//!  handler(RequestContext, Req) -> Result<Resp, RpcError>
//!                                            │
//!                     ErrorCode ─▶ HTTP status | Connect code | gRPC status
//! ```

mod admission;
mod body;
mod client;
mod convert;
mod error;
mod rpc;
mod tenant;

/// Generated protobuf messages, one module per proto package; tonic
/// clients for every service (`*_client`).
#[allow(clippy::all, clippy::pedantic, missing_docs, missing_debug_implementations)]
pub mod pb {
    pub use flamedb_model::pprof::proto as google;

    pub mod types {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/types.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/types.v1.serde.rs"));
        }
    }
    pub mod push {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/push.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/push.v1.serde.rs"));
        }
    }
    pub mod querier {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/querier.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/querier.v1.serde.rs"));
        }
    }
    pub mod ingester {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/ingester.v1.rs"));
            include!(concat!(env!("OUT_DIR"), "/ingester.v1.serde.rs"));
        }
    }
    /// OTLP profiles (`opentelemetry.proto.*`), as OpenTelemetry
    /// profilers export them.
    pub mod opentelemetry {
        pub mod proto {
            pub mod common {
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.common.v1.rs"));
                    include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.common.v1.serde.rs"));
                }
            }
            pub mod resource {
                pub mod v1 {
                    include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.resource.v1.rs"));
                    include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.resource.v1.serde.rs"));
                }
            }
            pub mod profiles {
                pub mod v1development {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/opentelemetry.proto.profiles.v1development.rs"
                    ));
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/opentelemetry.proto.profiles.v1development.serde.rs"
                    ));
                }
            }
            pub mod collector {
                pub mod profiles {
                    pub mod v1development {
                        include!(concat!(
                            env!("OUT_DIR"),
                            "/opentelemetry.proto.collector.profiles.v1development.rs"
                        ));
                        include!(concat!(
                            env!("OUT_DIR"),
                            "/opentelemetry.proto.collector.profiles.v1development.serde.rs"
                        ));
                    }
                }
            }
        }
    }
}

pub use admission::Admission;
pub use body::{BodyReadTimeout, with_body_read_timeout};
pub use client::{IngesterClients, tenant_request};
pub use convert::{labels_from_pairs, labels_to_pairs, profile_type_to_proto};
pub use error::{ErrorCode, RpcError};
pub use rpc::{BodyError, ProcedureHooks, RequestContext, RpcOptions, RpcRouter, read_body};

/// The in-memory shapes of every wire message, from the compiled-in
/// descriptors: what request bytes decode into is counted with them before
/// decoding. `None` only if the descriptors could not be read, which a
/// test rules out.
pub fn message_shapes() -> Option<&'static flamedb_model::decode_cost::MessageShapes> {
    static SHAPES: std::sync::LazyLock<Option<flamedb_model::decode_cost::MessageShapes>> =
        std::sync::LazyLock::new(|| {
            flamedb_model::decode_cost::MessageShapes::from_descriptor_set(include_bytes!(concat!(
                env!("OUT_DIR"),
                "/api.descriptors.bin"
            )))
            .ok()
        });
    SHAPES.as_ref()
}
pub use tenant::{DEFAULT_TENANT, ORG_ID_HEADER, Tenancy, TenantError, TenantId};
