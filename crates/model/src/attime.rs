//! Times of Pyroscope's legacy HTTP APIs (`from`/`until` of `/ingest` and
//! `/pyroscope/render`): Unix time in s, ms, µs or ns (told
//! apart by the number of digits: 13 ms, 16 µs, 19 ns, else s), a date
//! `YYYYMMDD`, or `now` with one offset (`now-1h`, `now+30s`; units s,
//! m/min, h, d, w, M/mon = 30 d, y = 365 d). `_`, `,` and spaces are
//! ignored.

const SECOND: i64 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid time {input:?}: expected Unix time (s, ms, µs or ns), YYYYMMDD, or now with an offset such as now-1h")]
pub struct AtTimeError {
    input: String,
}

/// Parses a time as nanoseconds since the Unix epoch.
pub fn parse(input: &str, now_nanos: i64) -> Result<i64, AtTimeError> {
    let error = || AtTimeError {
        input: input.to_owned(),
    };
    let text: String = input.chars().filter(|c| !matches!(c, '_' | ',' | ' ')).collect();
    if text.is_empty() {
        return Ok(now_nanos);
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        if text.len() == 8
            && let Some(date) = parse_date(&text)
        {
            return Ok(date);
        }
        let value: i64 = text.parse().map_err(|_| error())?;
        return Ok(match text.len() {
            13 => value.saturating_mul(1_000_000),
            16 => value.saturating_mul(1_000),
            19 => value,
            _ => value.saturating_mul(SECOND),
        });
    }
    let offset = text.strip_prefix("now").ok_or_else(error)?;
    if offset.is_empty() {
        return Ok(now_nanos);
    }
    let (sign, rest) = match offset.as_bytes()[0] {
        b'+' => (1, &offset[1..]),
        b'-' => (-1, &offset[1..]),
        _ => return Err(error()),
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let amount: i64 = rest[..digits].parse().map_err(|_| error())?;
    let unit = match &rest[digits..] {
        "s" => SECOND,
        "m" | "min" => 60 * SECOND,
        "h" => 3600 * SECOND,
        "d" => 86_400 * SECOND,
        "w" => 7 * 86_400 * SECOND,
        "M" | "mon" => 30 * 86_400 * SECOND,
        "y" => 365 * 86_400 * SECOND,
        _ => return Err(error()),
    };
    Ok(now_nanos.saturating_add(sign * amount.saturating_mul(unit)))
}

/// `YYYYMMDD` at midnight UTC, if it is a real date.
fn parse_date(text: &str) -> Option<i64> {
    let year: i64 = text[0..4].parse().ok()?;
    let month: u32 = text[4..6].parse().ok()?;
    let day: u32 = text[6..8].parse().ok()?;
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day == 0 || day > days_in_month {
        return None;
    }
    // Dates past 2262 do not fit in nanoseconds.
    days_from_civil(year, month, day)
        .checked_mul(86_400)
        .and_then(|seconds| seconds.checked_mul(SECOND))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000 * SECOND;

    #[test]
    fn test_unix_time_units_by_digit_count() {
        assert_eq!(parse("1700000000", NOW), Ok(NOW));
        assert_eq!(parse("1700000000000", NOW), Ok(NOW));
        assert_eq!(parse("1700000000000000", NOW), Ok(NOW));
        assert_eq!(parse("1700000000000000000", NOW), Ok(NOW));
        assert_eq!(parse("1_700_000_000", NOW), Ok(NOW));
        assert_eq!(parse("0", NOW), Ok(0));
    }

    #[test]
    fn test_dates_and_now_offsets() {
        assert_eq!(parse("20231114", NOW), Ok(1_699_920_000 * SECOND));
        assert_eq!(parse("19700101", NOW), Ok(0));
        assert_eq!(parse("20240229", NOW), Ok(1_709_164_800 * SECOND));
        // Too late for nanoseconds: read as seconds, as any other number.
        assert_eq!(parse("99991231", NOW), Ok(99_991_231 * SECOND));
        // Not a date: 8 digits of seconds.
        assert_eq!(parse("20231399", NOW), Ok(20_231_399 * SECOND));
        assert_eq!(parse("now", NOW), Ok(NOW));
        assert_eq!(parse("", NOW), Ok(NOW));
        assert_eq!(parse("now-1h", NOW), Ok(NOW - 3600 * SECOND));
        assert_eq!(parse("now+30s", NOW), Ok(NOW + 30 * SECOND));
        assert_eq!(parse("now-5m", NOW), Ok(NOW - 300 * SECOND));
        assert_eq!(parse("now-5min", NOW), Ok(NOW - 300 * SECOND));
        assert_eq!(parse("now-1M", NOW), Ok(NOW - 30 * 86_400 * SECOND));
        assert_eq!(parse("now-2w", NOW), Ok(NOW - 14 * 86_400 * SECOND));
        assert_eq!(parse("now-1y", NOW), Ok(NOW - 365 * 86_400 * SECOND));
    }

    #[test]
    fn test_garbage_is_an_error() {
        for input in ["yesterday", "now-", "now-1", "now-1x", "now*1h", "12ab", "now-h"] {
            assert!(parse(input, NOW).is_err(), "{input}");
        }
        let err = parse("soon", NOW).unwrap_err();
        assert!(err.to_string().contains("\"soon\""));
    }
}
