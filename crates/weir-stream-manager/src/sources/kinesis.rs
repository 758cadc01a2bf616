//! Amazon Kinesis Data Streams. A lane is a shard. The task reads every shard of the
//! stream with GetRecords, one call at a time, round robin, at most five calls a second
//! per shard (Kinesis's limit); a child shard is read only once its parents were read to
//! their end, so each partition key keeps its order across a reshard, and the shards a
//! reshard creates while the stream runs join it as new lanes.
//!
//! Kinesis keeps no consumer positions, and its sequence numbers are decimal strings of up
//! to 128 digits: too long for an input key's name, which holds a Kafka range. So the
//! loop's positions are ordinals counted in this lease, and each flush's identity names
//! its shard and the first and last sequence numbers it holds
//! (`kinesis://<stream>/<shard>/<first>-<last>`); the sinks record that identity with the
//! rows (`Sinks::input_identities`), and a restart reads each shard after the highest
//! sequence number landed: a replay reproduces the same inputs, never adds rows.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_kinesis::error::{DisplayErrorContext, SdkError};
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use aws_sdk_kinesis::Client;
use serde_json::{json, Value};
use weir_core::stream::{Bound, SourceSpec, StreamStep};
use weir_worker::{StepError, TaskContext};

use crate::budget::Budget;
use crate::land::Landing;
use crate::source::{Delivery, Event, Lane, Source};

/// Kinesis allows five GetRecords calls a second per shard.
const SHARD_CALL_GAP: Duration = Duration::from_millis(200);
/// After a throttled call, the shard waits this long.
const THROTTLED: Duration = Duration::from_secs(1);
/// The most records one GetRecords call returns (Kinesis's own limit).
const MAX_LIMIT: u64 = 10_000;
/// Calls give up after this (per attempt; the SDK retries twice more).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Where a stream without a region setting is.
const DEFAULT_REGION: &str = "us-east-1";

fn unavailable(what: &str, e: impl std::error::Error) -> StepError {
    crate::source::unavailable("kinesis", what, DisplayErrorContext(e))
}

/// A Kinesis client for `region` (and a custom `endpoint`, an emulator), signing with
/// `credentials`: hyper with rustls on ring, the SDK's retries, a timeout per attempt.
pub fn client(region: &str, endpoint: Option<&str>, credentials: aws_credential_types::Credentials) -> Client {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
    let timeouts = aws_sdk_kinesis::config::timeout::TimeoutConfig::builder()
        .connect_timeout(CALL_TIMEOUT)
        .operation_attempt_timeout(CALL_TIMEOUT)
        .build();
    let mut b = aws_sdk_kinesis::Config::builder()
        .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
        .region(aws_sdk_kinesis::config::Region::new(region.to_string()))
        .credentials_provider(credentials)
        .timeout_config(timeouts)
        .http_client(http);
    if let Some(e) = endpoint {
        b = b.endpoint_url(e);
    }
    Client::from_conf(b.build())
}

/// The step's credentials: its reference (`access_key_id`, `secret_access_key`, optional
/// `session_token`), else the standard `AWS_*` variables; an emulator (a custom endpoint)
/// takes any.
fn credentials(
    creds: Option<&weir_core::files::CredentialsRef>,
    endpoint: Option<&str>,
) -> Result<aws_credential_types::Credentials, StepError> {
    let make = |id: String, key: String, token: Option<String>| {
        aws_credential_types::Credentials::new(id, key, token, None, "weir")
    };
    if let Some(c) = creds {
        let mut s = crate::source::secrets(c, &["access_key_id", "secret_access_key"], &["session_token"])?;
        let (id, key) =
            (s.remove("access_key_id").unwrap_or_default(), s.remove("secret_access_key").unwrap_or_default());
        return Ok(make(id, key, s.remove("session_token")));
    }
    match (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY")) {
        (Ok(id), Ok(key)) => Ok(make(id, key, std::env::var("AWS_SESSION_TOKEN").ok())),
        _ if endpoint.is_some() => Ok(make("weir".into(), "weir".into(), None)),
        _ => Err(StepError::permanent(
            "bad_config",
            "source.credentials: give a reference holding access_key_id and secret_access_key (or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
        )),
    }
}

