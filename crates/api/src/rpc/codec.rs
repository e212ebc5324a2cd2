//! Message codecs: binary protobuf and proto3 JSON (camelCase names, 64-bit
//! integers as strings, numbers or strings accepted on input).

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::RpcError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Codec {
    Proto,
    Json,
}

impl Codec {
    pub(super) fn decode<M>(self, bytes: &[u8]) -> Result<M, RpcError>
    where
        M: prost::Message + Default + DeserializeOwned,
    {
        match self {
            Self::Proto => M::decode(bytes)
                .map_err(|err| RpcError::invalid_argument(format!("cannot decode protobuf request: {err}"))),
            Self::Json if bytes.iter().all(u8::is_ascii_whitespace) => Err(RpcError::invalid_argument(
                "cannot decode JSON request: the body is empty; send {} for an empty message",
            )),
            Self::Json => serde_json::from_slice(bytes)
                .map_err(|err| RpcError::invalid_argument(format!("cannot decode JSON request: {err}"))),
        }
    }

    /// What decoding `bytes` as `M` allocates (an upper bound, counted
    /// without decoding).
    pub(super) fn decoded_size<M: prost::Name>(self, bytes: &[u8]) -> usize {
        /// More than any message allocates per byte; only used if the
        /// compiled-in descriptors could not be read (a test rules it out).
        const WORST_CASE_PER_BYTE: usize = 256;
        let name = M::full_name();
        crate::message_shapes()
            .and_then(|shapes| match self {
                Self::Proto => shapes.proto_size(&name, bytes),
                Self::Json => shapes.json_size(&name, bytes),
            })
            .unwrap_or_else(|| bytes.len().saturating_mul(WORST_CASE_PER_BYTE))
    }

    pub(super) fn encode<M>(self, message: &M) -> Result<Bytes, RpcError>
    where
        M: prost::Message + Serialize,
    {
        match self {
            Self::Proto => Ok(message.encode_to_vec().into()),
            Self::Json => serde_json::to_vec(message)
                .map(Bytes::from)
                .map_err(|err| RpcError::internal(format!("cannot encode JSON response: {err}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::types::v1::{LabelValuesRequest, LabelValuesResponse};

    #[test]
    fn test_json_is_proto3_json() {
        let request: LabelValuesRequest = Codec::Json
            .decode(br#"{"name":"service_name","start":"1000","end":2000,"unknownField":1}"#)
            .unwrap();
        assert_eq!(
            (request.name.as_str(), request.start, request.end),
            ("service_name", 1000, 2000)
        );
        let empty: LabelValuesRequest = Codec::Json.decode(b"{}").unwrap();
        assert_eq!(empty, LabelValuesRequest::default());
        assert!(Codec::Json.decode::<LabelValuesRequest>(b"").is_err());
        assert!(
            Codec::Json
                .decode::<LabelValuesRequest>(br#"{"start":"now-1h"}"#)
                .is_err()
        );
        let response = LabelValuesResponse {
            names: vec!["a".into()],
        };
        assert_eq!(&Codec::Json.encode(&response).unwrap()[..], br#"{"names":["a"]}"#);
    }

    #[test]
    fn test_proto_round_trip() {
        let request = LabelValuesRequest {
            name: "x".into(),
            matchers: vec!["{}".into()],
            start: -1,
            end: 5,
        };
        let bytes = Codec::Proto.encode(&request).unwrap();
        assert_eq!(Codec::Proto.decode::<LabelValuesRequest>(&bytes).unwrap(), request);
        assert_eq!(
            Codec::Proto.decode::<LabelValuesRequest>(&[]).unwrap(),
            LabelValuesRequest::default()
        );
        assert!(Codec::Proto.decode::<LabelValuesRequest>(&[0x0a, 0x05]).is_err());
    }
}
