//! Unix time as a date and time of day in UTC, "2024-05-01 13:45:07 UTC", for the history.

/// Days since 1970-01-01 as (year, month 1-12, day 1-31) of the proleptic Gregorian
/// calendar. Counts in 400-year eras (146,097 days each), from 0000-03-01 so that the
/// leap day ends a year.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `unix` (seconds since 1970-01-01 00:00:00 UTC) as "YYYY-MM-DD HH:MM:SS UTC".
pub fn format(unix: u64) -> String {
    let secs = unix as i64;
    let (year, month, day) = civil(secs.div_euclid(86_400));
    let of_day = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(format(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format(951_868_799), "2000-02-29 23:59:59 UTC");
        assert_eq!(format(1_709_251_199), "2024-02-29 23:59:59 UTC");
        assert_eq!(format(1_714_571_107), "2024-05-01 13:45:07 UTC");
        assert_eq!(format(4_107_542_400), "2100-03-01 00:00:00 UTC");
    }

    /// Day by day over four centuries, the date advances as a calendar does.
    #[test]
    fn every_day_follows_the_one_before() {
        let leap = |y: i64| y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        let mut at = (1970, 1, 1);
        for days in 1..146_097 {
            let (y, m, d) = at;
            let length = match m {
                2 if leap(y) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            at = match (d == length, m == 12) {
                (false, _) => (y, m, d + 1),
                (true, false) => (y, m + 1, 1),
                (true, true) => (y + 1, 1, 1),
            };
            assert_eq!(civil(days), at, "day {days}");
        }
    }
}
