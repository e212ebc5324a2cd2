//! pprof through `/ingest`: what Pyroscope's legacy path does to a pprof
//! before the distributor sees it. Old agents' times are fixed, scripting
//! languages get file names in function names, .NET profiles get their
//! function IDs back, and `__name__` is guessed from the sample types
//! (and the `sample_type_config` display names).

use std::collections::HashMap;

use flamedb_model::Limits;
use flamedb_model::budget::{BudgetError, RequestBudget, allocation_size};
use flamedb_model::pprof::{Profile, string_at};
use serde::Deserialize;

/// 1971-01-01 in ns: earlier times come from agents that sent µs.
const YEAR_1970_END: i64 = 365 * 86_400 * 1_000_000_000;

/// `sample_type_config`: per sample type, how the agent describes it.
pub type SampleTypeConfig = HashMap<String, SampleTypeSettings>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SampleTypeSettings {
    #[serde(rename = "display-name", default)]
    pub display_name: Option<String>,
}

/// What the fix-ups charge the request's budget as.
const REWRITTEN: &str = "the function names rewritten for the spy";

/// Applies the legacy fix-ups and returns the `__name__` of the series;
/// the strings they make are charged to `budget` first.
pub fn prepare(
    profile: &mut Profile,
    spy_name: &str,
    config: Option<&SampleTypeConfig>,
    from_nanos: i64,
    limits: &Limits,
    budget: &RequestBudget,
) -> Result<String, BudgetError> {
    if profile.time_nanos <= YEAR_1970_END {
        profile.time_nanos = from_nanos;
    }
    match spy_name {
        "pyspy" | "rbspy" | "scripting" => prefix_file_names(
            profile,
            spy_name == "pyspy",
            limits.max_profile_symbol_value_length,
            budget,
        )?,
        _ => {}
    }
    let dotnet = spy_name == "dotnetspy"
        || (spy_name == "unknown" && config.is_some_and(|config| config.contains_key("inuse-space")));
    if dotnet {
        repair_dotnet(profile, budget)?;
    }
    Ok(metric_name(profile, config))
}

/// Function names become `"<file> <function>"`; py-spy's absolute file
/// names are left out. Each (file, name) pair is made once however many
/// functions share it, and already cut to the symbol length limit
/// (`max_length`, `0`: none), keeping its end as validation would.
fn prefix_file_names(
    profile: &mut Profile,
    skip_absolute: bool,
    max_length: usize,
    budget: &RequestBudget,
) -> Result<(), BudgetError> {
    let mut made: HashMap<(i64, i64), i64> = HashMap::new();
    for index in 0..profile.function.len() {
        let function = &profile.function[index];
        let key = (function.filename, function.name);
        if let Some(&name) = made.get(&key) {
            profile.function[index].name = name;
            continue;
        }
        let file = string_at(profile, function.filename);
        if file.is_empty() || (skip_absolute && file.starts_with('/')) {
            continue;
        }
        let parts = [file, " ", string_at(profile, function.name)];
        let length = parts.iter().map(|part| part.len()).sum::<usize>();
        let kept = if max_length == 0 {
            length
        } else {
            length.min(max_length)
        };
        budget.charge(allocation_size(kept) + 2 * size_of::<String>() + 64, REWRITTEN)?;
        let name = concat_keeping_end(&parts, kept);
        profile.string_table.push(name);
        let name = profile.string_table.len() as i64 - 1;
        profile.function[index].name = name;
        made.insert(key, name);
    }
    Ok(())
}

/// The last `max` bytes of the concatenation of `parts` (moved forward to
/// a character boundary), without making the whole.
fn concat_keeping_end(parts: &[&str], max: usize) -> String {
    let total: usize = parts.iter().map(|part| part.len()).sum();
    let mut skip = total.saturating_sub(max);
    let mut out = String::with_capacity(total.min(max));
    for part in parts {
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        let mut start = skip;
        while !part.is_char_boundary(start) {
            start += 1;
        }
        out.push_str(&part[start..]);
        skip = 0;
    }
    out
}

