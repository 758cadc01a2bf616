//! The `consume` kind: a stream step ([`weir_core::stream::StreamStep`]) run by its source.

use async_trait::async_trait;
use serde_json::Value;
use weir_core::catalog::STREAM_KINDS;
use weir_core::stream::{SourceSpec, StreamStep};
use weir_data::sink::landing::Pools;
use weir_worker::{StepError, StepHandler, TaskContext};

use crate::land::Landing;
use crate::StreamSettings;

/// Runs `consume`, holding the PostgreSQL sinks' pools across streams.
pub struct Consume {
    settings: StreamSettings,
    pools: Pools,
}

impl Consume {
    pub fn new(settings: StreamSettings) -> Consume {
        Consume { settings, pools: Pools::default() }
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
        match &step.source {
            SourceSpec::Kafka { .. } => crate::sources::kafka::run(task, &step, &landing).await,
            other => Err(StepError::permanent(
                "bad_config",
                format!("source type {} is not served yet (kafka is)", other.name()),
            )),
        }
    }
}
