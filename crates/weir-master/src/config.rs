//! The master's settings: each is a flag and a `WEIR_*` environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use weir_bus::KafkaConfig;
use weir_core::catalog::Queue;
use weir_core::trigger::TriggerRules;
use weir_runtime::security::{AuthArgs, SandboxArgs, TlsArgs};

/// Settings of the ingestion master.
#[derive(Debug, Clone, Args)]
pub struct MasterConfig {
    /// Address the gRPC server listens on.
    #[arg(long = "listen", env = "WEIR_MASTER_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// Where state lives: postgres://user@host/db (production) or sqlite://path (embedded).
    #[arg(long, env = "WEIR_STORE_URL", default_value = "sqlite://.weir/weir.db")]
    pub store_url: String,
    /// Most running tasks per queue, e.g. "api=50,file=10" (unlisted queues: no limit).
    #[arg(long, env = "WEIR_QUEUE_LIMITS", value_delimiter = ',', value_parser = parse_limit)]
    pub queue_limits: Vec<(String, u32)>,
    /// Most commands applied and committed together in one transaction.
    #[arg(long, env = "WEIR_MAX_BATCH", default_value_t = 4096, value_parser = clap::value_parser!(usize))]
    pub max_batch: usize,
    /// Most tasks the engine holds in memory (about 2 KB each); past it, jobs that have
    /// not started wait in the store and are read back best-ranked first. 0: no limit.
    #[arg(long, env = "WEIR_RESIDENT_TASKS", default_value_t = DEFAULT_RESIDENT_TASKS)]
    pub resident_tasks: usize,
    /// Most slots one BackfillSchedule call may start (a longer range is refused).
    #[arg(long, env = "WEIR_SCHEDULE_MAX_BACKFILL", default_value_t = DEFAULT_MAX_BACKFILL)]
    pub schedule_max_backfill: usize,
    /// How often workers are asked to heartbeat.
    #[arg(long, env = "WEIR_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// This master's name in the leader table and logs.
    #[arg(long = "master-id", env = "WEIR_MASTER_ID", default_value_t = default_id())]
    pub id: String,
    #[command(flatten)]
    pub events: EventsConfig,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[command(flatten)]
    pub metrics: weir_runtime::metrics::MetricsArgs,
    /// Submissions per caller (token subject), e.g. "100/min", with authentication on;
    /// "off" for none. Over it, SubmitJob answers RESOURCE_EXHAUSTED with a retry delay.
    #[arg(long, env = "WEIR_SUBMISSION_LIMIT", default_value = weir_auth::limit::DEFAULT_SUBMISSION_LIMIT)]
    pub submission_limit: String,
    /// Refusals of one caller address recorded in the audit trail, e.g. "20/s"; past it
    /// they are counted, and the next record says how many were left out ("off": every one).
    /// A flood of calls without a token then costs the store nothing.
    #[arg(long, env = "WEIR_AUDIT_REFUSALS_PER_PEER", default_value = weir_runtime::auth::DEFAULT_REFUSALS_PER_PEER)]
    pub audit_refusals_per_peer: String,
    /// Days an audit record is kept.
    #[arg(long, env = "WEIR_AUDIT_RETENTION_DAYS", default_value_t = weir_core::audit::DEFAULT_RETENTION_DAYS,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub audit_retention_days: u32,
    /// How long a finished job (its tasks and history) is kept, e.g. "30d"; after it, the
    /// purge deletes it and its run id may start a new job.
    #[arg(long, env = "WEIR_RETENTION", default_value = weir_core::retention::DEFAULT_RETENTION)]
    pub retention: String,
    /// Per-namespace retention, e.g. "finance=400d,scratch=1d" (others: WEIR_RETENTION).
    #[arg(long, env = "WEIR_RETENTION_NAMESPACES", value_delimiter = ',')]
    pub retention_namespaces: Vec<String>,
    /// How often the retention purge runs (at start, then at this interval).
    #[arg(long, env = "WEIR_PURGE_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub purge_interval: Duration,
    /// Most jobs (or messages) deleted in one purge transaction (at most 10,000: SQLite
    /// binds each id).
    #[arg(long, env = "WEIR_PURGE_BATCH", default_value_t = weir_core::retention::DEFAULT_PURGE_BATCH,
        value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub purge_batch: u32,
}

