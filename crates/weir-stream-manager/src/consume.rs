//! The `consume` kind: a stream step ([`weir_core::stream::StreamStep`]) run by its source.

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
        crate::run::run(task, &step, &landing, &self.budget, &self.registry, &self.settings.data_dir).await
    }
}
