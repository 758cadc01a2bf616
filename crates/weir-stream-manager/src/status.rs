//! What the streams of this replica are doing: the stream loop publishes each stream's
//! counts, state and lanes here ([`Tracker`]), the manager's `StreamService` serves them
//! (`weir streams`), and the notable changes go to the master as notices for the
//! `weir.streams` topic: each lane's lag periodically, a stall (messages wait and none
//! were read), and a takeover by a new owner.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::json;
use tonic::{Request, Response, Status};
use weir_core::events::stream_event;
use weir_proto::v1::stream_service_server::{StreamService, StreamServiceServer};
use weir_proto::v1::{self as wire};
use weir_worker::manager::{Background, BackgroundContext};
use weir_worker::notice::Notices;
use weir_worker::TaskContext;

use crate::budget::Budget;
use crate::source::Lane;

/// How often a stream refreshes its status (rates are over this interval).
pub const REFRESH: Duration = Duration::from_secs(1);
/// How often a stream asks its source for the lag.
pub const LAG_EVERY: Duration = Duration::from_secs(10);
/// How often each stream's lag goes out as an event.
pub const LAG_EVENT_EVERY: Duration = Duration::from_secs(30);
/// Messages waiting and none read for this long: the stream is stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(60);

/// The streams this replica runs, by task id.
#[derive(Clone)]
pub struct Registry {
    streams: Arc<Mutex<BTreeMap<String, wire::StreamStatus>>>,
    budget: Arc<Budget>,
    notices: Notices,
}

impl Registry {
    pub fn new(budget: Arc<Budget>, notices: Notices) -> Registry {
        Registry { streams: Arc::default(), budget, notices }
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, wire::StreamStatus>) -> T) -> T {
        f(&mut self.streams.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// What every stream is doing now.
    pub fn list(&self) -> wire::ListStreamsResponse {
        let (buffered, peak) = self.budget.used();
        wire::ListStreamsResponse {
            streams: self.with(|m| m.values().cloned().collect()),
            budget_bytes: self.budget.limit(),
            buffered_bytes: buffered,
            peak_bytes: peak,
        }
    }
}

/// The counts a stream keeps, as the loop hands them over.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub records: u64,
    pub bytes: u64,
    pub flushes: u64,
    pub duplicates: u64,
    pub dead_letters: u64,
    pub dropped: u64,
    pub buffered_records: u64,
    pub buffered_bytes: u64,
}

/// One stream's entry in the registry; removed when dropped.
pub struct Tracker {
    registry: Registry,
    key: String,
    /// The stream's metric label: `<namespace>/<job name>/<step>` (stable across attempts).
    label: crate::metrics::StreamLabels,
    lanes: Vec<Lane>,
    refreshed: Instant,
    last: Counts,
    lag_asked: Option<Instant>,
    lag_sent: Instant,
    /// Since when messages have waited with none read.
    waiting_since: Option<Instant>,
    stalled_sent: bool,
    last_read: Instant,
}

impl Tracker {
    /// Registers a stream; a stream started by a later attempt reports the takeover.
    pub fn start(
        registry: &Registry,
        task: &TaskContext,
        source: &str,
        lanes: &[Lane],
        landed: &BTreeMap<usize, i64>,
    ) -> Tracker {
        let key = task.task_id.to_string();
        let now = weir_proto::convert::timestamp(weir_runtime::now_ms());
        let status = wire::StreamStatus {
            job_id: task.job_id.to_string(),
            task_id: key.clone(),
            step_id: task.step_id.clone(),
            namespace: task.namespace.clone(),
            job_name: task.job_name.clone(),
            source: source.into(),
            fence: task.fence,
            state: "reading".into(),
            started: Some(now),
            lanes: lanes
                .iter()
                .enumerate()
                .map(|(i, l)| wire::LaneStatus {
                    name: l.name.clone(),
                    index: l.index,
                    position: -1,
                    landed: landed.get(&i).copied().unwrap_or(-1),
                    lag: -1,
                })
                .collect(),
            ..Default::default()
        };
        registry.with(|m| m.insert(key.clone(), status));
        if task.attempt > 1 {
            let lanes: Vec<_> = lanes
                .iter()
                .enumerate()
                .map(|(i, l)| json!({"lane": l.key(), "resumes_after": landed.get(&i)}))
                .collect();
            registry.notices.push(
                stream_event::REBALANCED,
                &key,
                json!({"job_id": task.job_id.to_string(), "step_id": task.step_id, "attempt": task.attempt, "source": source, "lanes": lanes}),
                weir_runtime::now_ms(),
            );
        }
        let now = Instant::now();
        let label = crate::metrics::StreamLabels {
            stream: crate::metrics::STREAMS
                .names
                .label(&format!("{}/{}/{}", task.namespace, task.job_name, task.step_id)),
        };
        Tracker {
            registry: registry.clone(),
            key,
            label,
            lanes: lanes.to_vec(),
            refreshed: now,
            last: Counts::default(),
            lag_asked: None,
            lag_sent: now,
            waiting_since: None,
            stalled_sent: false,
            last_read: now,
        }
    }

    /// Lanes joined the stream (`lanes` is all of them now).
    pub fn grow(&mut self, lanes: &[Lane]) {
        let new: Vec<Lane> = lanes[self.lanes.len().min(lanes.len())..].to_vec();
        self.update(|s| {
            s.lanes.extend(new.iter().map(|l| wire::LaneStatus {
                name: l.name.clone(),
                index: l.index,
                position: -1,
                landed: -1,
                lag: -1,
            }))
        });
        self.lanes = lanes.to_vec();
    }

