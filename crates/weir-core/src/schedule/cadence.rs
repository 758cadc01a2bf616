//! When a schedule's slots fall: a cron expression read on the wall clock of an IANA time
//! zone. Parsing and matching are `croner`'s; time zones are `jiff`'s.
//!
//! Daylight saving follows Vixie cron and the Open Cron Pattern Specification, as `croner`
//! implements them. A slot whose wall-clock time does not exist that day (the clock jumps
//! forward over it) fires right after the jump if the expression names a fixed time
//! (`30 2 * * *` fires at 03:00 on the spring-forward night), and is not a slot at all if
//! the expression steps through every hour (`0 * * * *`: that hour did not happen). A
//! wall-clock time that happens twice (the clock goes back) is one slot for a fixed time,
//! and two for an expression that steps through every hour (`0 * * * *` fires 25 times
//! that day, once per real hour). So no slot is lost and none is doubled, and the data
//! intervals (from one slot to the next) tile real time with no gap and no overlap.

use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::Millis;

/// A parsed cron expression and the zone whose wall clock it is read on.
#[derive(Debug, Clone)]
pub struct Cadence {
    cron: Cron,
    tz: TimeZone,
}

const FIELDS_5: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
const FIELDS_6: [&str; 6] = ["second", "minute", "hour", "day-of-month", "month", "day-of-week"];

fn parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build()
}

/// What croner says, without its own prefix.
fn said(e: CronError) -> String {
    match e {
        CronError::ComponentError(m) | CronError::InvalidPattern(m) | CronError::IllegalCharacters(m) => m,
        other => other.to_string(),
    }
}

/// Why `expr` does not parse, naming the field at fault when one is.
fn explain(expr: &str, e: CronError) -> String {
    if expr.starts_with('@') {
        return format!(
            "cron expression {expr:?}: unknown shorthand (use @yearly, @annually, @monthly, @weekly, @daily or @hourly)"
        );
    }
    let parts: Vec<&str> = expr.split_whitespace().collect();
    let names: &[&str] = match parts.len() {
        5 => &FIELDS_5,
        6 => &FIELDS_6,
        n => {
            return format!(
                "cron expression {expr:?} has {n} fields; write 5 (minute hour day-of-month month day-of-week) \
                 or 6 (a second first)"
            )
        }
    };
    // Each field alone, the others left open: the first that fails is the one at fault.
    for (i, part) in parts.iter().enumerate() {
        let probe: Vec<&str> = (0..parts.len()).map(|j| if j == i { *part } else { "*" }).collect();
        if let Err(e) = parser().parse(&probe.join(" ")) {
            return format!("cron expression {expr:?}: the {} field {part:?} is invalid: {}", names[i], said(e));
        }
    }
    format!("cron expression {expr:?} is invalid: {}", said(e))
}

impl Cadence {
    /// Reads `expr` (5 or 6 fields, or `@daily`…) in `zone` (an IANA name such as
    /// `Europe/Berlin`, or `UTC`). The error names the field or the zone at fault.
    pub fn parse(expr: &str, zone: &str) -> Result<Cadence, String> {
        let expr = expr.trim();
        if expr.is_empty() {
            return Err("the cron expression is empty".into());
        }
        let cron = parser().parse(expr).map_err(|e| explain(expr, e))?;
        let tz = TimeZone::get(zone)
            .map_err(|_| format!("unknown time zone {zone:?} (use an IANA name such as Europe/Berlin, or UTC)"))?;
        Ok(Cadence { cron, tz })
    }

    /// The first slot strictly after `ms`, if there is one before the year 5000.
    pub fn next_after(&self, ms: Millis) -> Option<Millis> {
        let at = Timestamp::from_millisecond(ms).ok()?.to_zoned(self.tz.clone());
        self.cron.find_next_occurrence(&at, false).ok().map(|z| z.timestamp().as_millisecond())
    }

    /// The last slot strictly before `ms`.
    pub fn previous_before(&self, ms: Millis) -> Option<Millis> {
        let at = Timestamp::from_millisecond(ms).ok()?.to_zoned(self.tz.clone());
        self.cron.find_previous_occurrence(&at, false).ok().map(|z| z.timestamp().as_millisecond())
    }

