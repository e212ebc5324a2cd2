//! The `name` parameter of the legacy `/ingest` API: an application name
//! with optional labels, `my.app.cpu{env=staging,region=us-west-1}`.
//!
//! The application name (trimmed, non-empty) may hold `[A-Za-z0-9_.\-/]`;
//! label keys (trimmed) `[A-Za-z0-9_.]`; values are trimmed and end at `,` or
//! `}` (there is no quoting). Text after the closing `}` is ignored, as in
//! Pyroscope.

use crate::labels::{Label, METRIC_NAME};

/// A parsed `name`: the application name and its labels, in input order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestName {
    pub app_name: String,
    pub labels: Vec<Label>,
}

/// Why a `name` parameter was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestNameError {
    #[error("invalid name {input:?}: the application name is empty")]
    EmptyAppName { input: String },
    #[error("invalid name {input:?}: character {character:?} is not allowed in the application name {app_name:?}")]
    InvalidAppNameCharacter {
        input: String,
        app_name: String,
        character: char,
    },
    #[error("invalid name {input:?}: a label name is empty")]
    EmptyLabelName { input: String },
    #[error("invalid name {input:?}: character {character:?} is not allowed in label name {name:?}")]
    InvalidLabelNameCharacter {
        input: String,
        name: String,
        character: char,
    },
}

fn is_label_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.'
}

fn is_app_name_char(c: char) -> bool {
    is_label_name_char(c) || c == '-' || c == '/'
}

/// Parses an `/ingest` `name` such as `app.cpu{env=prod}`.
pub fn parse_ingest_name(input: &str) -> Result<IngestName, IngestNameError> {
    let (app_name, rest) = match input.split_once('{') {
        Some((app_name, rest)) => (app_name.trim(), Some(rest)),
        None => (input.trim(), None),
    };
    if app_name.is_empty() {
        return Err(IngestNameError::EmptyAppName {
            input: input.to_owned(),
        });
    }
    if let Some(character) = app_name.chars().find(|&c| !is_app_name_char(c)) {
        return Err(IngestNameError::InvalidAppNameCharacter {
            input: input.to_owned(),
            app_name: app_name.to_owned(),
            character,
        });
    }
    let mut labels = Vec::new();
    let mut rest = rest.unwrap_or_default();
    // Each step reads `key=value` up to `,` or `}`; a key without `=` before
    // the closing brace is ignored.
    while let Some(equals) = rest.find(['=', '}'])
        && rest.as_bytes()[equals] == b'='
    {
        let name = rest[..equals].trim();
        let after = &rest[equals + 1..];
        let end = after.find([',', '}']).unwrap_or(after.len());
        let value = after[..end].trim();
        if name.is_empty() {
            return Err(IngestNameError::EmptyLabelName {
                input: input.to_owned(),
            });
        }
        if name != METRIC_NAME
            && let Some(character) = name.chars().find(|&c| !is_label_name_char(c))
        {
            return Err(IngestNameError::InvalidLabelNameCharacter {
                input: input.to_owned(),
                name: name.to_owned(),
                character,
            });
        }
        labels.push(Label::new(name, value));
        match after.as_bytes().get(end) {
            Some(b',') => rest = &after[end + 1..],
            _ => break,
        }
    }
    Ok(IngestName {
        app_name: app_name.to_owned(),
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &str) -> (String, Vec<(String, String)>) {
        let name = parse_ingest_name(input).unwrap_or_else(|err| panic!("{err}"));
        (
            name.app_name,
            name.labels.into_iter().map(|label| (label.name, label.value)).collect(),
        )
    }

    #[test]
    fn test_parse_ingest_names() {
        assert_eq!(parse("myapp"), ("myapp".into(), vec![]));
        assert_eq!(parse(" my.awesome.app.cpu{} "), ("my.awesome.app.cpu".into(), vec![]));
        assert_eq!(
            parse("my.awesome.app.cpu{env=staging, region = us-west-1 }"),
            (
                "my.awesome.app.cpu".into(),
                vec![("env".into(), "staging".into()), ("region".into(), "us-west-1".into())]
            )
        );
        assert_eq!(
            parse("a/b-c{k=v=w,x.y=ünï cødé}trailing"),
            (
                "a/b-c".into(),
                vec![("k".into(), "v=w".into()), ("x.y".into(), "ünï cødé".into())]
            )
        );
        assert_eq!(parse("app{k=v"), ("app".into(), vec![("k".into(), "v".into())]));
        assert_eq!(parse("app{dangling}"), ("app".into(), vec![]));
        assert_eq!(parse("app{k=}"), ("app".into(), vec![("k".into(), "".into())]));
    }

    #[test]
    fn test_parse_ingest_name_errors() {
        assert!(matches!(
            parse_ingest_name(""),
            Err(IngestNameError::EmptyAppName { .. })
        ));
        assert!(matches!(
            parse_ingest_name(" {a=b}"),
            Err(IngestNameError::EmptyAppName { .. })
        ));
        assert!(matches!(
            parse_ingest_name("my app"),
            Err(IngestNameError::InvalidAppNameCharacter { character: ' ', .. })
        ));
        assert!(matches!(
            parse_ingest_name("app{=v}"),
            Err(IngestNameError::EmptyLabelName { .. })
        ));
        let err = parse_ingest_name("app{bad-key=v}").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid name "app{bad-key=v}": character '-' is not allowed in label name "bad-key""#
        );
    }
}
