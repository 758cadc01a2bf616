//! Scheduled collection end to end: schedules on the master over gRPC, slots firing across
//! a master killed and restarted (and a failover to a second master on PostgreSQL), catch-up
//! within and beyond the window, each overlap policy against runs that do not end until the
//! test ends them, backfills run twice, and bad specs refused with the field named.
//!
//! The slot arithmetic (daylight saving in Europe/Berlin and America/New_York, jitter,
//! catch-up, overlap decisions) is unit-tested in `weir_core::schedule`; here the slots
//! are seconds apart so a test takes seconds.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use weir_proto::convert;
use weir_proto::v1::{self, schedule_service_client::ScheduleServiceClient};
use weir_tests::*;

fn schedules(url: &str) -> ScheduleServiceClient<Channel> {
    ScheduleServiceClient::new(channel(url))
}

/// A schedule of one no-op step on the API queue (no manager runs it: its runs stay
/// pending until the test completes their task).
fn every(name: &str, cron: &str, overlap: v1::OverlapPolicy) -> v1::ScheduleSpec {
    let mut step = step("pull", "noop", "api", &[]);
    step.config_json = r#"{"since": "$schedule.interval_start", "until": "$schedule.interval_end"}"#.into();
    v1::ScheduleSpec {
        namespace: "sched".into(),
        name: name.into(),
        cron: cron.into(),
        time_zone: "Europe/Berlin".into(),
        overlap: overlap as i32,
        job: Some(v1::JobSpec { steps: vec![step], ..Default::default() }),
        ..Default::default()
    }
}

async fn create(s: &mut ScheduleServiceClient<Channel>, spec: v1::ScheduleSpec) -> v1::Schedule {
    let r = s.create_schedule(v1::CreateScheduleRequest { spec: Some(spec), ..Default::default() }).await;
    r.expect("created").into_inner().schedule.expect("schedule")
}

async fn describe(s: &mut ScheduleServiceClient<Channel>, name: &str) -> v1::Schedule {
    let r = s.describe_schedule(v1::DescribeScheduleRequest { namespace: "sched".into(), name: name.into() }).await;
    r.expect("described").into_inner().schedule.expect("schedule")
}

