//! Where valid rows land.
//!
//! - [`parquet`]: writing Parquet datasets in a directory (staged files, the quarantine,
//!   and the files of every Parquet sink), committed per input under a lock.
//! - [`local`]: a Parquet dataset on local disk as a sink, with its schema.
//! - [`object`]: the same datasets on an object store (S3, Azure Blob, GCS), written
//!   locally and committed with conditional writes of the input's manifest.
//! - [`postgres`]: a PostgreSQL table loaded with COPY from a staged Parquet file.
//! - [`kafka`]: a Kafka topic (a stream's only sink), each record a JSON message, the
//!   topic read back for where the stream stands.
//! - [`history`]: a Parquet dataset's schema history and `_common_metadata`.
//! - [`landing`]: one input into all of a step's sinks or none.
//! - [`encryption`]: Parquet modular encryption of a sink's files, keys by reference.
//!
//! All are idempotent per input: a retried or re-leased task replaces what an earlier
//! attempt for the same input wrote, never adds to it, and a write carrying an older
//! fence token of the same task than the one already committed is refused.

pub mod encryption;
pub mod history;
pub mod kafka;
pub mod landing;
pub mod local;
pub mod object;
pub mod parquet;
pub mod postgres;

use weir_core::dataset::contract::SinkPlan;
use weir_core::dataset::schema::Schema;

/// A sink as it stands before an input is written: its schema now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkState {
    /// The sink in messages: `parquet dataset /lake/trades`, `postgres table public.t`.
    pub name: String,
    /// `None`: not written yet.
    pub current: Option<Schema>,
}

/// One sink's share of an input, prepared by the pipeline and landed by [`landing`].
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// The sink's index in the step.
    pub index: usize,
    /// How the sink takes the input.
    pub plan: SinkPlan,
    /// The Parquet files prepared (`None` for a PostgreSQL table, loaded from the
    /// staged output).
    pub write: Option<parquet::Prepared>,
}

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Who writes: the task and its lease's fence token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteFence {
    pub task: String,
    pub fence: u64,
}

impl WriteFence {
    /// A short stable name of this attempt (task and fence), for file names that must
    /// differ between attempts.
    pub fn tag(&self) -> String {
        weir_storage::hex(&Sha256::digest(format!("{}:{}", self.task, self.fence).as_bytes())[..5])
    }

    /// Refuses this write if its task claimed `target` with a newer lease (`claimed`): a
    /// stream's new owner claims its sinks, and its former leases write there no more.
    pub fn within_claim(&self, target: &str, claimed: u64) -> Result<(), crate::DataError> {
        if claimed > self.fence {
            return Err(crate::DataError::StaleFence(format!(
                "{target}: task {} claimed it with lease {claimed}; this attempt holds lease {}",
                self.task, self.fence
            )));
        }
        Ok(())
    }

    /// Whether a write by `self` may replace one committed by `prev`: another task may
    /// (a later run of the same input), the same task only with the same or a newer lease.
    pub fn may_replace(&self, prev: &WriteFence) -> Result<(), String> {
        if prev.task == self.task && prev.fence > self.fence {
            return Err(format!(
                "task {} wrote this input under fence {}; this write carries the older fence {}",
                self.task, prev.fence, self.fence
            ));
        }
        Ok(())
    }
}

/// `name` with every character but ASCII letters, digits, `-` and `_` made `_`: safe as
/// a file name.
pub fn safe_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// The stable file-name key of an input: a readable stem and a hash of its identity, so
/// the same input always lands in the same files and two inputs never share one.
pub fn input_key(identity: &str) -> String {
    let stem: String = safe_name(identity.rsplit('/').next().unwrap_or(identity)).chars().take(40).collect();
    format!("{stem}-{}", weir_storage::hex(&Sha256::digest(identity.as_bytes())[..6]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_readable_and_distinct() {
        let a = input_key("/in/trades 2026.csv.gz");
        assert_eq!(a, input_key("/in/trades 2026.csv.gz"));
        assert!(a.starts_with("trades_2026_csv_gz-"), "{a}");
        assert_ne!(a, input_key("/other/trades 2026.csv.gz"));
    }

    #[test]
    fn only_an_older_lease_of_the_same_task_is_refused() {
        let w = |t: &str, f| WriteFence { task: t.into(), fence: f };
        assert!(w("a", 3).may_replace(&w("a", 2)).is_ok());
        assert!(w("a", 3).may_replace(&w("a", 3)).is_ok());
        assert!(w("a", 2).may_replace(&w("a", 3)).unwrap_err().contains("older fence 2"));
        assert!(w("b", 1).may_replace(&w("a", 9)).is_ok());
    }
}