/// .NET agents sent every function ID as 0, one function per location:
/// give each function its location's ID. `-` in sample type names becomes
/// `_`.
fn repair_dotnet(profile: &mut Profile, budget: &RequestBudget) -> Result<(), BudgetError> {
    if profile.function.len() == profile.location.len() && profile.function.iter().all(|function| function.id == 0) {
        for (function, location) in profile.function.iter_mut().zip(&mut profile.location) {
            function.id = location.id;
            for line in &mut location.line {
                line.function_id = location.id;
            }
        }
    }
    for sample_type in &profile.sample_type {
        // Only names with a dash are copied, so a name shared by many
        // sample types is copied once.
        if let Ok(index) = usize::try_from(sample_type.r#type)
            && let Some(name) = profile.string_table.get_mut(index)
            && name.contains('-')
        {
            budget.charge(allocation_size(name.len()), REWRITTEN)?;
            *name = name.replace('-', "_");
        }
    }
    Ok(())
}

/// Pyroscope's guess of `__name__` from the sample types.
fn metric_name(profile: &Profile, config: Option<&SampleTypeConfig>) -> String {
    let names: Vec<&str> = profile
        .sample_type
        .iter()
        .map(|sample_type| string_at(profile, sample_type.r#type))
        .collect();
    if names.contains(&"wall") {
        return "wall".to_owned();
    }
    let mut last = String::new();
    for name in names {
        let display = config
            .and_then(|config| config.get(name))
            .and_then(|settings| settings.display_name.as_deref())
            .unwrap_or(match name {
                "samples" => "cpu",
                "goroutine" => "goroutines",
                "contentions" => "mutex_count",
                "delay" => "mutex_duration",
                other => other,
            });
        if display.contains("cpu") {
            return "process_cpu".to_owned();
        }
        if display.contains("alloc_") || display.contains("inuse_") || display == "space" || display == "objects" {
            return "memory".to_owned();
        }
        if display.contains("mutex_") {
            return "mutex".to_owned();
        }
        if display.contains("block_") {
            return "block".to_owned();
        }
        if display.contains("goroutines") {
            return "goroutines".to_owned();
        }
        display.clone_into(&mut last);
    }
    last
}

#[cfg(test)]
mod tests {
    use flamedb_model::pprof::{Function, Line, Location, ValueType};

    use super::*;

    fn profile(sample_types: &[&str]) -> Profile {
        let mut string_table = vec![String::new(), "count".to_owned()];
        let mut types = Vec::new();
        for name in sample_types {
            string_table.push((*name).to_owned());
            types.push(ValueType {
                r#type: string_table.len() as i64 - 1,
                unit: 1,
            });
        }
        Profile {
            sample_type: types,
            string_table,
            ..Profile::default()
        }
    }

    #[test]
    fn test_metric_name_heuristics() {
        let cases: &[(&[&str], &str)] = &[
            (&["samples", "cpu"], "process_cpu"),
            (&["sample", "wall"], "wall"),
            (&["alloc_objects", "alloc_space"], "memory"),
            (&["objects", "space"], "memory"),
            (&["contentions", "delay"], "mutex"),
            (&["goroutine"], "goroutines"),
            (&["something", "else"], "else"),
        ];
        for (types, expected) in cases {
            assert_eq!(metric_name(&profile(types), None), *expected, "{types:?}");
        }
        let config: SampleTypeConfig = serde_json::from_str(
            r#"{"contentions":{"units":"lock_samples","display-name":"block_count"},"delay":{"display-name":"block_duration"}}"#,
        )
        .unwrap();
        assert_eq!(metric_name(&profile(&["contentions", "delay"]), Some(&config)), "block");
    }

    #[test]
    fn test_old_times_are_replaced_by_from() {
        let mut old = profile(&["cpu"]);
        old.time_nanos = 1_600_000_000_000_000; // µs sent as ns: 1970
        prepare_as(&mut old, "gospy", 42);
        assert_eq!(old.time_nanos, 42);
        let mut fine = profile(&["cpu"]);
        fine.time_nanos = 1_700_000_000_000_000_000;
        prepare_as(&mut fine, "gospy", 42);
        assert_eq!(fine.time_nanos, 1_700_000_000_000_000_000);
    }

    /// [`prepare`] with the default limits and no budget.
    fn prepare_as(profile: &mut Profile, spy_name: &str, from_nanos: i64) {
        prepare(
            profile,
            spy_name,
            None,
            from_nanos,
            &Limits::default(),
            &RequestBudget::unlimited(),
        )
        .unwrap();
    }

    fn with_function(file: &str) -> Profile {
        let mut profile = profile(&["cpu"]);
        profile.string_table.extend(["main".to_owned(), file.to_owned()]);
        let n = profile.string_table.len() as i64;
        profile.function.push(Function {
            id: 0,
            name: n - 2,
            filename: n - 1,
            ..Function::default()
        });
        profile.location.push(Location {
            id: 7,
            line: vec![Line::default()],
            ..Location::default()
        });
        profile
    }

    #[test]
    fn test_scripting_names_get_their_file() {
        let mut rb = with_function("app.rb");
        prepare_as(&mut rb, "rbspy", 0);
        assert_eq!(string_at(&rb, rb.function[0].name), "app.rb main");
        let mut py = with_function("/usr/lib/x.py");
        prepare_as(&mut py, "pyspy", 0);
        assert_eq!(string_at(&py, py.function[0].name), "main");
        let mut go = with_function("main.go");
        prepare_as(&mut go, "gospy", 0);
        assert_eq!(string_at(&go, go.function[0].name), "main");
    }

    #[test]
    fn test_dotnet_function_ids_are_repaired() {
        let mut dotnet = with_function("x.cs");
        dotnet.string_table[2] = "alloc-samples".to_owned();
        prepare_as(&mut dotnet, "dotnetspy", 0);
        assert_eq!(dotnet.function[0].id, 7);
        assert_eq!(dotnet.location[0].line[0].function_id, 7);
        assert_eq!(dotnet.string_table[2], "alloc_samples");
    }

    #[test]
    fn test_scripting_names_are_made_once_per_pair_and_cut_to_the_symbol_limit() {
        // 3,000 functions naming one 3 MB file: one new string, of the
        // limit's length, whatever the number of functions.
        let mut profile = with_function(&"f".repeat(3_000_000));
        let template = profile.function[0];
        profile.function = vec![template; 3000];
        let limits = Limits::default();
        let budget = RequestBudget::unlimited();
        let before = profile.string_table.len();
        prepare(&mut profile, "rbspy", None, 0, &limits, &budget).unwrap();
        assert_eq!(profile.string_table.len(), before + 1);
        let name = string_at(&profile, profile.function[2999].name);
        assert_eq!(name.len(), limits.max_profile_symbol_value_length);
        assert!(name.ends_with("ff main"), "{name:.20}");
        assert!(budget.used() < 100_000, "{}", budget.used());
        // Each pair its own: refused once they pass the budget.
        let mut profile = with_function("app.rb");
        let template = profile.function[0];
        for n in 0..10_000 {
            profile.string_table.push(format!("{n}-{}", "x".repeat(1000)));
            profile.function.push(Function {
                name: profile.string_table.len() as i64 - 1,
                ..template
            });
        }
        let small = RequestBudget::standalone(1 << 20, "-distributor.max-request-memory");
        let err = prepare(&mut profile, "rbspy", None, 0, &limits, &small).unwrap_err();
        assert!(matches!(err, BudgetError::RequestTooLarge { .. }), "{err}");
    }

    #[test]
    fn test_concat_keeping_end_matches_cutting_the_whole() {
        let parts = ["héllo", " ", "wörld"];
        let whole: String = parts.concat();
        for max in 0..=whole.len() + 1 {
            let mut start = whole.len().saturating_sub(max);
            while !whole.is_char_boundary(start) {
                start += 1;
            }
            assert_eq!(concat_keeping_end(&parts, max), whole[start..], "{max}");
        }
    }
}
