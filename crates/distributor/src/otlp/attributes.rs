//! OTLP attributes and links read as labels, as Pyroscope reads them
//! (ADR 018): a key inline or by string-table reference (`key_strindex`);
//! a value that is a string (inline or by reference), an integer (in
//! decimal) or a one-element array of one of those, anything else and
//! empty values dropped. A sample's link becomes its `span_id` and, for a
//! 16-byte trace ID, `trace_id`.

use std::borrow::Cow;

use base64::Engine as _;
use flamedb_api::pb::opentelemetry::proto::common::v1::{AnyValue, KeyValue, any_value};
use flamedb_api::pb::opentelemetry::proto::profiles::v1development as otlp;
use flamedb_model::pprof::to_hex;
use flamedb_model::{SPAN_ID, TRACE_ID};

use super::{ConvertError, entry};

const TRACE_ID_BYTES: usize = 16;
const SPAN_ID_BYTES: usize = 8;

/// An attribute's key: `key`, else the string `key_strindex` names.
pub(super) fn key<'a>(attribute: &'a KeyValue, strings: &'a [String]) -> Result<&'a str, ConvertError> {
    if attribute.key.is_empty() && attribute.key_strindex != 0 {
        return entry(strings, "string", attribute.key_strindex).map(String::as_str);
    }
    Ok(&attribute.key)
}

/// An attribute's value as a label value; `None` when it has no label
/// form or is empty.
pub(super) fn label_value<'a>(
    value: Option<&'a AnyValue>,
    strings: &'a [String],
) -> Result<Option<Cow<'a, str>>, ConvertError> {
    let Some(value) = value.and_then(|value| value.value.as_ref()) else {
        return Ok(None);
    };
    // One level of array only: nothing is read by recursion.
    let value = match value {
        any_value::Value::ArrayValue(array) => match array.values.as_slice() {
            [only] => match only.value.as_ref() {
                Some(any_value::Value::ArrayValue(_)) | None => return Ok(None),
                Some(inner) => inner,
            },
            _ => return Ok(None),
        },
        value => value,
    };
    let text = match value {
        any_value::Value::StringValue(text) => Cow::Borrowed(text.as_str()),
        any_value::Value::StringValueStrindex(index) => Cow::Borrowed(entry(strings, "string", *index)?.as_str()),
        any_value::Value::IntValue(number) => Cow::Owned(number.to_string()),
        _ => return Ok(None),
    };
    Ok((!text.is_empty()).then_some(text))
}

/// The `span_id` and `trace_id` sample labels of link `index` (0: none):
/// an 8-byte span ID and a 16-byte trace ID (others are dropped).
pub(super) fn link_labels(
    links: &[otlp::Link],
    index: i32,
) -> Result<Vec<(&'static str, Cow<'static, str>)>, ConvertError> {
    if index == 0 {
        return Ok(Vec::new());
    }
    let link = entry(links, "link", index)?;
    let mut labels = Vec::with_capacity(2);
    let span = id_bytes(&link.span_id, SPAN_ID_BYTES);
    if span.len() == SPAN_ID_BYTES {
        labels.push((SPAN_ID, Cow::Owned(to_hex(&span))));
    }
    let trace = id_bytes(&link.trace_id, TRACE_ID_BYTES);
    if trace.len() == TRACE_ID_BYTES {
        labels.push((TRACE_ID, Cow::Owned(to_hex(&trace))));
    }
    Ok(labels)
}

