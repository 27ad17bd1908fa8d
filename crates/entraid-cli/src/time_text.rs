//! Times and durations as people read them: `2026-12-06T07:40:00Z`, `59m 48s`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since 1970 as an RFC 3339 UTC time.
pub(crate) fn utc(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// A `SystemTime` as seconds since 1970 (negative before).
pub(crate) fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// The calendar date of a day count since 1970-01-01 (proleptic Gregorian; Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `1h 2m`, `59m 48s`, `3s`, `250ms`.
pub(crate) fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, s % 3600 / 60),
    }
}

/// A signed offset in seconds: `40s ahead`, `3m 0s behind`; within a second: `level`.
pub(crate) fn offset(seconds: i64, ahead: &str, behind: &str, level: &str) -> String {
    if seconds.abs() <= 1 {
        return level.to_owned();
    }
    let magnitude = duration(Duration::from_secs(seconds.unsigned_abs()));
    if seconds >= 0 {
        format!("{magnitude} {ahead}")
    } else {
        format!("{magnitude} {behind}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_matches_known_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(2_000_000_000), "2033-05-18T03:33:20Z");
        assert_eq!(utc(-1), "1969-12-31T23:59:59Z");
        assert_eq!(utc(1_796_541_600), "2026-12-06T07:20:00Z");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(Duration::from_millis(250)), "250ms");
        assert_eq!(duration(Duration::from_secs(3)), "3s");
        assert_eq!(duration(Duration::from_secs(3588)), "59m 48s");
        assert_eq!(duration(Duration::from_secs(5400)), "1h 30m");
        assert_eq!(offset(-180, "ahead", "behind", "level"), "3m 0s behind");
        assert_eq!(
            offset(1, "ahead", "behind", "level"),
            "level",
            "a second is the measurement's noise"
        );
    }
}
