use serde_json::json;

use super::*;
use crate::validate::validate;

const H: Millis = 3_600_000;
const M: Millis = 60_000;

fn ms(text: &str) -> Millis {
    parse_time("test time", text).expect("a valid time")
}

fn spec(cron: &str, overlap: Overlap) -> ScheduleSpec {
    serde_json::from_value(json!({
        "name": "orders",
        "namespace": "shop",
        "cron": cron,
        "time_zone": "Europe/Berlin",
        "overlap": overlap,
        "job": {
            "template": "standard",
            "params": {
                "url": "http://127.0.0.1:1/orders",
                "since": "$schedule.interval_start",
                "until": "$schedule.interval_end",
                "day": "$schedule.interval_start_date",
                "records": "$.items",
            }
        }
    }))
    .expect("a spec")
}

fn hourly(overlap: Overlap) -> Schedule {
    Schedule::new(spec("0 * * * *", overlap)).expect("valid")
}

#[test]
fn a_spec_is_normalized_and_bad_ones_are_named() {
    let s = hourly(Overlap::Skip);
    assert_eq!((s.spec.job.namespace.as_str(), s.spec.job.name.as_str()), ("shop", "orders"));
    let mut utc = spec("@daily", Overlap::Skip);
    utc.time_zone.clear();
    assert_eq!(Schedule::new(utc).expect("valid").spec.time_zone, "UTC");

    let bad = |f: &dyn Fn(&mut ScheduleSpec)| {
        let mut s = spec("0 * * * *", Overlap::Skip);
        f(&mut s);
        Schedule::new(s).expect_err("invalid")
    };
    let e = bad(&|s| s.cron = "0 24 * * *".into());
    assert!(e.contains("the hour field \"24\""), "{e}");
    let e = bad(&|s| s.time_zone = "Mars/Olympus".into());
    assert!(e.contains("unknown time zone \"Mars/Olympus\""), "{e}");
    let e = bad(&|s| {
        s.start = Some("2026-05-01T00:00:00Z".into());
        s.end = Some("2026-04-01T00:00:00Z".into());
    });
    assert!(e.contains("end \"2026-04-01T00:00:00Z\" is not after start"), "{e}");
    let e = bad(&|s| s.job.run_id = "fixed".into());
    assert!(e.contains("job.run_id must be empty"), "{e}");
    let e = bad(&|s| s.job.namespace = "other".into());
    assert!(e.contains("differs from the schedule's namespace"), "{e}");
    let e = bad(&|s| s.job.params = Some(json!({"when": "$schedule.tomorrow"})));
    assert!(e.contains("unknown variable $schedule.tomorrow"), "{e}");
    let e = bad(&|s| s.cron = "0 0 30 2 *".into());
    assert!(e.contains("names no time"), "{e}");
    let e = bad(&|s| s.catchup_window = Some(Duration::from_secs(400 * 86_400)));
    assert!(e.contains("catchup_window"), "{e}");
    let e = bad(&|s| s.name = "no spaces".into());
    assert!(e.contains("schedule name"), "{e}");
    for o in [
        Overlap::Skip,
        Overlap::BufferOne,
        Overlap::BufferAll,
        Overlap::AllowAll,
        Overlap::CancelOther,
        Overlap::TerminateOther,
    ] {
        assert_eq!(serde_json::to_value(o).expect("json"), json!(o.as_str()), "one name in specs and events");
    }
}

#[test]
fn a_slot_job_takes_its_window_and_a_run_id_of_the_slot() {
    let s = hourly(Overlap::Skip);
    // The spring-forward night: the 03:00 CEST slot's window starts at 01:00 CET, one real
    // hour earlier.
    let slot = Slot::scheduled(ms("2026-03-29T01:00:00Z"));
    let job = s.job_for(slot).expect("job");
    let p = job.params.as_ref().expect("params");
    assert_eq!(p["since"], "2026-03-29T01:00:00+01:00");
    assert_eq!(p["until"], "2026-03-29T03:00:00+02:00");
    assert_eq!(p["day"], "2026-03-29");
    assert_eq!(p["records"], "$.items", "other $ strings stay as written");
    assert_eq!(job.run_id, "orders.20260329T010000Z");
    assert_eq!(job.labels.get(LABEL_SCHEDULE).map(String::as_str), Some("orders"));
    assert_eq!(s.job_for(slot).expect("again").run_id, job.run_id, "the same slot, the same run");
    let manual = s.job_for(Slot::manual(ms("2026-03-29T01:20:00.250Z"))).expect("manual");
    assert_eq!(manual.run_id, "orders.manual.20260329T012000.250Z");
    assert_eq!(manual.params.as_ref().expect("params")["since"], "2026-03-29T03:00:00+02:00");
    validate(job).expect("a slot's job validates like any other");
}

