//! Series labels: sorted label sets, their rendered form `{a="b", c="d"}`,
//! the ring token (FNV-1 32 over tenant + rendered labels, as Pyroscope
//! computes it) and the series fingerprint (xxhash64).

use std::fmt;

/// The profile group (`process_cpu`, `memory`, `wall`, ...).
pub const METRIC_NAME: &str = "__name__";
/// The application; required, defaulted to [`UNKNOWN_SERVICE`].
pub const SERVICE_NAME: &str = "service_name";
/// Value of [`SERVICE_NAME`] when the agent sent none.
pub const UNKNOWN_SERVICE: &str = "unknown_service";
/// Copy of `service_name` stored with every series.
pub const PRIVATE_SERVICE_NAME: &str = "__service_name__";
/// The profile type ID `name:type:unit:period_type:period_unit`.
pub const PROFILE_TYPE: &str = "__profile_type__";
pub const SAMPLE_TYPE: &str = "__type__";
pub const SAMPLE_UNIT: &str = "__unit__";
pub const PERIOD_TYPE: &str = "__period_type__";
pub const PERIOD_UNIT: &str = "__period_unit__";
/// Control label: `"false"` turns off server-side delta computation.
pub const DELTA: &str = "__delta__";
/// Control label set on profiles converted from OpenTelemetry.
pub const OTEL: &str = "__otel__";
/// Control label that asks for a fixed storage order.
pub const ORDER: &str = "__order__";
pub const SESSION_ID: &str = "__session_id__";
/// Sample labels kept per sample instead of becoming series labels.
pub const SPAN_ID: &str = "span_id";
pub const TRACE_ID: &str = "trace_id";
/// Sample label some agents use for what is a span ID.
pub const PROFILE_ID: &str = "profile_id";

/// One label: a name and a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    pub name: String,
    pub value: String,
}

impl Label {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// A label set, kept sorted by name (stable, so duplicate names stay
/// adjacent for validation to report).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Vec<Label>);

impl Labels {
    /// Builds a label set from labels in any order.
    pub fn new(mut labels: Vec<Label>) -> Self {
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        Self(labels)
    }

    pub fn from_pairs<N: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (N, V)>) -> Self {
        Self::new(pairs.into_iter().map(|(name, value)| Label::new(name, value)).collect())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Label> {
        self.0.iter()
    }

    pub fn as_slice(&self) -> &[Label] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<Label> {
        self.0
    }

    /// Returns the value of the first label called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        let start = self.0.partition_point(|label| label.name.as_str() < name);
        self.0
            .get(start)
            .filter(|label| label.name == name)
            .map(|label| label.value.as_str())
    }

    /// Sets `name` to `value`, replacing every label of that name.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.remove(name);
        let at = self.0.partition_point(|label| label.name.as_str() < name);
        self.0.insert(at, Label::new(name, value));
    }

    /// Adds `name=value` unless a label of that name exists.
    pub fn set_if_absent(&mut self, name: &str, value: impl Into<String>) {
        if self.get(name).is_none() {
            self.set(name, value);
        }
    }

    /// Removes every label called `name`, returning the first value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let start = self.0.partition_point(|label| label.name.as_str() < name);
        let end = start + self.0[start..].iter().take_while(|label| label.name == name).count();
        self.0.drain(start..end).next().map(|label| label.value)
    }

    /// Renders the labels as `{a="b", c="d"}`, values quoted like Go's
    /// `strconv.Quote` (the exact bytes Pyroscope hashes for the ring).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2 + self.0.iter().map(|l| l.name.len() + l.value.len() + 5).sum::<usize>());
        self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) {
        out.push('{');
        for (i, label) in self.0.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(&label.name);
            out.push('=');
            quote_go(&label.value, out);
        }
        out.push('}');
    }

    /// The ring token of this series for `tenant`: FNV-1 32 over the tenant
    /// ID followed by the rendered labels.
    pub fn token(&self, tenant: &str) -> u32 {
        fnv1_32(fnv1_32(FNV1_32_OFFSET, tenant.as_bytes()), self.render().as_bytes())
    }

    /// The series fingerprint: xxhash64 over `name 0xff value 0xff ...`.
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = xxhash_rust::xxh64::Xxh64::new(0);
        for label in &self.0 {
            hasher.update(label.name.as_bytes());
            hasher.update(&[0xff]);
            hasher.update(label.value.as_bytes());
            hasher.update(&[0xff]);
        }
        hasher.digest()
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        self.render_into(&mut out);
        f.write_str(&out)
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = &'a Label;
    type IntoIter = std::slice::Iter<'a, Label>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl FromIterator<Label> for Labels {
    fn from_iter<T: IntoIterator<Item = Label>>(iter: T) -> Self {
        Self::new(iter.into_iter().collect())
    }
}

/// The ring token of a tenant as a whole (the compactor ring shards by
/// it): xxhash64 of the tenant ID folded to 32 bits. Not FNV-1, whose last
/// byte only moves the low 8 bits: `tenant-1` and `tenant-2` would land
/// next to each other on the ring, on one compactor.
pub fn tenant_token(tenant: &str) -> u32 {
    let hash = xxhash_rust::xxh64::xxh64(tenant.as_bytes(), 0);
    (hash ^ (hash >> 32)) as u32
}

/// Returns whether `name` is a label name under the legacy Prometheus rules
/// (`[a-zA-Z_][a-zA-Z0-9_]*`); other names need the UTF-8 capability.
pub fn is_legacy_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