/// An ID of `width` bytes as sent. OTLP/JSON writes trace and span IDs in
/// hex where protobuf JSON has base64: the JSON decoder reads the hex as
/// base64, `width * 2` characters into `width * 3 / 2` bytes. Encoding
/// those again gives the hex back. Other lengths are taken as they are.
fn id_bytes(bytes: &[u8], width: usize) -> Cow<'_, [u8]> {
    if bytes.len() == width * 3 / 2 {
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        if let Some(decoded) = unhex(&text) {
            return Cow::Owned(decoded);
        }
    }
    Cow::Borrowed(bytes)
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use flamedb_api::pb::opentelemetry::proto::common::v1::ArrayValue;

    use super::*;

    fn value(value: any_value::Value) -> Option<AnyValue> {
        Some(AnyValue { value: Some(value) })
    }

    #[test]
    fn test_values_read_as_pyroscope_reads_them() {
        let strings = ["".to_owned(), "by-reference".to_owned()];
        let read = |any: Option<AnyValue>| label_value(any.as_ref(), &strings).unwrap().map(Cow::into_owned);
        let text = |text: &str| any_value::Value::StringValue(text.to_owned());
        let array = |values: Vec<any_value::Value>| {
            any_value::Value::ArrayValue(ArrayValue {
                values: values
                    .into_iter()
                    .map(|value| AnyValue { value: Some(value) })
                    .collect(),
            })
        };
        assert_eq!(read(value(text("a"))).as_deref(), Some("a"));
        assert_eq!(
            read(value(any_value::Value::StringValueStrindex(1))).as_deref(),
            Some("by-reference")
        );
        assert_eq!(read(value(any_value::Value::IntValue(-42))).as_deref(), Some("-42"));
        assert_eq!(
            read(value(array(vec![any_value::Value::IntValue(7)]))).as_deref(),
            Some("7")
        );
        assert_eq!(read(value(array(vec![text("x")]))).as_deref(), Some("x"));
        for dropped in [
            value(text("")),
            value(any_value::Value::StringValueStrindex(0)),
            value(any_value::Value::BoolValue(true)),
            value(any_value::Value::DoubleValue(0.5)),
            value(array(vec![text("x"), text("y")])),
            value(array(vec![array(vec![text("x")])])),
            value(array(Vec::new())),
            Some(AnyValue { value: None }),
            None,
        ] {
            assert_eq!(read(dropped.clone()), None, "{dropped:?}");
        }
        let err = label_value(value(any_value::Value::StringValueStrindex(9)).as_ref(), &strings).unwrap_err();
        assert!(err.to_string().contains("string index 9"), "{err}");
    }

    #[test]
    fn test_keys_inline_or_by_reference() {
        let strings = ["".to_owned(), "service.name".to_owned()];
        let attribute = |key: &str, key_strindex| KeyValue {
            key: key.to_owned(),
            value: None,
            key_strindex,
        };
        assert_eq!(key(&attribute("inline", 0), &strings).unwrap(), "inline");
        assert_eq!(key(&attribute("", 1), &strings).unwrap(), "service.name");
        assert_eq!(key(&attribute("inline wins", 1), &strings).unwrap(), "inline wins");
        assert_eq!(key(&attribute("", 0), &strings).unwrap(), "");
        assert!(key(&attribute("", 5), &strings).is_err());
    }

    #[test]
    fn test_links_become_span_and_trace_ids_from_protobuf_and_json() {
        let trace: Vec<u8> = (1..=16).collect();
        let span: Vec<u8> = (0xa1..=0xa8).collect();
        let links = [
            otlp::Link::default(),
            otlp::Link {
                trace_id: trace.clone(),
                span_id: span.clone(),
            },
            // OTLP/JSON's hex, as the JSON decoder reads it (base64).
            otlp::Link {
                trace_id: base64::engine::general_purpose::STANDARD
                    .decode(to_hex(&trace))
                    .unwrap(),
                span_id: base64::engine::general_purpose::STANDARD.decode(to_hex(&span)).unwrap(),
            },
            // No trace ID of the right width: the span alone.
            otlp::Link {
                trace_id: vec![1, 2],
                span_id: span,
            },
            // Neither of the right width: nothing.
            otlp::Link {
                trace_id: vec![7; 40],
                span_id: vec![7; 1 << 10],
            },
        ];
        let labels = |index| {
            link_labels(&links, index)
                .unwrap()
                .into_iter()
                .map(|(name, value)| (name, value.into_owned()))
                .collect::<Vec<_>>()
        };
        let both = vec![
            (SPAN_ID, "a1a2a3a4a5a6a7a8".to_owned()),
            (TRACE_ID, "0102030405060708090a0b0c0d0e0f10".to_owned()),
        ];
        assert_eq!(labels(0), []);
        assert_eq!(labels(1), both);
        assert_eq!(labels(2), both);
        assert_eq!(labels(3), [(SPAN_ID, "a1a2a3a4a5a6a7a8".to_owned())]);
        assert_eq!(labels(4), []);
        assert!(link_labels(&links, 5).unwrap_err().to_string().contains("link index 5"));
    }
}
