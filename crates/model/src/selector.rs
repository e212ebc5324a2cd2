//! Prometheus label selectors: `{a="x", b!="y", c=~"re", d!~"re"}`, with an
//! optional metric name in front (`name{...}`, colons allowed, as in profile
//! type IDs), quoted UTF-8 label names (`{"service.name"="x"}`) and a bare
//! quoted metric name inside the braces (`{"my.metric", a="b"}`). Regexes are
//! fully anchored, as in Prometheus.

use std::fmt;

use regex::Regex;

use crate::labels::{Labels, METRIC_NAME};

/// How a matcher compares a label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl MatchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Equal => "=",
            Self::NotEqual => "!=",
            Self::Regex => "=~",
            Self::NotRegex => "!~",
        }
    }
}

/// One condition on a label; a missing label has the value `""`.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<Regex>,
}

impl Matcher {
    /// Builds a matcher, compiling the anchored regex for `=~`/`!~`.
    pub fn new(name: impl Into<String>, op: MatchOp, value: impl Into<String>) -> Result<Self, regex::Error> {
        let value = value.into();
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(Regex::new(&format!("^(?s:{value})$"))?),
            MatchOp::Equal | MatchOp::NotEqual => None,
        };
        Ok(Self {
            name: name.into(),
            op,
            value,
            regex,
        })
    }

    pub fn equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            op: MatchOp::Equal,
            value: value.into(),
            regex: None,
        }
    }

    /// Returns whether a label value (`""` when absent) satisfies the matcher.
    pub fn matches(&self, value: &str) -> bool {
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => value == self.value,
            (MatchOp::NotEqual, _) => value != self.value,
            (MatchOp::Regex, Some(regex)) => regex.is_match(value),
            (MatchOp::NotRegex, Some(regex)) => !regex.is_match(value),
            (MatchOp::Regex | MatchOp::NotRegex, None) => false,
        }
    }

    /// Returns whether the matcher selects series that lack the label.
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if crate::labels::is_legacy_label_name(&self.name) {
            f.write_str(&self.name)?;
        } else {
            write!(f, "{:?}", self.name)?;
        }
        write!(f, "{}{:?}", self.op.as_str(), self.value)
    }
}

/// A parsed selector: every matcher must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    pub matchers: Vec<Matcher>,
}

impl Selector {
    /// Returns whether a series with these labels is selected.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.matchers
            .iter()
            .all(|matcher| matcher.matches(labels.get(&matcher.name).unwrap_or("")))
    }

    /// Takes out the metric name given as `name{...}` or `{__name__="..."}`.
    pub fn take_metric_name(&mut self) -> Option<String> {
        let at = self
            .matchers
            .iter()
            .position(|m| m.name == METRIC_NAME && m.op == MatchOp::Equal)?;
        Some(self.matchers.remove(at).value)
    }
}

/// Why a selector could not be parsed; `position` is a character offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parse error at char {position}: {message}")]
pub struct SelectorError {
    pub position: usize,
    pub message: String,
}

