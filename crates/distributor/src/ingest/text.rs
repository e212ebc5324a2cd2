//! The text formats of `/ingest`: folded stacks (`groups`, the default:
//! `a;b;c 100` per line) and `lines` (one stack per line, each counting 1).
//! A text profile holds one sample type, given by the suffix of the
//! application name (`app.cpu`, `app.inuse_space`, ...); it becomes a pprof
//! with one location per frame name.

use std::collections::HashMap;

use std::sync::Arc;

use flamedb_model::budget::{BudgetError, RequestBudget};
use flamedb_model::pprof::{Profile, StackProfileBuilder};

/// A stack, root first, and its value.
pub type Stack<'a> = (Vec<&'a str>, i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("line {line}: the count {count:?} after the last space is not a whole number")]
    BadCount { line: usize, count: String },
    #[error(
        "unknown profile type {suffix:?} in the application name {name:?}: end the name with .cpu, .wall, .inuse_space, .alloc_objects, .goroutines, .mutex_count, .block_duration, ... or use no dot"
    )]
    UnknownProfileType { name: String, suffix: String },
}

/// Folded stacks: `frame;frame;frame count` per line, split at the last
/// space; lines without a space are skipped.
pub fn parse_folded(body: &str) -> Result<Vec<Stack<'_>>, TextError> {
    let mut stacks = Vec::new();
    for (number, line) in body.lines().enumerate() {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let count: i64 = count.trim().parse().map_err(|_| TextError::BadCount {
            line: number + 1,
            count: count.to_owned(),
        })?;
        stacks.push((frames(stack), count));
    }
    Ok(stacks)
}

/// One stack per line; each line counts 1, identical lines add up.
pub fn parse_lines(body: &str) -> Vec<Stack<'_>> {
    let mut counts: HashMap<&str, i64> = HashMap::new();
    let mut order = Vec::new();
    for line in body.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let count = counts.entry(line).or_insert_with(|| {
            order.push(line);
            0
        });
        *count += 1;
    }
    order.into_iter().map(|line| (frames(line), counts[line])).collect()
}

fn frames(stack: &str) -> Vec<&str> {
    stack.split(';').filter(|frame| !frame.is_empty()).collect()
}

/// What a text profile measures, from the application name's suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextProfileType {
    /// The application name without the suffix.
    pub app_name: String,
    /// `__name__` of the series.
    pub metric: &'static str,
    pub sample_type: String,
    pub sample_unit: &'static str,
    /// CPU or wall time: values are sample counts, turned into
    /// nanoseconds with the sample rate.
    pub timed: bool,
}

/// The profile type of a text profile pushed as `name`: the part after the
/// last dot, none meaning CPU.
pub fn profile_type(name: &str) -> Result<TextProfileType, TextError> {
    let (app_name, suffix) = match name.rsplit_once('.') {
        Some((app, suffix)) => (app, suffix),
        None => (name, "cpu"),
    };
    let (metric, sample_type, sample_unit, timed) = match suffix {
        "cpu" | "itimer" => ("process_cpu", "samples", "count", true),
        "wall" | "seconds" | "milliseconds" | "microseconds" | "nanoseconds" => ("wall", "samples", "count", true),
        "inuse_objects" | "alloc_objects" | "alloc_in_new_tlab_objects" | "alloc_outside_tlab_objects" => {
            ("memory", suffix, "count", false)
        }
        "inuse_space" | "alloc_space" | "alloc_in_new_tlab_bytes" | "alloc_outside_tlab_bytes" => {
            ("memory", suffix, "bytes", false)
        }
        "goroutines" => ("goroutine", "goroutines", "count", false),
        "mutex_count" => ("mutex", "contentions", "count", false),
        "mutex_duration" => ("mutex", "delay", "nanoseconds", false),
        "block_count" | "lock_count" => ("block", "contentions", "count", false),
        "block_duration" | "lock_duration" => ("block", "delay", "nanoseconds", false),
        "live" => ("memory", "live", "count", false),
        "exceptions" => ("exceptions", "samples", "count", false),
        "bytes" => ("memory", "samples", "bytes", false),
        _ => {
            return Err(TextError::UnknownProfileType {
                name: name.to_owned(),
                suffix: suffix.to_owned(),
            });
        }
    };
    Ok(TextProfileType {
        app_name: app_name.to_owned(),
        metric,
        sample_type: sample_type.to_owned(),
        sample_unit,
        timed,
    })
}