/// Waits until `check` holds for the schedule, or fails with what it last was.
async fn until(s: &mut ScheduleServiceClient<Channel>, name: &str, what: &str, check: impl Fn(&v1::Schedule) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = describe(s, name).await;
        if check(&d) {
            return;
        }
        assert!(Instant::now() < deadline, "schedule {name}: {what} did not happen: {d:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The jobs a schedule started, oldest first: (slot label, job).
async fn runs(jobs: &mut v1::job_service_client::JobServiceClient<Channel>, name: &str) -> Vec<(String, v1::Job)> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let r = jobs
            .list_jobs(v1::ListJobsRequest {
                namespace: "sched".into(),
                labels: [("weir.schedule".to_string(), name.to_string())].into(),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        for j in r.jobs {
            let slot = j.spec.as_ref().and_then(|s| s.labels.get("weir.schedule-slot").cloned()).unwrap_or_default();
            out.push((slot, j));
        }
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    out.sort_by(|a, b| a.1.spec.as_ref().map(|s| s.run_id.clone()).cmp(&b.1.spec.as_ref().map(|s| s.run_id.clone())));
    out
}

/// The run ids of the slots of `cron` every `step_s` seconds from `first` to `last`.
fn expected_run_ids(name: &str, first_ms: i64, last_ms: i64, step_ms: i64) -> Vec<String> {
    let mut out = Vec::new();
    let mut t = first_ms;
    while t <= last_ms {
        let ts = jiff::Timestamp::from_millisecond(t).expect("time");
        out.push(format!("{name}.{}", ts.strftime("%Y%m%dT%H%M%SZ")));
        t += step_ms;
    }
    out
}

fn run_ids(runs: &[(String, v1::Job)]) -> Vec<String> {
    runs.iter().map(|(_, j)| j.spec.as_ref().map(|s| s.run_id.clone()).unwrap_or_default()).collect()
}

/// Every slot from the first to the last handled has exactly one job: none lost across
/// the outage, none doubled.
fn assert_every_slot_once(name: &str, runs: &[(String, v1::Job)], last_slot_ms: i64, step_ms: i64) {
    let ids = run_ids(runs);
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{name}: a slot started twice: {ids:?}");
    let first = runs.first().and_then(|(_, j)| j.created_at).map(|t| convert::millis(&t)).expect("a first run");
    let first_slot = (first / step_ms) * step_ms;
    let expected = expected_run_ids(name, first_slot, last_slot_ms, step_ms);
    assert_eq!(ids, expected, "{name}: every slot from the first to the last handled runs once");
}

async fn killed_and_restarted(backend: Backend) {
    let store = StoreFixture::new(backend).await;
    let (url, master) = spawn_master(&store.url);
    wait_master(&url).await;
    let mut s = schedules(&url);
    let mut caught = every("caught-up", "*/2 * * * * *", v1::OverlapPolicy::AllowAll);
    caught.catchup_window = dur(3_600_000);
    create(&mut s, caught).await;
    let mut strict = every("on-time-only", "* * * * * *", v1::OverlapPolicy::AllowAll);
    strict.catchup_window = dur(0);
    create(&mut s, strict).await;
    until(&mut s, "caught-up", "two runs", |d| d.started >= 2).await;

    // Down for 13 s: six slots of the first pass unfired, and the second's older than its
    // window (a zero window still fires what is at most 10 s late).
    master.kill9().await;
    tokio::time::sleep(Duration::from_secs(13)).await;
    let (url, master) = spawn_master(&store.url);
    wait_master(&url).await;
    let mut s = schedules(&url);
    let restarted = weir_runtime::now_ms();
    until(&mut s, "caught-up", "the outage caught up", |d| {
        d.last_slot.is_some_and(|t| convert::millis(&t) >= restarted)
    })
    .await;
    until(&mut s, "on-time-only", "the missed slots counted", |d| d.missed > 0).await;

    let mut jobs = v1::job_service_client::JobServiceClient::new(channel(&url));
    let d = describe(&mut s, "caught-up").await;
    let last = convert::millis(&d.last_slot.expect("last slot"));
    let caught_runs: Vec<_> = runs(&mut jobs, "caught-up")
        .await
        .into_iter()
        .filter(|(_, j)| {
            j.spec.as_ref().is_some_and(|s| s.run_id <= expected_run_ids("caught-up", last, last, 2000)[0])
        })
        .collect();
    assert_every_slot_once("caught-up", &caught_runs, last, 2000);
    assert_eq!(d.missed, 0);
    assert!(caught_runs.len() >= 8, "runs before, during and after the outage: {}", caught_runs.len());
    // Each run's window is the two seconds before its slot, on Berlin's clock.
    let (slot, job) = caught_runs.last().expect("a run");
    let config = &job.spec.as_ref().expect("spec").steps[0].config_json;
    assert!(config.contains(&format!("\"until\":\"{slot}\"")), "{config} ends at {slot}");

    // The strict schedule: every slot of its range either ran once or was counted missed.
    let d = describe(&mut s, "on-time-only").await;
    let strict_runs = runs(&mut jobs, "on-time-only").await;
    let ids = run_ids(&strict_runs);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len(), "no slot twice");
    let first = strict_runs.first().and_then(|(_, j)| j.created_at).map(|t| convert::millis(&t)).expect("first");
    let last = convert::millis(&d.last_slot.expect("last slot"));
    let slots = (last - (first / 1000) * 1000) / 1000 + 1;
    assert_eq!(d.started + d.missed, u64::try_from(slots).expect("slots"), "{d:?}");
    assert!(d.missed >= 2, "slots older than 10 s after a 13 s outage: {}", d.missed);
    drop(master);
    store.cleanup().await;
}

#[tokio::test]
async fn a_master_killed_across_slots_catches_up_on_restart_sqlite() {
    killed_and_restarted(Backend::Sqlite).await;
}

#[tokio::test]
async fn schedules_survive_a_failover_to_a_second_master_postgres() {
    let store = StoreFixture::new(Backend::Postgres).await;
    let (url, first) = spawn_master(&store.url);
    wait_master(&url).await;
    let (standby_url, standby) = spawn_master(&store.url);
    let mut s = schedules(&url);
    create(&mut s, every("failover", "*/2 * * * * *", v1::OverlapPolicy::AllowAll)).await;
    until(&mut s, "failover", "two runs", |d| d.started >= 2).await;
    first.kill9().await;
    wait_master(&standby_url).await;
    let mut s = schedules(&standby_url);
    let took_over = weir_runtime::now_ms();
    until(&mut s, "failover", "slots fired by the second master", |d| {
        d.last_slot.is_some_and(|t| convert::millis(&t) >= took_over + 2000)
    })
    .await;
    let d = describe(&mut s, "failover").await;
    let last = convert::millis(&d.last_slot.expect("last slot"));
    let mut jobs = v1::job_service_client::JobServiceClient::new(channel(&standby_url));
    let all = runs(&mut jobs, "failover").await;
    let upto = expected_run_ids("failover", last, last, 2000)[0].clone();
    let before: Vec<_> = all.into_iter().filter(|(_, j)| j.spec.as_ref().is_some_and(|s| s.run_id <= upto)).collect();
    assert_every_slot_once("failover", &before, last, 2000);
    drop(standby);
    store.cleanup().await;
}

/// Completes the one task of a run (the test plays the API manager).
async fn finish_run(w: &mut v1::worker_service_client::WorkerServiceClient<Channel>) -> String {
    let leases = acquire(w, "api", 1, 2000).await;
    let l = leases.first().expect("a run's task to lease");
    complete(w, l).await.expect("completed");
    l.job_id.clone()
}

#[tokio::test]
async fn each_overlap_policy_against_runs_that_have_not_ended() {
    let store = StoreFixture::new(Backend::Sqlite).await;
    let master = InProcMaster::start(&store.url).await;
    let mut s = schedules(&master.url);
    let policies = [
        ("skip", v1::OverlapPolicy::Skip),
        ("buffer-one", v1::OverlapPolicy::BufferOne),
        ("buffer-all", v1::OverlapPolicy::BufferAll),
        ("allow-all", v1::OverlapPolicy::AllowAll),
        ("cancel-other", v1::OverlapPolicy::CancelOther),
        ("terminate-other", v1::OverlapPolicy::TerminateOther),
    ];
    for (name, p) in policies {
        create(&mut s, every(name, "* * * * * *", p)).await;
    }
    // Four slots pass; nothing runs the jobs.
    until(&mut s, "allow-all", "four runs", |d| d.started >= 4).await;
    let mut jobs = master.jobs();

    let d = describe(&mut s, "skip").await;
    assert_eq!((d.started, d.running_job_ids.len()), (1, 1), "{d:?}");
    assert!(d.skipped >= 2, "{d:?}");
    assert!(d.recent_runs.iter().any(|r| r.outcome == "skipped" && r.reason.contains("still going")), "{d:?}");

    let d = describe(&mut s, "buffer-one").await;
    assert_eq!((d.started, d.waiting), (1, 1), "{d:?}");
    assert!(d.skipped >= 1, "{d:?}");

    let d = describe(&mut s, "buffer-all").await;
    assert_eq!(d.started, 1, "{d:?}");
    assert!(d.waiting >= 2, "{d:?}");

    // cancel_other: each slot cancels the run before it and starts once it has ended;
    // terminate_other starts at once. Either way the newest run is the one left going
    // (cancel_other has none going for the moment between the cancel and the start).
    for name in ["cancel-other", "terminate-other"] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let all = runs(&mut jobs, name).await;
            let going: Vec<_> = all.iter().filter(|(_, j)| j.state == v1::JobState::Pending as i32).collect();
            let cancelled = all.iter().filter(|(_, j)| j.state == v1::JobState::Cancelled as i32).count();
            let newest = all.last().map(|(_, j)| j.id.clone());
            if all.len() >= 3
                && going.len() == 1
                && cancelled == all.len() - 1
                && Some(&going[0].1.id) == newest.as_ref()
            {
                break;
            }
            assert!(going.len() <= 1, "{name}: never two runs going: {all:?}");
            assert!(Instant::now() < deadline, "{name}: one run going, the others cancelled: {all:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Runs end: waiting slots start in their turn. Every other schedule is paused and its
    // runs cancelled, so only buffer-all's runs take leases.
    for (name, _) in policies.iter().filter(|(n, _)| *n != "buffer-all") {
        let req = v1::PauseScheduleRequest { namespace: "sched".into(), name: name.to_string(), note: "done".into() };
        let paused = s.pause_schedule(req).await.expect("paused").into_inner().schedule.expect("schedule");
        assert!(paused.paused && paused.note == "done" && paused.next_fires.is_empty(), "{paused:?}");
        for (_, j) in runs(&mut jobs, name).await.iter().filter(|(_, j)| j.state == v1::JobState::Pending as i32) {
            let req = v1::CancelJobRequest { job_id: j.id.clone(), reason: "test over".into() };
            jobs.cancel_job(req).await.expect("cancelled");
        }
    }
    let mut w = master.workers();
    let first = finish_run(&mut w).await;
    until(&mut s, "buffer-all", "the oldest waiting slot started", |d| d.started == 2).await;
    let second = finish_run(&mut w).await;
    until(&mut s, "buffer-all", "the next waiting slot started", |d| d.started == 3).await;
    assert_ne!(first, second);
    let all = runs(&mut jobs, "buffer-all").await;
    assert_eq!(all.len(), 3);
    let slots: Vec<&String> = all.iter().map(|(slot, _)| slot).collect();
    assert!(slots.windows(2).all(|p| p[0] < p[1]), "waiting slots start in order: {slots:?}");
    let done: Vec<i32> = all.iter().map(|(_, j)| j.state).collect();
    assert_eq!(done[..2], [v1::JobState::Succeeded as i32; 2], "{all:?}");
    master.stop().await;
    store.cleanup().await;
}

async fn backfill_twice(backend: Backend) {
    let store = StoreFixture::new(backend).await;
    let master = InProcMaster::start(&store.url).await;
    let mut s = schedules(&master.url);
    let mut hourly = every("hourly", "0 * * * *", v1::OverlapPolicy::Skip);
    hourly.job.as_mut().expect("job").params_json = r#"{"day": "$schedule.interval_start_date"}"#.into();
    let req = v1::CreateScheduleRequest { spec: Some(hourly), paused: true, note: "backfill only".into() };
    let created = s.create_schedule(req).await.expect("created").into_inner().schedule.expect("schedule");
    assert!(created.paused && created.next_fires.is_empty(), "{created:?}");

    let now = weir_runtime::now_ms();
    let hour = 3_600_000;
    let range = |from: i64, to: i64| v1::BackfillScheduleRequest {
        namespace: "sched".into(),
        name: "hourly".into(),
        start: Some(convert::timestamp(from)),
        end: Some(convert::timestamp(to)),
    };
    let start = (now / hour - 6) * hour + 1;
    // One slot's run id was already submitted by hand: that job is the slot's.
    let mut jobs = master.jobs();
    let slot = (now / hour - 2) * hour;
    let run_id =
        format!("hourly.{}", jiff::Timestamp::from_millisecond(slot).expect("time").strftime("%Y%m%dT%H%M%SZ"));
    let mut by_hand = job("hourly", vec![step("pull", "noop", "api", &[])]);
    (by_hand.namespace, by_hand.run_id) = ("sched".into(), run_id);
    let by_hand = submit(&mut jobs, by_hand).await;
    let first = s.backfill_schedule(range(start, now)).await.expect("backfill").into_inner();
    assert_eq!((first.slots, first.started, first.existing), (6, 5, 1), "{first:?}");
    assert!(first.job_ids.contains(&by_hand), "{first:?}");
    let again = s.backfill_schedule(range(start, now)).await.expect("again").into_inner();
    assert_eq!((again.slots, again.started, again.existing), (6, 0, 6), "{again:?}");
    assert_eq!(again.job_ids, first.job_ids, "the same slots, the same jobs");
    let all = runs(&mut jobs, "hourly").await;
    assert_eq!(all.len(), 5, "the job submitted by hand has no schedule label; the five others do");

    // Too many slots, a future end: refused with the reason.
    let e = s.backfill_schedule(range(now - 2000 * hour, now)).await.expect_err("too long");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("more than 1000 slots"), "{}", e.message());
    let e = s.backfill_schedule(range(now, now + 5 * hour)).await.expect_err("future");
    assert!(e.message().contains("in the future"), "{}", e.message());

    // Trigger now: a manual slot through the overlap policy.
    let t = s
        .trigger_schedule(v1::TriggerScheduleRequest { namespace: "sched".into(), name: "hourly".into() })
        .await
        .expect("triggered")
        .into_inner();
    assert_eq!(t.outcome, "started", "{t:?}");
    let t2 = s
        .trigger_schedule(v1::TriggerScheduleRequest { namespace: "sched".into(), name: "hourly".into() })
        .await
        .expect("triggered")
        .into_inner();
    assert_eq!(t2.outcome, "skipped", "the first manual run is still going (overlap: skip): {t2:?}");

    // Every event went to the outbox, in commit order (read once the master has let go of
    // the embedded store).
    master.stop().await;
    let st = store.open().await;
    let messages = st.messages_after(0, 1000).await.expect("messages");
    let kinds: Vec<&str> =
        messages.iter().filter(|(_, m)| m.topic == "weir.schedules").map(|(_, m)| m.kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"dev.weir.schedule.created"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "dev.weir.schedule.started").count(), 6, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "dev.weir.schedule.backfilled").count(), 2, "{kinds:?}");
    assert!(kinds.contains(&"dev.weir.schedule.skipped"), "{kinds:?}");
    drop(st);
    store.cleanup().await;
}

