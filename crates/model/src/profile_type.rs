//! Profile types: `<name>:<sample_type>:<sample_unit>:<period_type>:<period_unit>`,
//! e.g. `process_cpu:cpu:nanoseconds:cpu:nanoseconds`. Each sample type of a
//! pushed profile becomes its own series, labelled with its profile type.

use std::fmt;

use crate::labels::{
    DELTA, Labels, METRIC_NAME, ORDER, OTEL, PERIOD_TYPE, PERIOD_UNIT, PRIVATE_SERVICE_NAME, PROFILE_TYPE, SAMPLE_TYPE,
    SAMPLE_UNIT, SERVICE_NAME,
};
use crate::pprof::{Profile, string_at};

/// The five parts of a profile type ID; parts may be empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProfileType {
    pub name: String,
    pub sample_type: String,
    pub sample_unit: String,
    pub period_type: String,
    pub period_unit: String,
}

/// A profile type ID that does not have five `:`-separated parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "profile-type selection must be of the form <name>:<sample-type>:<sample-unit>:<period-type>:<period-unit>(:delta), got({parts}): {id:?}"
)]
pub struct ProfileTypeError {
    pub parts: usize,
    pub id: String,
}

impl ProfileType {
    /// Parses an ID of five `:`-separated parts; a sixth part (`delta`) is
    /// tolerated and ignored. Parts may be empty, as in Pyroscope.
    pub fn parse(id: &str) -> Result<Self, ProfileTypeError> {
        let parts: Vec<&str> = id.split(':').collect();
        match parts.as_slice() {
            [name, sample_type, sample_unit, period_type, period_unit]
            | [name, sample_type, sample_unit, period_type, period_unit, _] => Ok(Self {
                name: (*name).to_owned(),
                sample_type: (*sample_type).to_owned(),
                sample_unit: (*sample_unit).to_owned(),
                period_type: (*period_type).to_owned(),
                period_unit: (*period_unit).to_owned(),
            }),
            _ => Err(ProfileTypeError {
                parts: parts.len(),
                id: id.to_owned(),
            }),
        }
    }