const FNV1_32_OFFSET: u32 = 2_166_136_261;
const FNV1_32_PRIME: u32 = 16_777_619;

/// FNV-1 (multiply, then xor; not FNV-1a) 32-bit, continuing from `hash`.
fn fnv1_32(mut hash: u32, bytes: &[u8]) -> u32 {
    for &byte in bytes {
        hash = hash.wrapping_mul(FNV1_32_PRIME);
        hash ^= u32::from(byte);
    }
    hash
}

/// Appends `value` double-quoted the way Go's `strconv.Quote` does: printable
/// characters as they are, the rest escaped. Printability follows Go's
/// `unicode.IsPrint` except for unassigned code points, which are kept as
/// they are (we carry no Unicode tables).
fn quote_go(value: &str, out: &mut String) {
    use std::fmt::Write;
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
}

fn is_go_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    let code = c as u32;
    // Format characters (Unicode category Cf), private use areas and
    // noncharacters: not printable for Go.
    !matches!(code,
        0x00AD
        | 0x0600..=0x0605
        | 0x061C
        | 0x06DD
        | 0x070F
        | 0x0890..=0x0891
        | 0x08E2
        | 0x180E
        | 0x200B..=0x200F
        | 0x202A..=0x202E
        | 0x2060..=0x2064
        | 0x2066..=0x206F
        | 0xFEFF
        | 0xFFF9..=0xFFFB
        | 0x110BD
        | 0x110CD
        | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A
        | 0xE0001
        | 0xE0020..=0xE007F
        | 0xE000..=0xF8FF
        | 0xF0000..=0x10FFFF
        | 0xFDD0..=0xFDEF
        | 0xFFFE..=0xFFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_labels_sorted_and_rendered_like_pyroscope() {
        let labels = Labels::from_pairs([("service_name", "app"), ("__name__", "process_cpu"), ("env", "prod")]);
        assert_eq!(
            labels.render(),
            r#"{__name__="process_cpu", env="prod", service_name="app"}"#
        );
        assert_eq!(Labels::default().render(), "{}");
    }

    #[test]
    fn test_render_quotes_like_go_strconv_quote() {
        let labels = Labels::from_pairs([("a", "q\"b\\n\n\t\u{1}\u{7f}é\u{200b}\u{a0}😀")]);
        assert_eq!(labels.render(), r#"{a="q\"b\\n\n\t\x01\x7fé\u200b\u00a0😀"}"#);
    }

    #[test]
    fn test_fnv1_32_known_values() {
        // Reference values of FNV-1 32 (not FNV-1a), as Go's hash/fnv.New32.
        assert_eq!(fnv1_32(FNV1_32_OFFSET, b""), 0x811c9dc5);
        assert_eq!(fnv1_32(FNV1_32_OFFSET, b"a"), 0x050c5d7e);
        assert_eq!(fnv1_32(FNV1_32_OFFSET, b"foobar"), 0x31f0b262);
    }

    #[test]
    fn test_tenant_tokens_of_similar_names_spread_over_the_ring() {
        // A quarter of the ring each should get about a quarter of them.
        let mut quarters = [0usize; 4];
        for n in 0..400 {
            quarters[(tenant_token(&format!("tenant-{n}")) >> 30) as usize] += 1;
        }
        assert!(
            quarters.iter().all(|&count| (70..=130).contains(&count)),
            "{quarters:?}"
        );
        assert_eq!(tenant_token("a"), tenant_token("a"));
        assert_ne!(tenant_token("a"), tenant_token("b"));
    }

    #[test]
    fn test_token_covers_tenant_and_labels() {
        let labels = Labels::from_pairs([("__name__", "cpu"), ("service_name", "a")]);
        let whole = fnv1_32(FNV1_32_OFFSET, format!("tenant{}", labels.render()).as_bytes());
        assert_eq!(labels.token("tenant"), whole);
        assert_ne!(labels.token("tenant"), labels.token("other"));
    }

    #[test]
    fn test_fingerprint_depends_on_every_label() {
        let a = Labels::from_pairs([("a", "1"), ("b", "2")]);
        let b = Labels::from_pairs([("b", "2"), ("a", "1")]);
        let c = Labels::from_pairs([("a", "12")]);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        // The separator keeps ("a","1b") apart from ("a1","b").
        assert_ne!(
            Labels::from_pairs([("a", "1b")]).fingerprint(),
            Labels::from_pairs([("a1", "b")]).fingerprint()
        );
    }

    #[test]
    fn test_set_get_remove() {
        let mut labels = Labels::from_pairs([("b", "2"), ("a", "1"), ("a", "dup")]);
        assert_eq!(labels.get("a"), Some("1"));
        labels.set("a", "3");
        assert_eq!(labels.render(), r#"{a="3", b="2"}"#);
        labels.set_if_absent("a", "4");
        labels.set_if_absent("c", "5");
        assert_eq!(labels.render(), r#"{a="3", b="2", c="5"}"#);
        assert_eq!(labels.remove("b").as_deref(), Some("2"));
        assert_eq!(labels.remove("missing"), None);
        assert_eq!(labels.render(), r#"{a="3", c="5"}"#);
    }

    #[test]
    fn test_legacy_label_names() {
        assert!(is_legacy_label_name("service_name"));
        assert!(is_legacy_label_name("_x9"));
        assert!(!is_legacy_label_name("service.name"));
        assert!(!is_legacy_label_name("9x"));
        assert!(!is_legacy_label_name(""));
    }
}
