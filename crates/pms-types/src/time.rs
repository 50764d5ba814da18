//! Date formats SIP and IMDN need (RFC 1123 for `Date`, RFC 3339 for IMDN `datetime`), from
//! Unix milliseconds, without a calendar dependency.

use crate::UnixMillis;

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = u32::try_from(day_of_year - (153 * month_index + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    })
    .unwrap_or(1);
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

struct Parts {
    year: i64,
    month: u32,
    day: u32,
    weekday: usize,
    hour: u64,
    minute: u64,
    second: u64,
}

fn parts(at: UnixMillis) -> Parts {
    let secs = at.0 / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (year, month, day) = civil_from_days(days);
    let in_day = secs % 86_400;
    Parts {
        year,
        month,
        day,
        // 1970-01-01 was a Thursday.
        weekday: usize::try_from((days + 4).rem_euclid(7)).unwrap_or(0),
        hour: in_day / 3600,
        minute: in_day % 3600 / 60,
        second: in_day % 60,
    }
}

/// `Fri, 27 Nov 2026 17:35:17 GMT`.
pub fn rfc1123(at: UnixMillis) -> String {
    const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let p = parts(at);
    let weekday = WEEKDAYS.get(p.weekday).copied().unwrap_or("Thu");
    let month = MONTHS.get(p.month as usize - 1).copied().unwrap_or("Jan");
    format!(
        "{weekday}, {:02} {month} {} {:02}:{:02}:{:02} GMT",
        p.day, p.year, p.hour, p.minute, p.second
    )
}

/// `2026-11-27T17:35:17.123Z`.
pub fn rfc3339_millis(at: UnixMillis) -> String {
    let p = parts(at);
    format!(
        "{}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        p.year,
        p.month,
        p.day,
        p.hour,
        p.minute,
        p.second,
        at.0 % 1000
    )
}

/// `2026-11-27T17:35:17Z`.
pub fn rfc3339(at: UnixMillis) -> String {
    let p = parts(at);
    format!(
        "{}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        p.year, p.month, p.day, p.hour, p.minute, p.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants_format_as_expected() {
        assert_eq!(rfc1123(UnixMillis(0)), "Thu, 01 Jan 1970 00:00:00 GMT");
        // 2026-11-27T17:35:17Z
        assert_eq!(
            rfc1123(UnixMillis(1_795_800_917_000)),
            "Fri, 27 Nov 2026 17:35:17 GMT"
        );
        assert_eq!(
            rfc3339(UnixMillis(1_795_800_917_000)),
            "2026-11-27T17:35:17Z"
        );
        // Leap day.
        assert_eq!(rfc3339(UnixMillis(951_782_400_000)), "2000-02-29T00:00:00Z");
    }
}