#[tokio::test]
async fn a_backfill_run_twice_starts_each_slot_once_postgres() {
    backfill_twice(Backend::Postgres).await;
}

#[tokio::test]
async fn a_backfill_run_twice_starts_each_slot_once_sqlite() {
    backfill_twice(Backend::Sqlite).await;
}

#[tokio::test]
async fn bad_schedules_are_refused_naming_the_problem() {
    let store = StoreFixture::new(Backend::Sqlite).await;
    let master = InProcMaster::start(&store.url).await;
    let mut s = schedules(&master.url);
    let refused = |e: tonic::Status| (e.code(), e.message().to_string());
    let mut bad = every("bad", "0 24 * * *", v1::OverlapPolicy::Skip);
    let (code, msg) = refused(
        s.create_schedule(v1::CreateScheduleRequest { spec: Some(bad.clone()), ..Default::default() })
            .await
            .expect_err("cron"),
    );
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(msg.contains("the hour field \"24\""), "{msg}");
    bad.cron = "@hourly".into();
    bad.time_zone = "Europe/Atlantis".into();
    let (_, msg) = refused(
        s.create_schedule(v1::CreateScheduleRequest { spec: Some(bad.clone()), ..Default::default() })
            .await
            .expect_err("zone"),
    );
    assert!(msg.contains("unknown time zone \"Europe/Atlantis\""), "{msg}");
    bad.time_zone = "UTC".into();
    bad.start = Some(convert::timestamp(2_000_000_000_000));
    bad.end = Some(convert::timestamp(1_900_000_000_000));
    let (_, msg) = refused(
        s.create_schedule(v1::CreateScheduleRequest { spec: Some(bad.clone()), ..Default::default() })
            .await
            .expect_err("range"),
    );
    assert!(msg.contains("is not after start"), "{msg}");
    bad.start = None;
    bad.end = None;
    bad.job.as_mut().expect("job").steps[0].kind = "teleport".into();
    let (_, msg) = refused(
        s.create_schedule(v1::CreateScheduleRequest { spec: Some(bad.clone()), ..Default::default() })
            .await
            .expect_err("job"),
    );
    assert!(msg.contains("job:") && msg.contains("teleport"), "{msg}");

    create(&mut s, every("dup", "@daily", v1::OverlapPolicy::Skip)).await;
    let e = s
        .create_schedule(v1::CreateScheduleRequest {
            spec: Some(every("dup", "@daily", v1::OverlapPolicy::Skip)),
            ..Default::default()
        })
        .await
        .expect_err("exists");
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    let e = s
        .describe_schedule(v1::DescribeScheduleRequest { namespace: "sched".into(), name: "nope".into() })
        .await
        .expect_err("none");
    assert_eq!(e.code(), tonic::Code::NotFound);
    let d = describe(&mut s, "dup").await;
    assert_eq!(d.next_fires.len(), 10, "the next ten fire times");
    s.delete_schedule(v1::DeleteScheduleRequest { namespace: "sched".into(), name: "dup".into() })
        .await
        .expect("deleted");
    let listed = s.list_schedules(v1::ListSchedulesRequest { namespace: "sched".into() }).await.expect("list");
    assert!(listed.into_inner().schedules.is_empty());
    master.stop().await;
    store.cleanup().await;
}