    /// Up to `n` slots after `ms`, in order.
    pub fn upcoming(&self, ms: Millis, n: usize) -> Vec<Millis> {
        let mut out = Vec::with_capacity(n);
        let mut at = ms;
        while out.len() < n {
            match self.next_after(at) {
                Some(next) => {
                    out.push(next);
                    at = next;
                }
                None => break,
            }
        }
        out
    }

    /// `ms` on this zone's wall clock, RFC 3339 with the offset in force
    /// (`2026-03-29T03:00:00+02:00`).
    pub fn local_time(&self, ms: Millis) -> String {
        self.format(ms, "%Y-%m-%dT%H:%M:%S%:z")
    }

    /// The date `ms` falls on in this zone (`2026-03-29`).
    pub fn local_date(&self, ms: Millis) -> String {
        self.format(ms, "%Y-%m-%d")
    }

    fn format(&self, ms: Millis, pattern: &str) -> String {
        match Timestamp::from_millisecond(ms) {
            Ok(t) => t.to_zoned(self.tz.clone()).strftime(pattern).to_string(),
            Err(_) => ms.to_string(),
        }
    }
}

/// Reads an RFC 3339 time (`2026-03-01T00:00:00Z`, `2026-03-01T01:00:00+01:00`) as
/// milliseconds; the error names what was given.
pub fn parse_time(what: &str, text: &str) -> Result<Millis, String> {
    text.trim()
        .parse::<Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| format!("{what} {text:?} is not an RFC 3339 time such as 2026-03-01T00:00:00Z: {e}"))
}

