//! The Kubernetes side of Weir: the `IngestionJob` and `FileWatch` custom resources and
//! the operator that turns each IngestionJob into a job on the master and every FileWatch
//! into a watch of the file managers.
//!
//! - [`crd`]: the resources' Rust types; the CRD YAML in `deploy/base/crds.yaml` is
//!   generated from them (`weir-operator crd`).
//! - [`reconcile`]: the IngestionJob decisions, pure (what to submit, what status follows,
//!   when to look again, what a deletion cancels), unit-tested in microseconds.
//! - [`watches`]: FileWatch objects as the file managers' watches file, pure.
//! - [`controller`]: kube-runtime's controllers with finalizers, calling the master and
//!   writing the watches file's ConfigMap.
//! - [`leader`]: one replica at a time runs the controller, elected through a Lease.
//!
//! The operator is its own Deployment and a gRPC client of the master like the CLI: it
//! needs no access to the store, and the master needs no access to Kubernetes.

pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod watches;

/// What can go wrong while reconciling or leading.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<OperatorError>>),
    #[error("the master: {0}")]
    Master(String),
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("a background task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Runtime(#[from] weir_runtime::RuntimeError),
}

impl OperatorError {
    /// A failed master call.
    pub fn master(s: tonic::Status) -> OperatorError {
        OperatorError::Master(format!("{}: {}", s.code(), s.message()))
    }
}