/// Where lifecycle events go and which events start jobs.
#[derive(Debug, Clone, Args)]
pub struct EventsConfig {
    /// Kafka brokers ("host:port,…"). Unset: events stay in the store's history only.
    #[arg(long = "kafka-brokers", env = "WEIR_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(long, env = "WEIR_KAFKA_SECURITY_PROTOCOL", default_value = "plaintext")]
    pub kafka_security_protocol: String,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(long, env = "WEIR_KAFKA_SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<String>,
    #[arg(long, env = "WEIR_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// The SASL password, from the environment only (e.g. a Kubernetes secret).
    #[arg(long, env = "WEIR_KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub kafka_sasl_password: Option<String>,
    /// A file holding the SASL password (a mounted secret); read at start.
    #[arg(long, env = "WEIR_KAFKA_SASL_PASSWORD_FILE")]
    pub kafka_sasl_password_file: Option<PathBuf>,
    /// Further librdkafka properties, "key=value,key=value" (e.g. "debug=cgrp").
    #[arg(long, env = "WEIR_KAFKA_PROPERTIES", value_delimiter = ',', value_parser = parse_property)]
    pub kafka_properties: Vec<(String, String)>,
    /// CA bundle for TLS to the brokers.
    #[arg(long, env = "WEIR_KAFKA_SSL_CA_LOCATION")]
    pub kafka_ssl_ca_location: Option<String>,
    /// Partitions of topics the master creates.
    #[arg(long, env = "WEIR_KAFKA_PARTITIONS", default_value_t = 6)]
    pub kafka_partitions: i32,
    /// Replication factor of topics the master creates (3 in production).
    #[arg(long, env = "WEIR_KAFKA_REPLICATION", default_value_t = 1)]
    pub kafka_replication: i32,
    /// Most events the relay publishes at once.
    #[arg(long, env = "WEIR_RELAY_BATCH", default_value_t = 1000)]
    pub relay_batch: u32,
    /// Trigger rules (YAML, see `weir_core::trigger`). Unset: no event starts a job.
    #[arg(long, env = "WEIR_TRIGGERS_FILE")]
    pub triggers_file: Option<PathBuf>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            kafka_brokers: None,
            kafka_security_protocol: "plaintext".into(),
            kafka_sasl_mechanism: None,
            kafka_sasl_username: None,
            kafka_sasl_password: None,
            kafka_sasl_password_file: None,
            kafka_ssl_ca_location: None,
            kafka_properties: Vec::new(),
            kafka_partitions: 6,
            kafka_replication: 1,
            relay_batch: 1000,
            triggers_file: None,
        }
    }
}

impl EventsConfig {
    /// The Kafka settings, if brokers are given; the password file is read here.
    pub fn kafka(&self, client_id: &str) -> Result<Option<KafkaConfig>, String> {
        let Some(brokers) = self.kafka_brokers.as_deref().filter(|b| !b.trim().is_empty()) else { return Ok(None) };
        if self.kafka_partitions < 1 || self.kafka_replication < 1 {
            return Err("WEIR_KAFKA_PARTITIONS and WEIR_KAFKA_REPLICATION must be at least 1".into());
        }
        let password = match (&self.kafka_sasl_password, &self.kafka_sasl_password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("cannot read the Kafka password file {}: {e}", f.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            ),
            (None, None) => None,
        };
        Ok(Some(KafkaConfig {
            security_protocol: self.kafka_security_protocol.clone(),
            sasl_mechanism: self.kafka_sasl_mechanism.clone(),
            sasl_username: self.kafka_sasl_username.clone(),
            sasl_password: password,
            ssl_ca_location: self.kafka_ssl_ca_location.clone(),
            client_id: client_id.to_string(),
            properties: self.kafka_properties.clone(),
            ..KafkaConfig::plaintext(brokers)
        }))
    }