/// How many records one GetRecords call asks for: at most `max`, and, once the records'
/// size is known, no more than the stream's budget share holds — a call returns up to
/// 10 MiB, which a backlog would otherwise fill every time.
fn call_limit(max: u64, share: u64, record_bytes: u64) -> i32 {
    let fits = share.checked_div(record_bytes).map_or(max, |n| n.max(1));
    max.min(fits).min(MAX_LIMIT) as i32
}

/// Compares two sequence numbers (decimal strings without leading zeros).
fn seq_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// The input identity of a shard's range of sequence numbers.
pub fn identity(stream: &str, shard: &str, first: &str, last: &str) -> String {
    format!("kinesis://{stream}/{shard}/{first}-{last}")
}

/// The highest sequence number landed per shard, from the sinks' input identities.
pub fn landed(stream: &str, identities: &[Vec<String>]) -> BTreeMap<String, String> {
    let prefix = format!("kinesis://{stream}/");
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for id in identities.iter().flatten() {
        let Some((shard, range)) = id.strip_prefix(&prefix).and_then(|r| r.split_once('/')) else { continue };
        let Some((first, last)) = range.split_once('-') else { continue };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(first) || !digits(last) || shard.contains('/') {
            continue;
        }
        match out.get(shard) {
            Some(have) if seq_cmp(have, last).is_ge() => {}
            _ => {
                out.insert(shard.to_string(), last.to_string());
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A parent is not read to its end yet.
    Waiting,
    Reading,
    /// Closed by a reshard and read to its end.
    Done,
}

struct Shard {
    id: String,
    parents: Vec<String>,
    state: State,
    iterator: Option<String>,
    /// The next ordinal (the loop's position) in this lease.
    ordinal: i64,
    /// Ordinal → sequence number of the records not yet committed (for identities).
    seqs: BTreeMap<i64, String>,
    /// The last sequence number handed over: an expired iterator is taken again after it.
    last: Option<String>,
    /// No call before then (Kinesis's per-shard limit, an empty shard, a throttle).
    not_before: Instant,
    behind_ms: Option<i64>,
    /// The End reported for the shard's current state, not repeated.
    end_told: bool,
}

/// A Kinesis source, connected.
pub struct Kinesis {
    client: Client,
    stream: String,
    lanes: Vec<Lane>,
    shards: Vec<Shard>,
    /// Records fetched, not handed over yet.
    ready: VecDeque<Delivery>,
    ends: Vec<usize>,
    /// The round robin's next shard.
    turn: usize,
    /// The most records one call asks for: the flush size, at most Kinesis's 10,000.
    limit: u64,
    /// This stream's share of the manager's budget for what a call returns.
    share: u64,
    /// The average record size seen, for the next call's limit.
    record_bytes: u64,
    /// Highest landed sequence number per shard (the sinks' identities).
    landed: BTreeMap<String, String>,
    from: Option<Bound>,
    /// Shards joined while running.
    grown: bool,
}

/// The shard number in `shardId-000000000007`, for the lane's index.
fn shard_index(id: &str) -> i32 {
    id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

impl Kinesis {
    /// Connects and lists the stream's shards (a wrong address, credential or stream
    /// fails here, naming it).
    pub async fn connect(step: &StreamStep, _task: &TaskContext, budget: &Budget) -> Result<Kinesis, StepError> {
        let SourceSpec::Kinesis { stream, region, endpoint, credentials: creds } = &step.source else {
            return Err(StepError::permanent("bad_config", "not a kinesis source"));
        };
        let creds = credentials(creds.as_ref(), endpoint.as_deref())?;
        let client = client(region.as_deref().unwrap_or(DEFAULT_REGION), endpoint.as_deref(), creds);
        let mut k = Kinesis {
            client,
            stream: stream.clone(),
            lanes: Vec::new(),
            shards: Vec::new(),
            ready: VecDeque::new(),
            ends: Vec::new(),
            turn: 0,
            limit: step.flush.records().clamp(1, MAX_LIMIT),
            share: budget.client_share(),
            record_bytes: 0,
            landed: BTreeMap::new(),
            from: None,
            grown: false,
        };
        k.list_shards().await?;
        if k.shards.is_empty() {
            return Err(StepError::permanent("bad_config", format!("kinesis stream {stream} has no shards")));
        }
        Ok(k)
    }

    /// Adds the stream's shards not known yet, in shard order.
    async fn list_shards(&mut self) -> Result<bool, StepError> {
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = self.client.list_shards();
            let req = match &token {
                Some(t) => req.next_token(t),
                None => req.stream_name(&self.stream),
            };
            let out = req.send().await.map_err(|e| {
                let missing = e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception());
                match missing {
                    true => StepError::permanent("not_found", format!("kinesis stream {} does not exist", self.stream)),
                    false => unavailable(&format!("stream {}", self.stream), e),
                }
            })?;
            for s in out.shards() {
                let parents =
                    [s.parent_shard_id(), s.adjacent_parent_shard_id()].into_iter().flatten().map(String::from);
                found.push((s.shard_id().to_string(), parents.collect::<Vec<_>>()));
            }
            token = out.next_token().map(String::from);
            if token.is_none() {
                break;
            }
        }
        found.sort_by_key(|(id, _)| (shard_index(id), id.clone()));
        let mut added = false;
        for (id, parents) in found {
            if self.shards.iter().any(|s| s.id == id) {
                continue;
            }
            self.lanes.push(Lane { name: self.stream.clone(), index: shard_index(&id) });
            self.shards.push(Shard {
                id,
                parents,
                state: State::Waiting,
                iterator: None,
                ordinal: 0,
                seqs: BTreeMap::new(),
                last: None,
                not_before: Instant::now(),
                behind_ms: None,
                end_told: false,
            });
            added = true;
        }
        Ok(added)
    }

    /// Starts the shards whose parents are read (or gone), each after its landed
    /// sequence number, else where the step's `from` says.
    async fn start_ready(&mut self) -> Result<(), StepError> {
        for i in 0..self.shards.len() {
            if self.shards[i].state != State::Waiting {
                continue;
            }
            let parents_done = self.shards[i]
                .parents
                .iter()
                .all(|p| self.shards.iter().find(|s| &s.id == p).is_none_or(|s| s.state == State::Done));
            if !parents_done {
                continue;
            }
            let it = self.iterator(i).await?;
            let s = &mut self.shards[i];
            s.iterator = it;
            s.state = State::Reading;
        }
        Ok(())
    }

    /// A shard iterator for shard `i`: after the last record handed over or landed, else
    /// at `from`. `None`: the shard is closed and holds nothing more.
    async fn iterator(&self, i: usize) -> Result<Option<String>, StepError> {
        let s = &self.shards[i];
        let req = self.client.get_shard_iterator().stream_name(&self.stream).shard_id(&s.id);
        let req = match (s.last.as_ref().or(self.landed.get(&s.id)), &self.from) {
            (Some(seq), _) => {
                req.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).starting_sequence_number(seq)
            }
            (None, Some(b @ Bound::Time(_))) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(b.time_ms().unwrap_or(0))),
            (None, _) => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        let out = req.send().await.map_err(|e| unavailable(&format!("shard {}", s.id), e))?;
        Ok(out.shard_iterator().map(String::from))
    }

    /// One GetRecords call on shard `i`.
    async fn read(&mut self, i: usize) -> Result<(), StepError> {
        let Some(it) = self.shards[i].iterator.clone() else { return self.finished(i).await };
        let limit = call_limit(self.limit, self.share, self.record_bytes);
        let sent = self.client.get_records().shard_iterator(it).limit(limit).send().await;
        self.shards[i].not_before = Instant::now() + SHARD_CALL_GAP;
        let out = match sent {
            Ok(out) => out,
            Err(e) => {
                let service = e.as_service_error();
                if service.is_some_and(|s| s.is_expired_iterator_exception()) {
                    // Idle past five minutes (a long pause): take it again where it was.
                    self.shards[i].iterator = self.iterator(i).await?;
                    return Ok(());
                }
                if service.is_some_and(|s| s.is_provisioned_throughput_exceeded_exception())
                    || matches!(e, SdkError::TimeoutError(_))
                {
                    self.shards[i].not_before = Instant::now() + THROTTLED;
                    return Ok(());
                }
                return Err(unavailable(&format!("shard {}", self.shards[i].id), e));
            }
        };
        let s = &mut self.shards[i];
        s.behind_ms = out.millis_behind_latest();
        for r in out.records() {
            let seq = r.sequence_number().to_string();
            let position = s.ordinal;
            s.ordinal += 1;
            s.seqs.insert(position, seq.clone());
            s.last = Some(seq.clone());
            self.ready.push_back(Delivery {
                lane: i,
                position,
                id: Some(seq),
                redelivered: false,
                time_ms: r.approximate_arrival_timestamp().and_then(|t| t.to_millis().ok()),
                payload: r.data().as_ref().to_vec(),
            });
        }
        let got = !out.records().is_empty();
        if got {
            let bytes: usize = out.records().iter().map(|r| r.data().as_ref().len()).sum();
            let avg = (bytes / out.records().len()).max(1) as u64;
            self.record_bytes = if self.record_bytes == 0 { avg } else { (self.record_bytes * 3 + avg) / 4 };
        }
        s.iterator = out.next_shard_iterator().map(String::from);
        if got {
            s.end_told = false;
        }
        if s.iterator.is_none() {
            return self.finished(i).await;
        }
        // Nothing more now (an emulator may not say how far behind: caught up then).
        if !got && s.behind_ms.unwrap_or(0) == 0 && !s.end_told {
            s.end_told = true;
            self.ends.push(i);
        }
        Ok(())
    }

    /// Shard `i` is closed and read: its children may start (listing the shards the
    /// reshard created, as new lanes).
    async fn finished(&mut self, i: usize) -> Result<(), StepError> {
        let s = &mut self.shards[i];
        if s.state == State::Done {
            return Ok(());
        }
        tracing::info!(stream = %self.stream, shard = %s.id, "kinesis shard closed and read to its end");
        s.state = State::Done;
        s.end_told = true;
        self.ends.push(i);
        let id = s.id.clone();
        if !self.shards.iter().any(|s| s.parents.contains(&id)) && self.list_shards().await? {
            self.grown = true;
        }
        self.start_ready().await
    }
}

#[async_trait]
impl Source for Kinesis {
    fn name(&self) -> &'static str {
        "kinesis"
    }

    fn lanes(&self) -> &[Lane] {
        &self.lanes
    }

    fn replayable(&self) -> bool {
        true
    }

    fn details(&self) -> Value {
        let behind: serde_json::Map<String, Value> =
            self.shards.iter().filter_map(|s| s.behind_ms.map(|b| (s.id.clone(), json!(b)))).collect();
        let closed: Vec<&str> = self.shards.iter().filter(|s| s.state == State::Done).map(|s| s.id.as_str()).collect();
        json!({"millis_behind_latest": behind, "closed_shards": closed})
    }

    fn identity(&self, _lease: &str, lane: usize, first: i64, last: i64) -> String {
        let s = &self.shards[lane];
        let seq = |p: i64| s.seqs.get(&p).map_or("0", String::as_str);
        identity(&self.stream, &s.id, seq(first), seq(last))
    }

    async fn landed(&mut self, landing: &Landing) -> Result<BTreeMap<usize, i64>, StepError> {
        self.landed = landed(&self.stream, &landing.input_identities().await?);
        // A shard whose child landed records was read to its end before.
        for i in 0..self.shards.len() {
            let id = self.shards[i].id.clone();
            if self.shards.iter().any(|c| c.parents.contains(&id) && self.landed.contains_key(&c.id)) {
                self.shards[i].state = State::Done;
            }
        }
        // The loop's positions are this lease's ordinals: nothing landed among them yet.
        Ok(BTreeMap::new())
    }

    async fn start(&mut self, _landed: &BTreeMap<usize, i64>, from: Option<&Bound>) -> Result<(), StepError> {
        self.from = from.cloned();
        for (i, s) in self.shards.iter_mut().enumerate() {
            if s.state == State::Done {
                s.end_told = true;
                self.ends.push(i);
            }
            match self.landed.get(&s.id) {
                Some(seq) => {
                    tracing::info!(stream = %self.stream, shard = %s.id, after = %seq, "kinesis shard resumes")
                }
                None if s.state != State::Done => {
                    tracing::info!(stream = %self.stream, shard = %s.id, "kinesis shard starts")
                }
                None => {}
            }
        }
        self.start_ready().await
    }

    async fn next(&mut self) -> Result<Event, StepError> {
        loop {
            if let Some(d) = self.ready.pop_front() {
                return Ok(Event::Message(d));
            }
            if self.grown {
                self.grown = false;
                return Ok(Event::Grew);
            }
            if !self.ends.is_empty() {
                return Ok(Event::End(std::mem::take(&mut self.ends)));
            }
            let n = self.shards.len();
            let now = Instant::now();
            let due = (0..n)
                .map(|k| (self.turn + k) % n)
                .find(|&i| self.shards[i].state == State::Reading && self.shards[i].not_before <= now);
            match due {
                Some(i) => {
                    self.turn = (i + 1) % n;
                    self.read(i).await?;
                }
                None => {
                    let wake = self.shards.iter().filter(|s| s.state == State::Reading).map(|s| s.not_before).min();
                    // Every shard waits (or none reads: a stream read to its end).
                    tokio::time::sleep_until(wake.unwrap_or(now + SHARD_CALL_GAP).into()).await;
                }
            }
        }
    }

    async fn commit(&mut self, upto: &BTreeMap<usize, i64>) -> Result<(), StepError> {
        // Kinesis keeps no consumer positions: the sinks hold them. What is landed no
        // longer needs its sequence number here.
        for (lane, p) in upto {
            if let Some(s) = self.shards.get_mut(*lane) {
                s.seqs = s.seqs.split_off(&(p + 1));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shards_highest_landed_sequence_number_counts_by_value_not_by_text() {
        let ids = vec![
            vec![
                identity(
                    "orders",
                    "shardId-000000000000",
                    "49590338271490256608559692538361571095921575989136588898",
                    "49590338271490256608559692538361571095921575989136588999",
                ),
                identity("orders", "shardId-000000000000", "9", "10"),
                identity("orders", "shardId-000000000001", "5", "7"),
            ],
            vec![
                identity("orders", "shardId-000000000001", "8", "9"),
                identity("other", "shardId-000000000002", "1", "2"),
                "kinesis://orders/shardId-000000000003/x-y".to_string(),
                "kafka://orders/p0_1-2".to_string(),
            ],
        ];
        let got = landed("orders", &ids);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got["shardId-000000000000"], "49590338271490256608559692538361571095921575989136588999");
        assert_eq!(got["shardId-000000000001"], "9");
        assert_eq!(seq_cmp("10", "9"), std::cmp::Ordering::Greater);
        assert_eq!(shard_index("shardId-000000000007"), 7);
        assert_eq!(call_limit(10_000, 2 << 20, 0), 10_000, "sizes not known yet");
        assert_eq!(call_limit(10_000, 2 << 20, 1024), 2048, "what the share holds");
        assert_eq!(call_limit(500, 2 << 20, 100), 500, "the flush size");
        assert_eq!(call_limit(10_000, 100, 1 << 20), 1, "at least one");
    }
}