/// Parses a Prometheus selector such as `{service_name="app", env=~"prod|dev"}`.
pub fn parse_selector(input: &str) -> Result<Selector, SelectorError> {
    let mut parser = Parser {
        chars: input.chars().collect(),
        pos: 0,
    };
    let mut matchers = Vec::new();
    parser.skip_whitespace();
    if parser.peek().is_some_and(is_metric_name_start) {
        let name = parser.identifier(true);
        matchers.push(Matcher::equal(METRIC_NAME, name));
        parser.skip_whitespace();
        if parser.peek().is_none() {
            return Ok(Selector { matchers });
        }
    }
    parser.expect('{')?;
    loop {
        parser.skip_whitespace();
        match parser.peek() {
            Some('}') => {
                parser.pos += 1;
                break;
            }
            None => return Err(parser.error("unexpected end of input, expected label matcher or '}'")),
            _ => {}
        }
        matchers.push(parser.matcher()?);
        parser.skip_whitespace();
        match parser.peek() {
            Some(',') => parser.pos += 1,
            Some('}') => {}
            Some(c) => return Err(parser.error(&format!("unexpected character {c:?}, expected ',' or '}}'"))),
            None => return Err(parser.error("unexpected end of input, expected ',' or '}'")),
        }
    }
    parser.skip_whitespace();
    if let Some(c) = parser.peek() {
        return Err(parser.error(&format!("unexpected character {c:?} after '}}'")));
    }
    Ok(Selector { matchers })
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

fn is_metric_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn error(&self, message: &str) -> SelectorError {
        SelectorError {
            position: self.pos,
            message: message.to_owned(),
        }
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, expected: char) -> Result<(), SelectorError> {
        match self.peek() {
            Some(c) if c == expected => {
                self.pos += 1;
                Ok(())
            }
            Some(c) => Err(self.error(&format!("unexpected character {c:?}, expected {expected:?}"))),
            None => Err(self.error(&format!("unexpected end of input, expected {expected:?}"))),
        }
    }

    /// Reads `[a-zA-Z_][a-zA-Z0-9_]*`, with `:` allowed for metric names.
    fn identifier(&mut self, allow_colon: bool) -> String {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || (allow_colon && c == ':'))
        {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn matcher(&mut self) -> Result<Matcher, SelectorError> {
        let start = self.pos;
        let name = match self.peek() {
            Some('"' | '\'' | '`') => self.string()?,
            Some(c) if c.is_ascii_alphabetic() || c == '_' => self.identifier(false),
            Some(c) => return Err(self.error(&format!("unexpected character {c:?}, expected label name"))),
            None => return Err(self.error("unexpected end of input, expected label name")),
        };
        self.skip_whitespace();
        let op = match (self.peek(), self.chars.get(self.pos + 1).copied()) {
            (Some('='), Some('~')) => MatchOp::Regex,
            (Some('!'), Some('~')) => MatchOp::NotRegex,
            (Some('!'), Some('=')) => MatchOp::NotEqual,
            (Some('='), _) => MatchOp::Equal,
            // A quoted string alone inside the braces is the metric name.
            (Some(',' | '}'), _) if matches!(self.chars.get(start), Some('"' | '\'' | '`')) => {
                return Ok(Matcher::equal(METRIC_NAME, name));
            }
            (Some(c), _) => {
                return Err(self.error(&format!(
                    "unexpected character {c:?}, expected one of '=', '!=', '=~', '!~'"
                )));
            }
            (None, _) => return Err(self.error("unexpected end of input, expected a match operator")),
        };
        self.pos += if op == MatchOp::Equal { 1 } else { 2 };
        self.skip_whitespace();
        let value_start = self.pos;
        if !matches!(self.peek(), Some('"' | '\'' | '`')) {
            return Err(self.error("expected a quoted label value"));
        }
        let value = self.string()?;
        Matcher::new(name, op, value).map_err(|err| SelectorError {
            position: value_start,
            message: format!("invalid regular expression: {err}"),
        })
    }

    /// Reads a Go-style string literal: "..." or '...' with escapes, or
    /// `...` raw. As in Go, `\x` and octal escapes are bytes, and the
    /// result must be valid UTF-8.
    fn string(&mut self) -> Result<String, SelectorError> {
        let Some(quote) = self.peek() else {
            return Err(self.error("unexpected end of input, expected a string"));
        };
        let start = self.pos;
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(SelectorError {
                    position: start,
                    message: "unterminated quoted string".to_owned(),
                });
            };
            self.pos += 1;
            if c == quote {
                return String::from_utf8(out).map_err(|_| SelectorError {
                    position: start,
                    message: "quoted string is not valid UTF-8".to_owned(),
                });
            }
            if c == '\\' && quote != '`' {
                self.escape(quote, &mut out)?;
            } else if c == '\n' && quote != '`' {
                return Err(self.error("newline in quoted string"));
            } else {
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
        }
    }

    /// Reads the escape sequence after a backslash; errors point at the
    /// backslash.
    fn escape(&mut self, quote: char, out: &mut Vec<u8>) -> Result<(), SelectorError> {
        let backslash = self.pos - 1;
        let error = |message: &str| SelectorError {
            position: backslash,
            message: message.to_owned(),
        };
        let Some(c) = self.peek() else {
            return Err(error("unterminated escape sequence"));
        };
        self.pos += 1;
        let simple = match c {
            'a' => Some('\u{7}'),
            'b' => Some('\u{8}'),
            'f' => Some('\u{c}'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'v' => Some('\u{b}'),
            '\\' => Some('\\'),
            c if c == quote => Some(c),
            _ => None,
        };
        if let Some(unescaped) = simple {
            out.extend_from_slice(unescaped.encode_utf8(&mut [0; 4]).as_bytes());
            return Ok(());
        }
        let (digits, radix) = match c {
            'x' => (2, 16),
            'u' => (4, 16),
            'U' => (8, 16),
            '0'..='7' => {
                self.pos -= 1;
                (3, 8)
            }
            other => return Err(error(&format!("unknown escape sequence \\{other}"))),
        };
        let end = self.pos + digits;
        let text: String = self.chars.get(self.pos..end).unwrap_or_default().iter().collect();
        let code = u32::from_str_radix(&text, radix)
            .ok()
            .filter(|_| text.len() == digits)
            .ok_or_else(|| error("invalid escape sequence"))?;
        self.pos = end;
        if matches!(c, 'u' | 'U') {
            let unescaped = char::from_u32(code).ok_or_else(|| error("escape sequence is not a valid character"))?;
            out.extend_from_slice(unescaped.encode_utf8(&mut [0; 4]).as_bytes());
        } else {
            // \x and octal escapes are single bytes.
            let byte = u8::try_from(code).map_err(|_| error("octal escape value is larger than 255"))?;
            out.push(byte);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matchers(input: &str) -> Vec<String> {
        parse_selector(input)
            .unwrap_or_else(|err| panic!("{input}: {err}"))
            .matchers
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn test_parse_selector_operators() {
        assert_eq!(
            matchers(r#"{a="x", b!="y", c=~"r.*", d!~'q' , }"#),
            [r#"a="x""#, r#"b!="y""#, r#"c=~"r.*""#, r#"d!~"q""#]
        );
        assert!(matchers("{}").is_empty());
        assert!(matchers("  { }  ").is_empty());
    }

    #[test]
    fn test_parse_selector_metric_names() {
        assert_eq!(
            matchers(r#"process_cpu:cpu:nanoseconds:cpu:nanoseconds{service_name="x"}"#),
            [
                r#"__name__="process_cpu:cpu:nanoseconds:cpu:nanoseconds""#,
                r#"service_name="x""#
            ]
        );
        assert_eq!(
            matchers("memory:inuse_space:bytes::"),
            [r#"__name__="memory:inuse_space:bytes::""#]
        );
        assert_eq!(
            matchers(r#"{"my.metric", a="b"}"#),
            [r#"__name__="my.metric""#, r#"a="b""#]
        );
    }

    #[test]
    fn test_parse_selector_quoted_utf8_names_and_escapes() {
        let selector =
            parse_selector(r#"{"service.name"="x\"y\u00e9", `raw`=`a\b`, 'sq'='\x41\101', b="\xc3\xa9"}"#).unwrap();
        let got: Vec<_> = selector
            .matchers
            .iter()
            .map(|m| (m.name.as_str(), m.value.as_str()))
            .collect();
        assert_eq!(
            got,
            [("service.name", "x\"yé"), ("raw", "a\\b"), ("sq", "AA"), ("b", "é")]
        );
        assert!(parse_selector(r#"{a="\400"}"#).is_err());
        assert!(parse_selector(r#"{a="\xff"}"#).is_err());
    }

    #[test]
    fn test_parse_selector_errors_name_the_position() {
        for (input, position) in [
            ("{a=\"x\"", 6),
            ("{a}", 2),
            ("{a=x}", 3),
            ("{a=\"x}", 3),
            ("{a=~\"(\"}", 4),
            ("{a=\"x\"} b", 8),
            ("{=\"x\"}", 1),
            ("{a=\"\\q\"}", 4),
        ] {
            let err = parse_selector(input).unwrap_err();
            assert_eq!(err.position, position, "{input}: {err}");
        }
    }

    #[test]
    fn test_selector_matching_is_anchored_and_missing_is_empty() {
        let labels = Labels::from_pairs([("service_name", "checkout"), ("env", "prod")]);
        let select = |input: &str| parse_selector(input).unwrap().matches(&labels);
        assert!(select(r#"{service_name="checkout"}"#));
        assert!(select(r#"{service_name=~"check.*"}"#));
        assert!(!select(r#"{service_name=~"check"}"#));
        assert!(select(r#"{service_name!~"check"}"#));
        assert!(select(r#"{missing=""}"#));
        assert!(!select(r#"{missing!=""}"#));
        assert!(select(r#"{missing=~".*"}"#));
        assert!(!select(r#"{env="prod", service_name="other"}"#));
        assert!(select("{}"));
    }

    #[test]
    fn test_take_metric_name() {
        let mut selector = parse_selector(r#"cpu{a="b"}"#).unwrap();
        assert_eq!(selector.take_metric_name().as_deref(), Some("cpu"));
        assert_eq!(selector.matchers.len(), 1);
        assert_eq!(selector.take_metric_name(), None);
    }
}