    /// The trigger rules (none without a file), checked.
    pub fn rules(&self) -> Result<TriggerRules, String> {
        let Some(path) = &self.triggers_file else { return Ok(TriggerRules::default()) };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the trigger rules {}: {e}", path.display()))?;
        let value: serde_json::Value =
            serde_yaml_ng::from_str(&text).map_err(|e| format!("trigger rules {}: {e}", path.display()))?;
        TriggerRules::from_value(value).map_err(|e| format!("{}: {e}", path.display()))
    }
}

impl MasterConfig {
    /// The retention settings, checked; the error names the setting.
    pub fn retention(&self) -> Result<weir_core::retention::Retention, String> {
        if self.purge_interval.is_zero() {
            return Err("WEIR_PURGE_INTERVAL must be longer than zero".into());
        }
        weir_core::retention::Retention::parse(&self.retention, &self.retention_namespaces)
            .map_err(|e| format!("WEIR_RETENTION / WEIR_RETENTION_NAMESPACES: {e}"))
    }

    /// The submission limits (none with authentication off, unless set, or with "off").
    pub fn limits(&self) -> Result<Option<weir_auth::KeyedLimits>, String> {
        let s = self.submission_limit.trim();
        if s == "off" || (!self.auth.enabled && s == weir_auth::limit::DEFAULT_SUBMISSION_LIMIT) {
            return Ok(None);
        }
        weir_auth::KeyedLimits::parse(s).map(Some)
    }

    /// Defaults for the given listen address and store, as tests and `weir dev` use:
    /// authentication off, plaintext, local paths under the temporary and working
    /// directories.
    pub fn new(listen: &str, store_url: &str) -> Self {
        MasterConfig {
            listen: listen.to_string(),
            store_url: store_url.to_string(),
            queue_limits: Vec::new(),
            max_batch: 4096,
            resident_tasks: DEFAULT_RESIDENT_TASKS,
            schedule_max_backfill: DEFAULT_MAX_BACKFILL,
            heartbeat_interval: Duration::from_secs(5),
            id: default_id(),
            events: EventsConfig::default(),
            auth: AuthArgs::default(),
            tls: TlsArgs::default(),
            sandbox: SandboxArgs::local(),
            metrics: Default::default(),
            submission_limit: weir_auth::limit::DEFAULT_SUBMISSION_LIMIT.into(),
            audit_refusals_per_peer: weir_runtime::auth::DEFAULT_REFUSALS_PER_PEER.into(),
            audit_retention_days: weir_core::audit::DEFAULT_RETENTION_DAYS,
            retention: weir_core::retention::DEFAULT_RETENTION.into(),
            retention_namespaces: Vec::new(),
            purge_interval: Duration::from_secs(300),
            purge_batch: weir_core::retention::DEFAULT_PURGE_BATCH,
        }
    }
}

/// See [`MasterConfig::schedule_max_backfill`].
pub const DEFAULT_MAX_BACKFILL: usize = 1000;

/// See [`MasterConfig::resident_tasks`]: about 200 MB of tasks.
pub const DEFAULT_RESIDENT_TASKS: usize = 100_000;

fn default_id() -> String {
    format!("master-{}", std::process::id())
}

/// Parses "queue=N", naming what is wrong.
pub fn parse_limit(s: &str) -> Result<(String, u32), String> {
    let (q, n) = s.split_once('=').ok_or_else(|| format!("queue limit {s:?} must look like api=50"))?;
    let queue: Queue = q.trim().parse()?;
    let n: u32 = n.trim().parse().map_err(|_| format!("queue limit {s:?}: {n:?} is not a whole number"))?;
    if n == 0 {
        return Err(format!("queue limit {s:?} must be at least 1"));
    }
    Ok((queue.as_str().to_string(), n))
}

/// Parses "key=value".
pub fn parse_property(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("Kafka property {s:?} must look like key=value"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

/// Parses "5s", "250ms".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    weir_core::duration::parse(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        assert_eq!(parse_limit("api=5"), Ok(("api".into(), 5)));
        assert!(parse_limit("ftp=5").unwrap_err().contains("unknown queue"));
        assert!(parse_limit("api").unwrap_err().contains("api=50"));
        assert!(parse_limit("api=0").is_err());
    }
}
