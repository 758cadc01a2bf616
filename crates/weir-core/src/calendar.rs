//! Calendar dates from day counts, without a date library: what the CLI prints and how
//! datasets name their date partitions.

/// Days since 1970-01-01 as `YYYY-MM-DD` (proleptic Gregorian; Howard Hinnant's
/// civil-from-days algorithm).
pub fn date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_around_the_epoch_and_leap_days() {
        assert_eq!(super::date(0), "1970-01-01");
        assert_eq!(super::date(-1), "1969-12-31");
        assert_eq!(super::date(20_415), "2025-11-23");
        assert_eq!(super::date(11_016), "2000-02-29");
    }
}
