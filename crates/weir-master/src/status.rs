//! The one place where errors become gRPC statuses: invalid input → INVALID_ARGUMENT,
//! missing → NOT_FOUND, stale fence or wrong state → FAILED_PRECONDITION, store trouble →
//! UNAVAILABLE (retry) or INTERNAL.

use tonic::Status;
use weir_core::engine::EngineError;
use weir_core::validate::SpecError;
use weir_store::StoreError;

use crate::scheduler::SchedError;

/// Invalid input, with the message naming the problem.
pub fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

/// Parses an id field.
pub fn parse_id(what: &str, s: &str) -> Result<uuid::Uuid, Status> {
    uuid::Uuid::parse_str(s).map_err(|_| invalid(format!("{what} {s:?} is not a valid id")))
}

/// Engine refusals.
pub fn engine(e: EngineError) -> Status {
    match e {
        EngineError::JobNotFound(_) | EngineError::TaskNotFound(_) => Status::not_found(e.to_string()),
        EngineError::StaleFence { .. } | EngineError::WrongState(_) => Status::failed_precondition(e.to_string()),
    }
}

/// Store failures.
pub fn store(e: StoreError) -> Status {
    if e.is_transient() {
        Status::unavailable(e.to_string())
    } else {
        Status::internal(e.to_string())
    }
}

/// Spec validation failures.
pub fn spec(e: SpecError) -> Status {
    invalid(e.0)
}

/// Scheduler failures.
pub fn sched(e: SchedError) -> Status {
    match e {
        SchedError::Engine(e) => engine(e),
        SchedError::Unavailable(m) => Status::unavailable(m),
    }
}
