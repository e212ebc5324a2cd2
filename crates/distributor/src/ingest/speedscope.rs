//! Speedscope JSON (`/ingest?format=speedscope`), the file format of
//! <https://www.speedscope.app> that many profilers export. Each profile of
//! the file, sampled (stacks of frame indices with weights) or evented
//! (open and close events at increasing times), becomes stacks with values;
//! profiles of the same name and unit add up. The caller turns each into a
//! pprof like the other text formats.

use std::collections::HashMap;

use flamedb_model::budget::{BudgetError, RequestBudget};

use serde::Deserialize;

use super::text::Stack;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpeedscopeError {
    #[error("not a speedscope file: {0}")]
    Json(String),
    /// The request's memory budget ran out.
    #[error(transparent)]
    Budget(#[from] BudgetError),
    #[error("speedscope profile {profile:?}: frame {frame} is not in shared.frames ({frames} frames)")]
    UnknownFrame {
        profile: String,
        frame: usize,
        frames: usize,
    },
    #[error("speedscope profile {profile:?}: {samples} samples but {weights} weights")]
    WeightCount {
        profile: String,
        samples: usize,
        weights: usize,
    },
    #[error("speedscope profile {profile:?}: event {index} closes frame {frame}, which is not the innermost open one")]
    UnbalancedClose {
        profile: String,
        index: usize,
        frame: usize,
    },
    #[error(
        "speedscope profile {profile:?}: event {index} is at {at}, before the event ahead of it or the start, or not a finite time"
    )]
    TimeGoesBack { profile: String, index: usize, at: f64 },
    #[error("speedscope profile {profile:?}: event {index} has type {kind:?}; \"O\" (open) or \"C\" (close) expected")]
    EventType {
        profile: String,
        index: usize,
        kind: String,
    },
    #[error("speedscope profile {profile:?}: weight {weight} is not a finite number of 0 or more")]
    BadWeight { profile: String, weight: f64 },
    #[error("the speedscope profiles expand to more than {limit} stack frames")]
    TooManyFrames { limit: usize },
}

#[derive(Debug, Deserialize)]
struct File {
    profiles: Vec<FileProfile>,
    shared: Shared,
}

#[derive(Debug, Deserialize)]
struct Shared {
    frames: Vec<Frame>,
}

#[derive(Debug, Deserialize)]
struct Frame {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum FileProfile {
    Sampled {
        name: String,
        unit: String,
        samples: Vec<Vec<usize>>,
        weights: Vec<f64>,
    },
    Evented {
        name: String,
        unit: String,
        #[serde(rename = "startValue")]
        start_value: f64,
        events: Vec<Event>,
    },
}

#[derive(Debug, Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    at: f64,
    frame: usize,
}

/// The unit of a speedscope profile's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Seconds, milliseconds, microseconds or nanoseconds, as nanoseconds
    /// per value.
    Time { nanos: u64 },
    /// `bytes`, `none` or anything else: values as they are.
    Plain,
}

impl Unit {
    fn parse(unit: &str) -> Self {
        match unit {
            "seconds" => Self::Time { nanos: 1_000_000_000 },
            "milliseconds" => Self::Time { nanos: 1_000_000 },
            "microseconds" => Self::Time { nanos: 1_000 },
            "nanoseconds" => Self::Time { nanos: 1 },
            _ => Self::Plain,
        }
    }
}

/// A parsed speedscope file: frame names and the profiles.
#[derive(Debug, Clone, PartialEq)]
pub struct Speedscope {
    frames: Vec<String>,
    pub profiles: Vec<SpeedscopeProfile>,
}

/// One profile of the file (or several of the same name and unit).
#[derive(Debug, Clone, PartialEq)]
pub struct SpeedscopeProfile {
    pub name: String,
    pub unit: Unit,
    /// Stacks of frame indices, root first, with their summed values in
    /// `unit`.
    stacks: Vec<(Vec<usize>, f64)>,
}