    /// The ID, `name:sample_type:sample_unit:period_type:period_unit`.
    pub fn id(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}",
            self.name, self.sample_type, self.sample_unit, self.period_type, self.period_unit
        )
    }

    /// The profile types of a profile, one per sample type, under the
    /// profile group `name` (the series' `__name__`).
    pub fn all_of(name: &str, profile: &Profile) -> Vec<Self> {
        let (period_type, period_unit) = profile.period_type.as_ref().map_or(("", ""), |period| {
            (string_at(profile, period.r#type), string_at(profile, period.unit))
        });
        profile
            .sample_type
            .iter()
            .map(|sample_type| Self {
                name: name.to_owned(),
                sample_type: string_at(profile, sample_type.r#type).to_owned(),
                sample_unit: string_at(profile, sample_type.unit).to_owned(),
                period_type: period_type.to_owned(),
                period_unit: period_unit.to_owned(),
            })
            .collect()
    }

    /// The labels stored for the series of this profile type: the series
    /// labels without control labels, plus `__profile_type__`, `__type__`,
    /// `__unit__`, `__period_type__`, `__period_unit__` and
    /// `__service_name__`.
    pub fn series_labels(&self, series: &Labels) -> Labels {
        let mut labels = series.clone();
        for control in [DELTA, OTEL, ORDER] {
            labels.remove(control);
        }
        let service_name = labels.get(SERVICE_NAME).unwrap_or_default().to_owned();
        labels.set(PRIVATE_SERVICE_NAME, service_name);
        labels.set(PERIOD_TYPE, self.period_type.as_str());
        labels.set(PERIOD_UNIT, self.period_unit.as_str());
        labels.set(SAMPLE_TYPE, self.sample_type.as_str());
        labels.set(SAMPLE_UNIT, self.sample_unit.as_str());
        labels.set(PROFILE_TYPE, self.id());
        labels.set(METRIC_NAME, self.name.as_str());
        labels
    }
}

/// A series as stored: one sample type of a [`SeriesProfile`], with the
/// labels that name it.
///
/// [`SeriesProfile`]: crate::SeriesProfile
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedSeries {
    /// Index of the sample type (the value column) in the profile.
    pub sample_type_index: usize,
    pub profile_type: ProfileType,
    pub labels: Labels,
}

/// The series a profile pushed under `labels` is stored as: one per sample
/// type, skipping sample types whose values are all zero (they hold no
/// data). The profile group is the series' `__name__`.
pub fn typed_series(labels: &Labels, profile: &Profile) -> Vec<TypedSeries> {
    let name = labels.get(METRIC_NAME).unwrap_or_default();
    ProfileType::all_of(name, profile)
        .into_iter()
        .enumerate()
        .filter(|(index, _)| {
            profile
                .sample
                .iter()
                .any(|sample| sample.value.get(*index).is_some_and(|&value| value != 0))
        })
        .map(|(sample_type_index, profile_type)| TypedSeries {
            sample_type_index,
            labels: profile_type.series_labels(labels),
            profile_type,
        })
        .collect()
}

impl fmt::Display for ProfileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pprof::{Sample, ValueType};

    #[test]
    fn test_parse_profile_type_ids() {
        let cpu = ProfileType::parse("process_cpu:cpu:nanoseconds:cpu:nanoseconds").unwrap();
        assert_eq!(cpu.name, "process_cpu");
        assert_eq!(cpu.period_unit, "nanoseconds");
        assert_eq!(cpu.id(), "process_cpu:cpu:nanoseconds:cpu:nanoseconds");
        let memory = ProfileType::parse("memory:inuse_space:bytes::").unwrap();
        assert_eq!(memory.period_type, "");
        assert_eq!(
            ProfileType::parse("memory:alloc_space:bytes:space:bytes:delta")
                .unwrap()
                .id(),
            "memory:alloc_space:bytes:space:bytes"
        );
        assert_eq!(ProfileType::parse(":b:c:d:e").unwrap().name, "");
        for bad in ["", "cpu", "a:b:c:d", "a:b:c:d:e:f:g"] {
            let err = ProfileType::parse(bad).unwrap_err();
            assert!(err.to_string().contains("must be of the form"), "{err}");
        }
    }

    #[test]
    fn test_profile_types_and_series_labels_of_a_profile() {
        let profile = Profile {
            sample_type: vec![ValueType { r#type: 1, unit: 2 }, ValueType { r#type: 3, unit: 4 }],
            period_type: Some(ValueType { r#type: 3, unit: 4 }),
            string_table: ["", "samples", "count", "cpu", "nanoseconds"]
                .map(String::from)
                .to_vec(),
            ..Profile::default()
        };
        let mut profile = profile;
        let types = ProfileType::all_of("process_cpu", &profile);
        let ids: Vec<String> = types.iter().map(ProfileType::id).collect();
        assert_eq!(
            ids,
            [
                "process_cpu:samples:count:cpu:nanoseconds",
                "process_cpu:cpu:nanoseconds:cpu:nanoseconds"
            ]
        );
        let series = Labels::from_pairs([
            ("__name__", "process_cpu"),
            ("service_name", "app"),
            ("__delta__", "false"),
        ]);
        assert_eq!(
            types[1].series_labels(&series).render(),
            r#"{__name__="process_cpu", __period_type__="cpu", __period_unit__="nanoseconds", __profile_type__="process_cpu:cpu:nanoseconds:cpu:nanoseconds", __service_name__="app", __type__="cpu", __unit__="nanoseconds", service_name="app"}"#
        );

        // Only sample types with a non-zero value are stored.
        profile.sample = vec![Sample {
            location_id: vec![],
            value: vec![0, 5],
            label: vec![],
        }];
        let stored = typed_series(&series, &profile);
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].sample_type_index, 1);
        assert_eq!(stored[0].labels, types[1].series_labels(&series));
    }
}
