//! `SelectSeries`: profiles as time series. A point at `t = start + k·step`
//! covers the profiles of `(t − step, t]`; its value is the sum (or the
//! average) of their totals. Series are the profiles' labels projected on
//! `group_by` (none: one series), sorted by labels; `limit` keeps the
//! series with the largest sums. Steps without profiles have no point.

use std::collections::BTreeMap;

use flamedb_model::{Label, Labels};

use crate::querier::ListedProfile;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    Sum,
    Average,
}

/// One series: its labels and `(timestamp ms, value)` points in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeSeries {
    pub labels: Labels,
    pub points: Vec<(i64, f64)>,
}

/// Buckets `profiles` (each counted once already) into series.
pub fn time_series(
    profiles: &[ListedProfile],
    start_ms: i64,
    step_ms: i64,
    group_by: &[String],
    aggregation: Aggregation,
    limit: Option<usize>,
) -> Vec<TimeSeries> {
    let step_ms = step_ms.max(1);
    // series → bucket index → (sum, count)
    let mut series: BTreeMap<Labels, BTreeMap<i64, (i64, i64)>> = BTreeMap::new();
    for profile in profiles {
        let labels = Labels::new(
            profile
                .labels
                .iter()
                .filter(|label| group_by.contains(&label.name))
                .map(|label| Label::new(label.name.clone(), label.value.clone()))
                .collect(),
        );
        let offset = profile.time_ms.saturating_sub(start_ms).max(0);
        let bucket = offset.div_euclid(step_ms) + i64::from(offset.rem_euclid(step_ms) != 0);
        let slot = series.entry(labels).or_default().entry(bucket).or_insert((0, 0));
        slot.0 = slot.0.saturating_add(profile.total);
        slot.1 += 1;
    }
    let mut out: Vec<(i64, TimeSeries)> = series
        .into_iter()
        .map(|(labels, buckets)| {
            let sum = buckets
                .values()
                .fold(0i64, |total, (sum, _)| total.saturating_add(*sum));
            let points = buckets
                .into_iter()
                .map(|(bucket, (sum, count))| {
                    let value = match aggregation {
                        Aggregation::Sum => sum as f64,
                        Aggregation::Average => sum as f64 / count as f64,
                    };
                    (start_ms.saturating_add(bucket.saturating_mul(step_ms)), value)
                })
                .collect();
            (sum, TimeSeries { labels, points })
        })
        .collect();
    if let Some(limit) = limit
        && out.len() > limit
    {
        // Largest sums first; ties keep label order.
        let mut ranked: Vec<usize> = (0..out.len()).collect();
        ranked.sort_by(|&a, &b| out[b].0.cmp(&out[a].0).then(a.cmp(&b)));
        let mut keep = vec![false; out.len()];
        for &index in &ranked[..limit] {
            keep[index] = true;
        }
        let mut index = 0;
        out.retain(|_| {
            let kept = keep[index];
            index += 1;
            kept
        });
    }
    out.into_iter().map(|(_, series)| series).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use flamedb_model::ProfileId;

    use super::*;

    fn profile(service: &str, time_ms: i64, total: i64) -> ListedProfile {
        ListedProfile {
            id: ProfileId::default(),
            labels: Arc::new(Labels::from_pairs([("service_name", service), ("env", "prod")])),
            time_ms,
            total,
        }
    }

    #[test]
    fn test_points_cover_the_step_before_them_golden() {
        // start 1000, step 10: points at 1000, 1010, 1020, ...
        let profiles = [
            profile("a", 1000, 1), // (990, 1000] → 1000
            profile("a", 1001, 2), // (1000, 1010] → 1010
            profile("a", 1010, 3), // → 1010
            profile("a", 1011, 4), // → 1020
            profile("b", 1030, 5), // → 1030
        ];
        let series = time_series(
            &profiles,
            1000,
            10,
            &["service_name".to_owned()],
            Aggregation::Sum,
            None,
        );
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].labels, Labels::from_pairs([("service_name", "a")]));
        assert_eq!(series[0].points, vec![(1000, 1.0), (1010, 5.0), (1020, 4.0)]);
        assert_eq!(series[1].points, vec![(1030, 5.0)]);

        let average = time_series(&profiles[1..3], 1000, 10, &[], Aggregation::Average, None);
        assert_eq!(average.len(), 1);
        assert!(average[0].labels.is_empty());
        assert_eq!(average[0].points, vec![(1010, 2.5)]);
    }

    #[test]
    fn test_limit_keeps_the_largest_series_in_label_order() {
        let profiles = [profile("a", 1000, 1), profile("b", 1000, 9), profile("c", 1000, 5)];
        let series = time_series(
            &profiles,
            1000,
            10,
            &["service_name".to_owned()],
            Aggregation::Sum,
            Some(2),
        );
        let names: Vec<&str> = series.iter().map(|s| s.labels.get("service_name").unwrap()).collect();
        assert_eq!(names, ["b", "c"]);
    }
}