/// Milliseconds as an RFC 3339 time in UTC; the error names `what` when the time is out of
/// range (before year -9999 or after 9999).
pub fn format_time(what: &str, ms: Millis) -> Result<String, String> {
    Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .map_err(|_| format!("{what} is out of range (years -9999 to 9999)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> Millis {
        parse_time("test time", text).expect("a valid time")
    }

    /// Every slot in [from, to), on the zone's wall clock.
    fn slots(c: &Cadence, from: &str, to: &str) -> Vec<String> {
        let (mut at, end) = (ms(from) - 1, ms(to));
        let mut out = Vec::new();
        while let Some(next) = c.next_after(at).filter(|n| *n < end) {
            out.push(c.local_time(next));
            at = next;
        }
        out
    }

    #[test]
    fn five_and_six_fields_and_shorthands() {
        let c = Cadence::parse("*/15 * * * *", "UTC").expect("valid");
        assert_eq!(
            c.upcoming(ms("2026-01-01T00:00:00Z"), 3),
            vec![ms("2026-01-01T00:15:00Z"), ms("2026-01-01T00:30:00Z"), ms("2026-01-01T00:45:00Z")]
        );
        let c = Cadence::parse("*/20 * * * * *", "UTC").expect("seconds first");
        assert_eq!(c.next_after(ms("2026-01-01T00:00:00Z")), Some(ms("2026-01-01T00:00:20Z")));
        let c = Cadence::parse("@hourly", "UTC").expect("shorthand");
        assert_eq!(c.next_after(ms("2026-01-01T00:59:59Z")), Some(ms("2026-01-01T01:00:00Z")));
        let c = Cadence::parse("0 9 * * MON-FRI", "America/New_York").expect("names");
        // 2026-01-03 is a Saturday: next is Monday 09:00 EST.
        assert_eq!(c.next_after(ms("2026-01-03T12:00:00Z")), Some(ms("2026-01-05T14:00:00Z")));
        assert_eq!(c.previous_before(ms("2026-01-05T14:00:00Z")), Some(ms("2026-01-02T14:00:00Z")));
    }

    #[test]
    fn bad_expressions_name_the_field_and_bad_zones_the_zone() {
        let e = Cadence::parse("61 * * * *", "UTC").expect_err("minute out of range");
        assert!(e.contains("the minute field \"61\""), "{e}");
        let e = Cadence::parse("0 0 * * * 8", "UTC").expect_err("day of week out of range");
        assert!(e.contains("the day-of-week field \"8\""), "{e}");
        let e = Cadence::parse("0 25 * * *", "UTC").expect_err("hour");
        assert!(e.contains("the hour field \"25\""), "{e}");
        let e = Cadence::parse("0 0 x * *", "UTC").expect_err("letters");
        assert!(e.contains("the day-of-month field \"x\""), "{e}");
        let e = Cadence::parse("* * *", "UTC").expect_err("too few");
        assert!(e.contains("has 3 fields"), "{e}");
        let e = Cadence::parse("@fortnightly", "UTC").expect_err("shorthand");
        assert!(e.contains("unknown shorthand"), "{e}");
        assert!(Cadence::parse("  ", "UTC").expect_err("empty").contains("empty"));
        let e = Cadence::parse("@daily", "Europe/Atlantis").expect_err("zone");
        assert!(e.contains("unknown time zone \"Europe/Atlantis\""), "{e}");
        let e = parse_time("start", "yesterday").expect_err("time");
        assert!(e.contains("start \"yesterday\" is not an RFC 3339 time"), "{e}");
    }

    #[test]
    fn berlin_spring_forward_loses_no_daily_slot_and_skips_the_missing_hour() {
        // 2026-03-29: 02:00 CET becomes 03:00 CEST.
        let daily = Cadence::parse("30 2 * * *", "Europe/Berlin").expect("valid");
        assert_eq!(
            slots(&daily, "2026-03-27T12:00:00Z", "2026-03-31T00:00:00Z"),
            vec!["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]
        );
        let hourly = Cadence::parse("0 * * * *", "Europe/Berlin").expect("valid");
        let day = slots(&hourly, "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z");
        assert_eq!(day.len(), 23, "{day:?}");
        assert_eq!(&day[1..3], ["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00"]);
    }

    #[test]
    fn berlin_fall_back_fires_a_daily_slot_once_and_every_real_hour() {
        // 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:00–02:59 happen twice.
        let daily = Cadence::parse("30 2 * * *", "Europe/Berlin").expect("valid");
        assert_eq!(
            slots(&daily, "2026-10-24T12:00:00Z", "2026-10-27T00:00:00Z"),
            vec!["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
        );
        let hourly = Cadence::parse("0 * * * *", "Europe/Berlin").expect("valid");
        let day = slots(&hourly, "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z");
        assert_eq!(day.len(), 25, "{day:?}");
        assert_eq!(&day[2..4], ["2026-10-25T02:00:00+02:00", "2026-10-25T02:00:00+01:00"]);
    }

    #[test]
    fn new_york_transitions() {
        // 2026-03-08: 02:00 EST becomes 03:00 EDT. 2026-11-01: 02:00 EDT becomes 01:00 EST.
        let daily = Cadence::parse("15 2 * * *", "America/New_York").expect("valid");
        assert_eq!(
            slots(&daily, "2026-03-07T12:00:00Z", "2026-03-09T12:00:00Z"),
            vec!["2026-03-08T03:00:00-04:00", "2026-03-09T02:15:00-04:00"]
        );
        let fold = Cadence::parse("30 1 * * *", "America/New_York").expect("valid");
        assert_eq!(
            slots(&fold, "2026-10-31T12:00:00Z", "2026-11-02T12:00:00Z"),
            vec!["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
        );
        let every = Cadence::parse("*/30 * * * *", "America/New_York").expect("valid");
        let fall = slots(&every, "2026-11-01T04:00:00Z", "2026-11-01T08:00:00Z");
        assert_eq!(
            fall,
            vec![
                "2026-11-01T00:00:00-04:00",
                "2026-11-01T00:30:00-04:00",
                "2026-11-01T01:00:00-04:00",
                "2026-11-01T01:30:00-04:00",
                "2026-11-01T01:00:00-05:00",
                "2026-11-01T01:30:00-05:00",
                "2026-11-01T02:00:00-05:00",
                "2026-11-01T02:30:00-05:00"
            ]
        );
    }
}