/// Builds the pprof of `stacks`, charging it to `budget`. For CPU and wall
/// time with a sample rate, values become nanoseconds (`count × 1e9 /
/// rate`) and the period type is `cpu:nanoseconds`.
pub fn build_profile(
    stacks: &[Stack<'_>],
    kind: &TextProfileType,
    sample_rate: u32,
    from_nanos: i64,
    until_nanos: i64,
    budget: Arc<RequestBudget>,
) -> Result<Profile, BudgetError> {
    let mut builder = TextProfileBuilder::new(kind, sample_rate, from_nanos, until_nanos).within(budget);
    for (frames, value) in stacks {
        builder.add(frames.iter().copied(), *value);
    }
    builder.finish()
}

/// [`build_profile`] one stack at a time, for parsers that hand out
/// stacks as they read them.
#[derive(Debug)]
pub struct TextProfileBuilder {
    builder: StackProfileBuilder,
    /// What each value is multiplied by (the period, for CPU and wall
    /// time).
    scale: i64,
}

impl TextProfileBuilder {
    pub fn new(kind: &TextProfileType, sample_rate: u32, from_nanos: i64, until_nanos: i64) -> Self {
        let duration = until_nanos.saturating_sub(from_nanos).max(0);
        let (builder, scale) = if kind.timed && sample_rate != 0 {
            let period = 1_000_000_000 / i64::from(sample_rate);
            let name = if kind.metric == "wall" { "wall" } else { "cpu" };
            let builder = StackProfileBuilder::new(name, "nanoseconds").period("cpu", "nanoseconds", period);
            (builder, period)
        } else {
            (StackProfileBuilder::new(&kind.sample_type, kind.sample_unit), 1)
        };
        Self {
            builder: builder.time(from_nanos, duration),
            scale,
        }
    }

    /// Charges what the builder allocates to `budget`.
    pub fn within(self, budget: Arc<RequestBudget>) -> Self {
        Self {
            builder: self.builder.within(budget),
            scale: self.scale,
        }
    }

    /// Adds `value` to the stack `frames` (root first).
    pub fn add<'a>(&mut self, frames: impl IntoIterator<Item = &'a str>, value: i64) {
        self.builder.add(frames, value.saturating_mul(self.scale));
    }

    /// The profile, or the error of the budget it ran out of.
    pub fn finish(self) -> Result<Profile, BudgetError> {
        self.builder.finish()
    }
}

#[cfg(test)]
mod tests {
    use flamedb_model::pprof::string_at;

    use super::*;

    fn unlimited() -> Arc<RequestBudget> {
        Arc::new(RequestBudget::unlimited())
    }

    #[test]
    fn test_folded_splits_at_the_last_space_and_skips_lines_without_one() {
        let stacks = parse_folded("foo;bar 100\nfoo;baz qux 200\nnospace\n\n").unwrap();
        assert_eq!(stacks, vec![(vec!["foo", "bar"], 100), (vec!["foo", "baz qux"], 200)]);
        let err = parse_folded("a;b 1\na;c x\n").unwrap_err();
        assert_eq!(
            err,
            TextError::BadCount {
                line: 2,
                count: "x".to_owned()
            }
        );
    }

    #[test]
    fn test_lines_count_identical_stacks() {
        let stacks = parse_lines("a;b\na;c\na;b\n\n");
        assert_eq!(stacks, vec![(vec!["a", "b"], 2), (vec!["a", "c"], 1)]);
    }

    #[test]
    fn test_profile_type_from_the_name_suffix() {
        let cpu = profile_type("app.cpu").unwrap();
        assert_eq!(
            (cpu.app_name.as_str(), cpu.metric, cpu.timed),
            ("app", "process_cpu", true)
        );
        assert_eq!(profile_type("myapp").unwrap().app_name, "myapp");
        let space = profile_type("my.app.inuse_space").unwrap();
        assert_eq!(
            (
                space.app_name.as_str(),
                space.metric,
                space.sample_type.as_str(),
                space.sample_unit
            ),
            ("my.app", "memory", "inuse_space", "bytes")
        );
        assert_eq!(profile_type("a.block_duration").unwrap().sample_type, "delay");
        assert!(matches!(
            profile_type("my.app"),
            Err(TextError::UnknownProfileType { suffix, .. }) if suffix == "app"
        ));
    }

    #[test]
    fn test_cpu_profile_values_are_nanoseconds_and_stacks_leaf_first() {
        let stacks = parse_folded("foo;bar 100\nfoo;baz 200").unwrap();
        let kind = profile_type("app.cpu").unwrap();
        let profile = build_profile(&stacks, &kind, 100, 5, 15, unlimited()).unwrap();
        assert_eq!(string_at(&profile, profile.sample_type[0].r#type), "cpu");
        assert_eq!(string_at(&profile, profile.sample_type[0].unit), "nanoseconds");
        assert_eq!(profile.period, 10_000_000);
        assert_eq!((profile.time_nanos, profile.duration_nanos), (5, 10));
        assert_eq!(profile.sample[0].value, vec![1_000_000_000]);
        assert_eq!(profile.sample[1].value, vec![2_000_000_000]);
        let leaf = profile.sample[0].location_id[0];
        let function = profile.function[leaf as usize - 1].name;
        assert_eq!(string_at(&profile, function), "bar");
        // foo is shared.
        assert_eq!(profile.location.len(), 3);

        let space = build_profile(
            &stacks,
            &profile_type("app.inuse_space").unwrap(),
            100,
            0,
            0,
            unlimited(),
        )
        .unwrap();
        assert_eq!(space.sample[0].value, vec![100]);
        assert!(space.period_type.is_none());
    }
}
