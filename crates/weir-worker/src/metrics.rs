//! Every manager's task metrics, by queue (so the four managers of `weir dev`, one process,
//! share the families): tasks running, each attempt's outcome and how long it ran.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use weir_runtime::metrics::{register, seconds_histogram};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub queue: String,
    pub kind: String,
    /// succeeded, failed, released (handed back: cancelled or shutting down), lost (the
    /// lease was gone before the result).
    pub outcome: String,
}

/// The families.
pub struct Worker {
    pub in_flight: Family<QueueLabels, Gauge>,
    pub tasks: Family<TaskLabels, Counter>,
    pub run_time: Family<TaskLabels, Histogram, fn() -> Histogram>,
}

/// The process's worker metrics, registered on first use.
pub static WORKER: LazyLock<Worker> = LazyLock::new(|| {
    let w = Worker {
        in_flight: Family::default(),
        tasks: Family::default(),
        run_time: Family::new_with_constructor(seconds_histogram),
    };
    register("manager_tasks_in_flight", "Tasks this manager is running", w.in_flight.clone());
    register("manager_tasks", "Task attempts this manager ran, by queue, kind and outcome", w.tasks.clone());
    register("manager_task_run_seconds", "How long a task attempt ran on this manager", w.run_time.clone());
    w
});

/// One task counted in `in_flight` while this lives.
pub struct InFlight(Gauge);

impl InFlight {
    pub fn start(queue: &str) -> InFlight {
        let g = WORKER.in_flight.get_or_create(&QueueLabels { queue: queue.to_string() }).clone();
        g.inc();
        InFlight(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