#[test]
fn slots_fire_on_time_and_not_before() {
    let s = hourly(Overlap::Skip);
    let t0 = ms("2026-06-01T10:20:00Z");
    let mut st = ScheduleState::new(t0, false, String::new());
    assert_eq!(st.next_fire(&s), Some(ms("2026-06-01T11:00:00Z")));
    assert!(st.due(&s, ms("2026-06-01T10:59:59Z"), false).is_empty());
    let d = st.due(&s, ms("2026-06-01T11:00:00.040Z"), false);
    assert_eq!(d, vec![Decision::Start(Slot::scheduled(ms("2026-06-01T11:00:00Z")))]);
    assert!(st.due(&s, ms("2026-06-01T11:00:01Z"), false).is_empty(), "a slot is handled once");
    assert_eq!(st.next_fire(&s), Some(ms("2026-06-01T12:00:00Z")));
}

#[test]
fn catch_up_fires_missed_slots_in_order_within_the_window() {
    let mut sp = spec("0 * * * *", Overlap::AllowAll);
    sp.catchup_window = Some(Duration::from_secs(6 * 3600));
    let s = Schedule::new(sp).expect("valid");
    let t0 = ms("2026-06-01T10:20:00Z");
    let mut st = ScheduleState::new(t0, false, String::new());
    // Down from 10:20 to 13:05: slots 11, 12 and 13 are all within six hours.
    let d = st.due(&s, ms("2026-06-01T13:05:00Z"), false);
    let starts: Vec<Millis> = d
        .iter()
        .map(|d| match d {
            Decision::Start(slot) => slot.time_ms,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(starts, vec![t0 + 40 * M, t0 + 100 * M, t0 + 160 * M]);
}

#[test]
fn slots_beyond_the_window_are_counted_as_missed() {
    let mut sp = spec("0 * * * *", Overlap::AllowAll);
    sp.catchup_window = Some(Duration::from_secs(3600));
    let s = Schedule::new(sp).expect("valid");
    let t0 = ms("2026-06-01T10:20:00Z");
    let mut st = ScheduleState::new(t0, false, String::new());
    let d = st.due(&s, ms("2026-06-01T13:05:00Z"), false);
    assert_eq!(
        d,
        vec![
            Decision::Missed { first_ms: ms("2026-06-01T11:00:00Z"), last_ms: ms("2026-06-01T12:00:00Z"), count: 2 },
            Decision::Start(Slot::scheduled(ms("2026-06-01T13:00:00Z"))),
        ]
    );
    assert_eq!(st.missed, 2);
    // A zero window fires nothing late, but a slot a moment late is on time.
    let mut sp = spec("0 * * * *", Overlap::AllowAll);
    sp.catchup_window = Some(Duration::ZERO);
    let s = Schedule::new(sp).expect("valid");
    let mut st = ScheduleState::new(t0, false, String::new());
    let d = st.due(&s, ms("2026-06-01T11:00:02Z"), false);
    assert_eq!(d, vec![Decision::Start(Slot::scheduled(ms("2026-06-01T11:00:00Z")))]);
    let d = st.due(&s, ms("2026-06-01T12:30:00Z"), false);
    assert!(matches!(d.as_slice(), [Decision::Missed { count: 1, .. }]), "{d:?}");
}

#[test]
fn catch_up_under_skip_starts_the_first_slot_and_skips_the_rest() {
    let s = hourly(Overlap::Skip);
    let mut st = ScheduleState::new(ms("2026-06-01T10:20:00Z"), false, String::new());
    let d = st.due(&s, ms("2026-06-01T12:05:00Z"), false);
    assert_eq!(
        d,
        vec![
            Decision::Start(Slot::scheduled(ms("2026-06-01T11:00:00Z"))),
            Decision::Skip(Slot::scheduled(ms("2026-06-01T12:00:00Z")), skip::RUNNING),
        ]
    );
    assert_eq!((st.skipped, st.cursor_ms), (1, ms("2026-06-01T12:00:00Z")));
}

/// A schedule with one job running, offered two slots one after the other.
fn two_slots_while_busy(overlap: Overlap) -> (ScheduleState, Vec<Decision>, Vec<Decision>, Uuid) {
    let s = hourly(overlap);
    let t0 = ms("2026-06-01T10:20:00Z");
    let mut st = ScheduleState::new(t0, false, String::new());
    let running = Uuid::from_u128(7);
    st.started(Slot::scheduled(t0), running, t0);
    let first = st.due(&s, t0 + 40 * M, true);
    let second = st.due(&s, t0 + 100 * M, true);
    (st, first, second, running)
}

#[test]
fn overlap_skip_and_allow_all() {
    let (st, first, second, _) = two_slots_while_busy(Overlap::Skip);
    assert!(matches!(first.as_slice(), [Decision::Skip(_, skip::RUNNING)]), "{first:?}");
    assert!(matches!(second.as_slice(), [Decision::Skip(_, skip::RUNNING)]), "{second:?}");
    assert_eq!(st.skipped, 2);
    let (_, first, second, _) = two_slots_while_busy(Overlap::AllowAll);
    assert!(matches!(first.as_slice(), [Decision::Start(_)]), "{first:?}");
    assert!(matches!(second.as_slice(), [Decision::Start(_)]), "{second:?}");
}

#[test]
fn overlap_buffer_one_keeps_the_first_waiting_slot() {
    let (mut st, first, second, _) = two_slots_while_busy(Overlap::BufferOne);
    let eleven = Slot::scheduled(ms("2026-06-01T11:00:00Z"));
    assert_eq!(first, vec![Decision::Buffer(eleven)]);
    assert!(matches!(second.as_slice(), [Decision::Skip(_, skip::ONE_WAITING)]), "{second:?}");
    assert_eq!(st.idle(), Some(eleven));
    assert!(st.running.is_empty());
    assert_eq!(st.idle(), None);
}

#[test]
fn overlap_buffer_all_runs_every_slot_in_turn() {
    let (mut st, first, second, _) = two_slots_while_busy(Overlap::BufferAll);
    assert!(matches!(first.as_slice(), [Decision::Buffer(_)]));
    assert!(matches!(second.as_slice(), [Decision::Buffer(_)]));
    assert_eq!(st.idle(), Some(Slot::scheduled(ms("2026-06-01T11:00:00Z"))));
    assert_eq!(st.idle(), Some(Slot::scheduled(ms("2026-06-01T12:00:00Z"))));
    assert_eq!(st.idle(), None);
}

#[test]
fn overlap_cancel_other_cancels_and_keeps_only_the_newest_slot() {
    let (mut st, first, second, running) = two_slots_while_busy(Overlap::CancelOther);
    let (eleven, twelve) = (Slot::scheduled(ms("2026-06-01T11:00:00Z")), Slot::scheduled(ms("2026-06-01T12:00:00Z")));
    assert_eq!(first, vec![Decision::Cancel(vec![running]), Decision::Buffer(eleven)]);
    assert_eq!(
        second,
        vec![Decision::Skip(eleven, skip::REPLACED), Decision::Cancel(vec![running]), Decision::Buffer(twelve)]
    );
    assert_eq!(st.idle(), Some(twelve));
}

#[test]
fn overlap_terminate_other_cancels_and_starts_at_once() {
    let (_, first, _, running) = two_slots_while_busy(Overlap::TerminateOther);
    assert_eq!(
        first,
        vec![Decision::Cancel(vec![running]), Decision::Start(Slot::scheduled(ms("2026-06-01T11:00:00Z")))]
    );
}

#[test]
fn a_paused_schedule_fires_nothing_and_resumes_from_now() {
    let s = hourly(Overlap::AllowAll);
    let t0 = ms("2026-06-01T10:20:00Z");
    let mut st = ScheduleState::new(t0, false, String::new());
    st.set_paused(true, "upstream maintenance".into(), t0);
    assert_eq!(st.next_fire(&s), None);
    assert!(st.due(&s, t0 + 3 * H, false).is_empty());
    st.set_paused(false, String::new(), t0 + 3 * H);
    assert_eq!(st.next_fire(&s), Some(ms("2026-06-01T14:00:00Z")), "no catch-up of paused slots");
}

#[test]
fn start_and_end_bound_the_slots_and_backfills_count_them() {
    let mut sp = spec("0 6 * * *", Overlap::AllowAll);
    sp.start = Some("2026-03-01T00:00:00+01:00".into());
    sp.end = Some("2026-03-31T23:00:00+02:00".into());
    let s = Schedule::new(sp).expect("valid");
    let st = ScheduleState::new(ms("2026-01-01T00:00:00Z"), false, String::new());
    assert_eq!(st.next_fire(&s), Some(ms("2026-03-01T05:00:00Z")));
    let march = s.slots_between(ms("2026-01-01T00:00:00Z"), ms("2026-12-31T00:00:00Z"), 100).expect("slots");
    assert_eq!(march.len(), 31);
    let after = ScheduleState::new(ms("2026-04-01T00:00:00Z"), false, String::new());
    assert_eq!(after.next_fire(&s), None, "nothing after the end");
    let e = s.slots_between(ms("2026-03-01T00:00:00Z"), ms("2026-03-31T00:00:00Z"), 10).expect_err("too many");
    assert!(e.contains("more than 10 slots"), "{e}");
    assert_eq!(s.upcoming(ms("2026-03-30T12:00:00Z"), 10).len(), 1);
}

#[test]
fn jitter_delays_each_slot_the_same_way_on_every_master() {
    let mut sp = spec("* * * * *", Overlap::AllowAll);
    sp.jitter = Some(Duration::from_secs(30));
    let s = Schedule::new(sp.clone()).expect("valid");
    let slot = ms("2026-06-01T10:00:00Z");
    let fire = s.fire_ms(slot);
    assert!((slot..slot + 30_000).contains(&fire), "{}", fire - slot);
    assert_eq!(Schedule::new(sp).expect("valid").fire_ms(slot), fire);
    let spread: std::collections::BTreeSet<Millis> =
        (0..20).map(|i| s.fire_ms(slot + i * M) - (slot + i * M)).collect();
    assert!(spread.len() > 10, "{spread:?}");
}

#[test]
fn recent_runs_stay_bounded_and_a_started_buffered_slot_is_one_entry() {
    let (mut st, _, _, _) = two_slots_while_busy(Overlap::BufferAll);
    let slot = st.idle().expect("a waiting slot");
    st.started(slot, Uuid::from_u128(8), ms("2026-06-01T12:30:00Z"));
    let entries: Vec<&RecentRun> = st.recent.iter().filter(|r| r.slot == slot).collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].outcome, RunOutcome::Started);
    for i in 0..30 {
        st.started(Slot::manual(i), Uuid::from_u128(100 + i as u128), i);
    }
    assert_eq!(st.recent.len(), RECENT_RUNS);
    let state: ScheduleState = serde_json::from_value(serde_json::to_value(&st).expect("json")).expect("back");
    assert_eq!(state, st, "the state survives the store");
}

#[test]
fn catch_up_under_cancel_or_terminate_runs_only_the_newest_slot() {
    for overlap in [Overlap::CancelOther, Overlap::TerminateOther] {
        let s = hourly(overlap);
        let mut st = ScheduleState::new(ms("2026-06-01T10:20:00Z"), false, String::new());
        let d = st.due(&s, ms("2026-06-01T13:05:00Z"), false);
        assert_eq!(
            d,
            vec![
                Decision::Skip(Slot::scheduled(ms("2026-06-01T11:00:00Z")), skip::REPLACED),
                Decision::Skip(Slot::scheduled(ms("2026-06-01T12:00:00Z")), skip::REPLACED),
                Decision::Start(Slot::scheduled(ms("2026-06-01T13:00:00Z"))),
            ],
            "{overlap:?}"
        );
    }
}
