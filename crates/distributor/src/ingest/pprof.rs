//! pprof through `/ingest`: what Pyroscope's legacy path does to a pprof
//! before the distributor sees it. Old agents' times are fixed, scripting
//! languages get file names in function names, .NET profiles get their
//! function IDs back, and `__name__` is guessed from the sample types
//! (and the `sample_type_config` display names).

use std::collections::HashMap;

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

/// Applies the legacy fix-ups and returns the `__name__` of the series.
pub fn prepare(profile: &mut Profile, spy_name: &str, config: Option<&SampleTypeConfig>, from_nanos: i64) -> String {
    if profile.time_nanos <= YEAR_1970_END {
        profile.time_nanos = from_nanos;
    }
    match spy_name {
        "pyspy" | "rbspy" | "scripting" => prefix_file_names(profile, spy_name == "pyspy"),
        _ => {}
    }
    let dotnet = spy_name == "dotnetspy"
        || (spy_name == "unknown" && config.is_some_and(|config| config.contains_key("inuse-space")));
    if dotnet {
        repair_dotnet(profile);
    }
    metric_name(profile, config)
}

/// Function names become `"<file> <function>"`; py-spy's absolute file
/// names are left out.
fn prefix_file_names(profile: &mut Profile, skip_absolute: bool) {
    for index in 0..profile.function.len() {
        let function = &profile.function[index];
        let file = string_at(profile, function.filename);
        if file.is_empty() || (skip_absolute && file.starts_with('/')) {
            continue;
        }
        let name = format!("{file} {}", string_at(profile, function.name));
        profile.string_table.push(name);
        profile.function[index].name = profile.string_table.len() as i64 - 1;
    }
}

/// .NET agents sent every function ID as 0, one function per location:
/// give each function its location's ID. `-` in sample type names becomes
/// `_`.
fn repair_dotnet(profile: &mut Profile) {
    if profile.function.len() == profile.location.len() && profile.function.iter().all(|function| function.id == 0) {
        for (function, location) in profile.function.iter_mut().zip(&mut profile.location) {
            function.id = location.id;
            for line in &mut location.line {
                line.function_id = location.id;
            }
        }
    }
    for sample_type in &profile.sample_type {
        if let Ok(index) = usize::try_from(sample_type.r#type)
            && let Some(name) = profile.string_table.get_mut(index)
        {
            *name = name.replace('-', "_");
        }
    }
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
        prepare(&mut old, "gospy", None, 42);
        assert_eq!(old.time_nanos, 42);
        let mut fine = profile(&["cpu"]);
        fine.time_nanos = 1_700_000_000_000_000_000;
        prepare(&mut fine, "gospy", None, 42);
        assert_eq!(fine.time_nanos, 1_700_000_000_000_000_000);
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
        prepare(&mut rb, "rbspy", None, 0);
        assert_eq!(string_at(&rb, rb.function[0].name), "app.rb main");
        let mut py = with_function("/usr/lib/x.py");
        prepare(&mut py, "pyspy", None, 0);
        assert_eq!(string_at(&py, py.function[0].name), "main");
        let mut go = with_function("main.go");
        prepare(&mut go, "gospy", None, 0);
        assert_eq!(string_at(&go, go.function[0].name), "main");
    }

    #[test]
    fn test_dotnet_function_ids_are_repaired() {
        let mut dotnet = with_function("x.cs");
        dotnet.string_table[2] = "alloc-samples".to_owned();
        prepare(&mut dotnet, "dotnetspy", None, 0);
        assert_eq!(dotnet.function[0].id, 7);
        assert_eq!(dotnet.location[0].line[0].function_id, 7);
        assert_eq!(dotnet.string_table[2], "alloc_samples");
    }
}
