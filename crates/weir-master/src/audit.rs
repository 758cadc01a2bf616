//! The audit trail's master side: refusals from the gRPC guard and the handlers written
//! through the scheduler (so each lands in a commit, and on `weir.audit` through the
//! outbox), `AuditService` for `weir audit`, and the retention sweep.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use weir_auth::Role;
use weir_core::audit::{AuditFilter, AuditRecord};
use weir_proto::convert;
use weir_proto::v1::{self, audit_service_server::AuditService};
use weir_runtime::auth::{caller, code_name, outcome, Refusals};

use crate::status::{self, invalid};
use crate::Shared;

impl Shared {
    /// Writes `record` in the next commit. While this master is not leading it cannot
    /// commit, and the record goes to the log instead.
    pub(crate) async fn audit(&self, record: AuditRecord) {
        if !self.ready.load(std::sync::atomic::Ordering::Acquire) {
            tracing::warn!(?record, "audit record logged only: this master is not leading");
            return;
        }
        if let Err(e) = self.scheduler.audit(vec![record.clone()]).await {
            tracing::error!(error = %e, ?record, "cannot write an audit record");
        }
    }

    /// Audits a call refused with `status`, then returns the status for the caller.
    pub(crate) async fn refused(&self, record: AuditRecord, status: Status) -> Status {
        self.audit(record.with_outcome(outcome(status.code()), code_name(status.code()), status.message())).await;
        status
    }
}

/// The guard's refusals, into the audit trail.
pub(crate) struct AuditRefusals(pub Arc<Shared>);

impl Refusals for AuditRefusals {
    fn refused(&self, record: AuditRecord) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.0.audit(record))
    }
}

/// Default and largest page of ListAudit.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// The AuditService implementation.
pub struct Audit(pub(crate) Arc<Shared>);

#[tonic::async_trait]
impl AuditService for Audit {
    async fn list_audit(&self, req: Request<v1::ListAuditRequest>) -> Result<Response<v1::ListAuditResponse>, Status> {
        let who = caller(&req);
        let audit = crate::jobs::record(&req, &who, "ListAudit");
        let r = req.into_inner();
        let allowed = if r.namespace.is_empty() {
            who.grants.allows_everywhere(Role::Admin)
        } else {
            who.may(&r.namespace, Role::Admin)
        };
        if !allowed {
            let needs = if r.namespace.is_empty() { "*".to_string() } else { r.namespace.clone() };
            let status = Status::permission_denied(format!(
                "{} may not read the audit trail{} (needs {needs}:admin)",
                who.subject,
                if r.namespace.is_empty() { String::new() } else { format!(" of namespace {:?}", r.namespace) }
            ));
            return Err(self.0.refused(audit, status).await);
        }
        let limit = match r.page_size {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => return Err(invalid(format!("page_size {n} is over the limit of {MAX_PAGE}"))),
            n => n,
        };
        let text = |s: String| (!s.is_empty()).then_some(s);
        let filter = AuditFilter {
            subject: text(r.subject),
            namespace: text(r.namespace),
            action: text(r.action),
            outcome: if r.outcome.is_empty() { None } else { Some(r.outcome.parse().map_err(invalid)?) },
            since_ms: r.since.map(|t| t.seconds.saturating_mul(1000).saturating_add(i64::from(t.nanos) / 1_000_000)),
            before: if r.page_token.is_empty() {
                None
            } else {
                Some(
                    uuid::Uuid::parse_str(&r.page_token)
                        .map_err(|_| invalid("page_token is not one this service gave"))?,
                )
            },
        };
        let records = self.0.store.audit(&filter, limit + 1).await.map_err(status::store)?;
        let more = records.len() > limit as usize;
        let records: Vec<_> = records.into_iter().take(limit as usize).collect();
        let next = if more { records.last().map(|r| r.id.to_string()).unwrap_or_default() } else { String::new() };
        Ok(Response::new(v1::ListAuditResponse {
            records: records.iter().map(convert::audit).collect(),
            next_page_token: next,
        }))
    }
}