    fn update(&self, f: impl FnOnce(&mut wire::StreamStatus)) {
        self.registry.with(|m| {
            if let Some(s) = m.get_mut(&self.key) {
                f(s)
            }
        })
    }

    /// Whether the refresh is due.
    pub fn due(&self) -> bool {
        self.refreshed.elapsed() >= REFRESH
    }

    /// Whether the lag should be asked for.
    pub fn lag_due(&self) -> bool {
        self.lag_asked.is_none_or(|t| t.elapsed() >= LAG_EVERY)
    }

    /// The loop's counts, state and each lane's last position read.
    pub fn refresh(&mut self, c: Counts, state: &str, positions: &[i64]) {
        let secs = self.refreshed.elapsed().as_secs_f64().max(1e-3);
        let (records, bytes) = (c.records - self.last.records, c.bytes - self.last.bytes);
        let m = &crate::metrics::STREAMS;
        m.records.get_or_create(&self.label).inc_by(records);
        m.bytes.get_or_create(&self.label).inc_by(bytes);
        m.buffered_bytes.set(i64::try_from(self.registry.budget.used().0).unwrap_or(i64::MAX));
        if records > 0 {
            self.last_read = Instant::now();
        }
        self.update(|s| {
            s.state = state.into();
            s.records = c.records;
            s.bytes = c.bytes;
            s.records_per_second = records as f64 / secs;
            s.bytes_per_second = bytes as f64 / secs;
            s.flushes = c.flushes;
            s.duplicates = c.duplicates;
            s.dead_letters = c.dead_letters;
            s.dropped = c.dropped;
            s.buffered_records = c.buffered_records;
            s.buffered_bytes = c.buffered_bytes;
            for (l, p) in s.lanes.iter_mut().zip(positions) {
                l.position = *p;
            }
        });
        self.last = c;
        self.refreshed = Instant::now();
    }

    /// A flush committed up to these positions.
    pub fn checkpoint(&mut self, landed: &BTreeMap<usize, i64>) {
        let now = weir_proto::convert::timestamp(weir_runtime::now_ms());
        self.update(|s| {
            s.last_checkpoint = Some(now);
            for (i, p) in landed {
                if let Some(l) = s.lanes.get_mut(*i) {
                    l.landed = *p;
                }
            }
        });
    }

    /// The source's answer to the lag: sends the periodic event, and the stall's.
    pub fn lag(&mut self, lag: &[Option<i64>], paused: bool) {
        self.lag_asked = Some(Instant::now());
        let known: i64 = lag.iter().flatten().sum();
        crate::metrics::STREAMS.lag.get_or_create(&self.label).set(known);
        self.update(|s| {
            for (l, v) in s.lanes.iter_mut().zip(lag) {
                l.lag = v.unwrap_or(-1);
            }
        });
        let lanes = || -> Vec<serde_json::Value> {
            self.lanes.iter().zip(lag).map(|(l, v)| json!({"lane": l.key(), "lag": v})).collect()
        };
        let waiting = lag.iter().any(|v| v.is_some_and(|v| v > 0));
        match (waiting, self.waiting_since) {
            (true, None) => self.waiting_since = Some(Instant::now()),
            (false, _) => {
                self.waiting_since = None;
                self.stalled_sent = false;
            }
            _ => {}
        }
        let stalled = self.waiting_since.is_some() && self.last_read.elapsed() >= STALL_AFTER;
        if stalled && !self.stalled_sent {
            self.stalled_sent = true;
            let since = self.last_read.elapsed().as_secs();
            self.registry.notices.push(
                stream_event::STALLED,
                &self.key,
                json!({"lanes": lanes(), "paused": paused, "seconds_without_a_record": since}),
                weir_runtime::now_ms(),
            );
        }
        if self.lag_sent.elapsed() >= LAG_EVENT_EVERY {
            self.lag_sent = Instant::now();
            let rate = self.registry.with(|m| m.get(&self.key).map(|s| s.records_per_second)).unwrap_or(0.0);
            self.registry.notices.push(
                stream_event::LAG,
                &self.key,
                json!({"lanes": lanes(), "records_per_second": rate}),
                weir_runtime::now_ms(),
            );
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let m = &crate::metrics::STREAMS;
        m.lag.remove(&self.label);
        m.buffered_bytes.set(i64::try_from(self.registry.budget.used().0).unwrap_or(i64::MAX));
        self.registry.with(|m| m.remove(&self.key));
    }
}

/// Serves `StreamService` on the manager's listen address.
#[derive(Clone)]
pub struct Streams {
    registry: Registry,
}

impl Streams {
    pub fn new(registry: Registry) -> Streams {
        Streams { registry }
    }
}

#[async_trait]
impl Background for Streams {
    async fn run(&self, _ctx: BackgroundContext) {}

    fn add_routes(&self, routes: &mut tonic::service::RoutesBuilder) {
        routes.add_service(StreamServiceServer::new(self.clone()));
    }
}

#[tonic::async_trait]
impl StreamService for Streams {
    async fn list_streams(
        &self,
        _req: Request<wire::ListStreamsRequest>,
    ) -> Result<Response<wire::ListStreamsResponse>, Status> {
        Ok(Response::new(self.registry.list()))
    }
}