impl Speedscope {
    /// The stacks of `profile` with whole values: nanoseconds for time
    /// units (when `in_nanos`), else the values rounded. Stacks that round
    /// to 0 are left out. The stacks are charged to `budget` first.
    pub fn stacks(
        &self,
        profile: &SpeedscopeProfile,
        in_nanos: bool,
        budget: &RequestBudget,
    ) -> Result<Vec<Stack<'_>>, BudgetError> {
        // A name per frame and a vector per stack.
        let frames: usize = profile.stacks.iter().map(|(frames, _)| frames.len()).sum();
        budget.charge(
            2 * (16 * frames + 48 * profile.stacks.len()),
            "the stacks of the speedscope file",
        )?;
        let scale = match profile.unit {
            Unit::Time { nanos } if in_nanos => nanos as f64,
            _ => 1.0,
        };
        Ok(profile
            .stacks
            .iter()
            .filter_map(|(frames, value)| {
                let value = (value * scale).round() as i64;
                let names = frames
                    .iter()
                    .filter_map(|&frame| self.frames.get(frame).map(String::as_str))
                    .collect();
                (value > 0).then_some((names, value))
            })
            .collect())
    }
}

/// At most what the JSON of a speedscope file decodes into, per byte: its
/// smallest element, `[0],` (4 bytes), becomes a vector of at least 4
/// numbers (56 bytes), and vectors grow by doubling.
const DECODED_PER_BYTE: usize = 28;

/// Parses a speedscope file. `max_frames` bounds the frames of all stacks
/// together: evented profiles can expand far beyond their size. What the
/// file decodes into and the stacks it expands to are charged to
/// `request` first.
pub fn parse(body: &[u8], max_frames: usize, request: &RequestBudget) -> Result<Speedscope, SpeedscopeError> {
    request.charge(
        body.len().saturating_mul(DECODED_PER_BYTE),
        "the decoded speedscope file",
    )?;
    let file: File = serde_json::from_slice(body).map_err(|err| SpeedscopeError::Json(err.to_string()))?;
    let frames = file.shared.frames.len();
    let mut budget = FrameBudget {
        left: max_frames,
        limit: max_frames,
        request,
    };
    let mut profiles: Vec<(SpeedscopeProfile, HashMap<Vec<usize>, f64>)> = Vec::new();
    for profile in file.profiles {
        let (name, unit, stacks) = match profile {
            FileProfile::Sampled {
                name,
                unit,
                samples,
                weights,
            } => {
                let stacks = sampled(&name, samples, &weights, frames, &mut budget)?;
                (name, unit, stacks)
            }
            FileProfile::Evented {
                name,
                unit,
                start_value,
                events,
            } => {
                let stacks = evented(&name, start_value, &events, frames, &mut budget)?;
                (name, unit, stacks)
            }
        };
        let unit = Unit::parse(&unit);
        let index = match profiles
            .iter()
            .position(|(profile, _)| profile.name == name && profile.unit == unit)
        {
            Some(index) => index,
            None => {
                let profile = SpeedscopeProfile {
                    name,
                    unit,
                    stacks: Vec::new(),
                };
                profiles.push((profile, HashMap::new()));
                profiles.len() - 1
            }
        };
        for (stack, value) in stacks {
            *profiles[index].1.entry(stack).or_default() += value;
        }
    }
    Ok(Speedscope {
        frames: file.shared.frames.into_iter().map(|frame| frame.name).collect(),
        profiles: profiles
            .into_iter()
            .map(|(mut profile, stacks)| {
                profile.stacks = stacks.into_iter().collect();
                profile.stacks.sort_by(|a, b| a.0.cmp(&b.0));
                profile
            })
            .collect(),
    })
}

/// Frames still allowed in the stacks of a file, each charged to the
/// request's budget as it is made.
struct FrameBudget<'a> {
    left: usize,
    limit: usize,
    request: &'a RequestBudget,
}

impl FrameBudget<'_> {
    fn take(&mut self, frames: usize) -> Result<(), SpeedscopeError> {
        self.left = self
            .left
            .checked_sub(frames)
            .ok_or(SpeedscopeError::TooManyFrames { limit: self.limit })?;
        // Each frame an index, twice (growth), and each stack its vector
        // and map slot.
        self.request
            .charge(frames.saturating_mul(16) + 96, "the stacks of the speedscope file")?;
        Ok(())
    }
}

