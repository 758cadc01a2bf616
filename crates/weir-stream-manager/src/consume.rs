//! The stream kinds: `consume`, a stream step ([`weir_core::stream::StreamStep`]) run by
//! its source ([`crate::run`]), and `probe`, which connects the same source and sinks — a
//! wrong address, credential, stream or queue fails it, naming what — and reports the
//! lanes and where the sinks stand (`realtime_stream`'s `connect`).

use async_trait::async_trait;
use serde_json::Value;
use std::sync::Arc;
use weir_core::catalog::STREAM_KINDS;

use weir_core::stream::StreamStep;
use weir_data::sink::landing::Pools;
use weir_worker::{StepError, StepHandler, TaskContext};

use crate::budget::Budget;
use crate::land::Landing;
use crate::status::Registry;
use crate::StreamSettings;

/// Runs `consume`, holding the PostgreSQL sinks' pools and the memory budget across
/// streams.
pub struct Consume {
    settings: StreamSettings,
    pools: Pools,
    budget: Arc<Budget>,
    registry: Registry,
}

impl Consume {
    /// Streams sharing `budget`, reporting to `registry`.
    pub fn new(settings: StreamSettings, budget: Arc<Budget>, registry: Registry) -> Consume {
        Consume { settings, pools: Pools::default(), budget, registry }
    }
}

#[async_trait]
impl StepHandler for Consume {
    fn kinds(&self) -> &'static [&'static str] {
        &STREAM_KINDS
    }

    async fn run(&self, task: &TaskContext) -> Result<Value, StepError> {
        let step = StreamStep::parse_served(task.config.as_ref()).map_err(|e| StepError::permanent("bad_config", e))?;
        let landing = Landing::open(&step, task, &self.settings.data_dir, &self.pools).await?;
        if task.kind == "probe" {
            return probe(task, &step, &landing, &self.budget).await;
        }
        crate::run::run(task, &step, &landing, &self.budget, &self.registry, &self.settings.data_dir).await
    }
}

/// Connects the source, opens the sinks (done by the caller), and reports what it found.
async fn probe(task: &TaskContext, step: &StreamStep, landing: &Landing, budget: &Budget) -> Result<Value, StepError> {
    let mut source = crate::source::open(step, task, budget).await?;
    let landed = if source.replayable() { source.landed(landing).await? } else { Default::default() };
    let lanes = source.lanes();
    let lanes: Vec<Value> =
        lanes.iter().enumerate().map(|(i, l)| serde_json::json!({"lane": l.key(), "landed": landed.get(&i)})).collect();
    Ok(serde_json::json!({"kind": "probe", "source": source.name(), "lanes": lanes, "sinks": step.sinks.len()}))
}
