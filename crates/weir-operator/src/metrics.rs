//! The operator's metrics: reconciliations by outcome, and whether this replica leads.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use weir_runtime::metrics::register;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// ok or error.
    pub outcome: String,
}

/// The families.
pub struct Operator {
    pub reconciles: Family<OutcomeLabels, Counter>,
    pub leader: Gauge,
}

impl Operator {
    /// Counts one reconciliation.
    pub fn reconciled(&self, outcome: &str) {
        self.reconciles.get_or_create(&OutcomeLabels { outcome: outcome.to_string() }).inc();
    }
}

/// The process's operator metrics, registered on first use.
pub static OPERATOR: LazyLock<Operator> = LazyLock::new(|| {
    let o = Operator { reconciles: Family::default(), leader: Gauge::default() };
    register("operator_reconciles", "IngestionJob reconciliations, by outcome", o.reconciles.clone());
    register(
        "operator_leader",
        "1 while this operator replica holds the Lease and runs the controller",
        o.leader.clone(),
    );
    o
});