/// Stacks of a sampled profile.
fn sampled(
    name: &str,
    samples: Vec<Vec<usize>>,
    weights: &[f64],
    frames: usize,
    budget: &mut FrameBudget<'_>,
) -> Result<Vec<(Vec<usize>, f64)>, SpeedscopeError> {
    if samples.len() != weights.len() {
        return Err(SpeedscopeError::WeightCount {
            profile: name.to_owned(),
            samples: samples.len(),
            weights: weights.len(),
        });
    }
    let mut stacks = Vec::with_capacity(samples.len());
    for (stack, &weight) in samples.into_iter().zip(weights) {
        check_weight(name, weight)?;
        if let Some(&frame) = stack.iter().find(|&&frame| frame >= frames) {
            return Err(SpeedscopeError::UnknownFrame {
                profile: name.to_owned(),
                frame,
                frames,
            });
        }
        budget.take(stack.len())?;
        stacks.push((stack, weight));
    }
    Ok(stacks)
}

/// Stacks of an evented profile: each stretch between two events counts
/// for the frames open during it.
fn evented(
    name: &str,
    start: f64,
    events: &[Event],
    frames: usize,
    budget: &mut FrameBudget<'_>,
) -> Result<Vec<(Vec<usize>, f64)>, SpeedscopeError> {
    let mut open: Vec<usize> = Vec::new();
    let mut stacks: HashMap<Vec<usize>, f64> = HashMap::new();
    let mut last = start;
    if !start.is_finite() {
        return Err(SpeedscopeError::TimeGoesBack {
            profile: name.to_owned(),
            index: 0,
            at: start,
        });
    }
    for (index, event) in events.iter().enumerate() {
        if !(event.at >= last && (event.at - last).is_finite()) {
            return Err(SpeedscopeError::TimeGoesBack {
                profile: name.to_owned(),
                index,
                at: event.at,
            });
        }
        if event.frame >= frames {
            return Err(SpeedscopeError::UnknownFrame {
                profile: name.to_owned(),
                frame: event.frame,
                frames,
            });
        }
        if !open.is_empty() && event.at > last {
            // Every stretch hashes its whole stack: each is charged, so the
            // work stays within the budget too.
            budget.take(open.len())?;
            match stacks.get_mut(&open) {
                Some(value) => *value += event.at - last,
                None => {
                    stacks.insert(open.clone(), event.at - last);
                }
            }
        }
        last = event.at;
        match event.kind.as_str() {
            "O" => open.push(event.frame),
            "C" if open.last() == Some(&event.frame) => {
                open.pop();
            }
            "C" => {
                return Err(SpeedscopeError::UnbalancedClose {
                    profile: name.to_owned(),
                    index,
                    frame: event.frame,
                });
            }
            kind => {
                return Err(SpeedscopeError::EventType {
                    profile: name.to_owned(),
                    index,
                    kind: kind.to_owned(),
                });
            }
        }
    }
    Ok(stacks.into_iter().collect())
}

