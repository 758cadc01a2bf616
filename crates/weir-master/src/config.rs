//! The master's settings: each is a flag and a `WEIR_*` environment variable.

use std::time::Duration;

use clap::Args;
use weir_core::catalog::Queue;

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
    /// How often workers are asked to heartbeat.
    #[arg(long, env = "WEIR_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// This master's name in the leader table and logs.
    #[arg(long = "master-id", env = "WEIR_MASTER_ID", default_value_t = default_id())]
    pub id: String,
}

impl MasterConfig {
    /// Defaults for the given listen address and store, as tests and `weir dev` use.
    pub fn new(listen: &str, store_url: &str) -> Self {
        MasterConfig {
            listen: listen.to_string(),
            store_url: store_url.to_string(),
            queue_limits: Vec::new(),
            max_batch: 4096,
            heartbeat_interval: Duration::from_secs(5),
            id: default_id(),
        }
    }
}

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