fn check_weight(name: &str, weight: f64) -> Result<(), SpeedscopeError> {
    if weight.is_finite() && weight >= 0.0 {
        Ok(())
    } else {
        Err(SpeedscopeError::BadWeight {
            profile: name.to_owned(),
            weight,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const FRAMES: &str = r#""shared": {"frames": [{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "d"}]}"#;

    fn file(profiles: &str) -> String {
        format!(r#"{{"profiles": [{profiles}], {FRAMES}}}"#)
    }

    fn stacks(file: &Speedscope, index: usize, in_nanos: bool) -> Vec<(String, i64)> {
        let mut stacks: Vec<(String, i64)> = file
            .stacks(&file.profiles[index], in_nanos, &RequestBudget::unlimited())
            .unwrap()
            .into_iter()
            .map(|(frames, value)| (frames.join(";"), value))
            .collect();
        stacks.sort();
        stacks
    }

    fn expected(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
        pairs
            .iter()
            .map(|(stack, value)| ((*stack).to_owned(), *value))
            .collect()
    }

    #[test]
    fn test_evented_profiles_count_the_time_each_stack_is_open() {
        // a;b;c for 2, a;b;d for 3, a;b;c again for 1, a;b for 4.
        let events = r#"[
            {"type": "O", "at": 10, "frame": 0}, {"type": "O", "at": 10, "frame": 1},
            {"type": "O", "at": 10, "frame": 2}, {"type": "C", "at": 12, "frame": 2},
            {"type": "O", "at": 12, "frame": 3}, {"type": "C", "at": 15, "frame": 3},
            {"type": "O", "at": 15, "frame": 2}, {"type": "C", "at": 16, "frame": 2},
            {"type": "C", "at": 20, "frame": 1}, {"type": "C", "at": 20, "frame": 0}]"#;
        let body = file(&format!(
            r#"{{"type": "evented", "name": "main", "unit": "milliseconds", "startValue": 10, "endValue": 20, "events": {events}}}"#
        ));
        let parsed = parse(body.as_bytes(), 1000, &RequestBudget::unlimited()).unwrap();
        assert_eq!(parsed.profiles.len(), 1);
        assert_eq!(parsed.profiles[0].unit, Unit::Time { nanos: 1_000_000 });
        assert_eq!(
            stacks(&parsed, 0, false),
            expected(&[("a;b", 4), ("a;b;c", 3), ("a;b;d", 3)])
        );
        assert_eq!(stacks(&parsed, 0, true)[0], ("a;b".to_owned(), 4_000_000));
    }

    #[test]
    fn test_sampled_profiles_add_up_by_name_and_unit() {
        let one = r#"{"type": "sampled", "name": "one", "unit": "none", "startValue": 0, "endValue": 4,
            "samples": [[0, 1], [0, 1], [0, 2]], "weights": [1, 2, 1.4]}"#;
        let again = r#"{"type": "sampled", "name": "one", "unit": "none", "samples": [[0, 1]], "weights": [3]}"#;
        let two = r#"{"type": "sampled", "name": "two", "unit": "bytes", "samples": [[3]], "weights": [7]}"#;
        let parsed = parse(
            file(&format!("{one}, {two}, {again}")).as_bytes(),
            1000,
            &RequestBudget::unlimited(),
        )
        .unwrap();
        let names: Vec<&str> = parsed.profiles.iter().map(|profile| profile.name.as_str()).collect();
        assert_eq!(names, ["one", "two"]);
        assert_eq!(stacks(&parsed, 0, true), expected(&[("a;b", 6), ("a;c", 1)]));
        assert_eq!(stacks(&parsed, 1, true), expected(&[("d", 7)]));
    }

    #[test]
    fn test_bad_files_are_refused_with_what_is_wrong() {
        let cases = [
            ("{", "not a speedscope file"),
            (
                &file(r#"{"type": "sampled", "name": "p", "unit": "none", "samples": [[9]], "weights": [1]}"#),
                "frame 9 is not in shared.frames (4 frames)",
            ),
            (
                &file(r#"{"type": "sampled", "name": "p", "unit": "none", "samples": [[0]], "weights": []}"#),
                "1 samples but 0 weights",
            ),
            (
                &file(r#"{"type": "sampled", "name": "p", "unit": "none", "samples": [[0]], "weights": [-1]}"#),
                "weight -1 is not a finite number",
            ),
            (
                &file(
                    r#"{"type": "evented", "name": "p", "unit": "none", "startValue": 0,
                    "events": [{"type": "O", "at": 0, "frame": 0}, {"type": "C", "at": 1, "frame": 1}]}"#,
                ),
                "event 1 closes frame 1, which is not the innermost open one",
            ),
            (
                &file(
                    r#"{"type": "evented", "name": "p", "unit": "none", "startValue": 5,
                    "events": [{"type": "O", "at": 4, "frame": 0}]}"#,
                ),
                "event 0 is at 4, before",
            ),
            (
                &file(
                    r#"{"type": "evented", "name": "p", "unit": "none", "startValue": 0,
                    "events": [{"type": "X", "at": 0, "frame": 0}]}"#,
                ),
                r#"event 0 has type "X""#,
            ),
        ];
        for (body, message) in cases {
            let err = parse(body.as_bytes(), 1000, &RequestBudget::unlimited())
                .unwrap_err()
                .to_string();
            assert!(err.contains(message), "{err} should say {message}");
        }
    }

    #[test]
    fn test_an_evented_profile_that_expands_too_far_is_refused() {
        // Ten nested frames, then a leaf opened and closed many times: each
        // stretch is a stack of up to eleven frames.
        let mut events: Vec<String> = (0..10)
            .map(|_| r#"{"type": "O", "at": 0, "frame": 0}"#.to_owned())
            .collect();
        for at in 0..100 {
            events.push(format!(r#"{{"type": "O", "at": {at}, "frame": {}}}"#, 1 + at % 3));
            events.push(format!(r#"{{"type": "C", "at": {}, "frame": {}}}"#, at + 1, 1 + at % 3));
        }
        let body = file(&format!(
            r#"{{"type": "evented", "name": "p", "unit": "none", "startValue": 0, "events": [{}]}}"#,
            events.join(",")
        ));
        assert!(parse(body.as_bytes(), 10_000, &RequestBudget::unlimited()).is_ok());
        assert_eq!(
            parse(body.as_bytes(), 20, &RequestBudget::unlimited()).unwrap_err(),
            SpeedscopeError::TooManyFrames { limit: 20 }
        );
    }

    proptest::proptest! {
        /// Any events and samples: an answer or an error, never a panic;
        /// stacks stay within the frame budget and hold no negative value.
        #[test]
        fn test_any_profile_parses_or_is_refused(
            events in proptest::collection::vec((0u8..3, 0u32..50, 0usize..5), 0..40),
            samples in proptest::collection::vec((proptest::collection::vec(0usize..5, 0..6), 0u32..9), 0..20),
            budget in 1usize..200,
        ) {
            let mut at = 0;
            let events: Vec<String> = events
                .iter()
                .map(|&(kind, step, frame)| {
                    at += step;
                    let kind = ["O", "C", "X"][usize::from(kind)];
                    format!(r#"{{"type": "{kind}", "at": {at}, "frame": {frame}}}"#)
                })
                .collect();
            let (stacks, weights): (Vec<String>, Vec<String>) = samples
                .iter()
                .map(|(stack, weight)| (format!("{stack:?}"), weight.to_string()))
                .unzip();
            let body = file(&format!(
                r#"{{"type": "evented", "name": "e", "unit": "none", "startValue": 0, "events": [{}]}},
                   {{"type": "sampled", "name": "s", "unit": "seconds", "samples": [{}], "weights": [{}]}}"#,
                events.join(","),
                stacks.join(","),
                weights.join(",")
            ));
            if let Ok(parsed) = parse(body.as_bytes(), budget, &RequestBudget::unlimited()) {
                let mut frames = 0;
                for profile in &parsed.profiles {
                    for (stack, value) in parsed.stacks(profile, true, &RequestBudget::unlimited()).unwrap() {
                        frames += stack.len();
                        proptest::prop_assert!(value > 0);
                    }
                }
                proptest::prop_assert!(frames <= budget);
            }
        }
    }

    #[test]
    fn test_testdata_speedscope_files() {
        let Some(dir) = flamedb_testkit::testdata("speedscope") else {
            return;
        };
        // Both files hold the stacks a;b;c 5, a;b;d 4, a;b 5 (seconds in
        // the sampled one), once as events and twice as samples.
        let simple = std::fs::read(dir.join("simple.speedscope.json")).unwrap();
        let simple = parse(&simple, 10_000, &RequestBudget::unlimited()).unwrap();
        assert_eq!(simple.profiles.len(), 1);
        let three = expected(&[("a;b", 5), ("a;b;c", 5), ("a;b;d", 4)]);
        assert_eq!(stacks(&simple, 0, true), three);
        let two = std::fs::read(dir.join("two-sampled.speedscope.json")).unwrap();
        let two = parse(&two, 10_000, &RequestBudget::unlimited()).unwrap();
        assert_eq!(two.profiles.len(), 2);
        for index in 0..2 {
            assert_eq!(stacks(&two, index, false), three);
            assert_eq!(two.profiles[index].unit, Unit::Time { nanos: 1_000_000_000 });
        }
    }
}
