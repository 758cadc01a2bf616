//! Named connections on the master: `ConnectionService` (admins put and delete, readers
//! list and get; every change committed with its audit record), and [`validate`], which
//! expands a job's `{$connection: …}` references from its namespace's connections before
//! the job is checked — for SubmitJob and for the jobs triggers start alike.

use std::collections::BTreeMap;

use tonic::{Request, Response, Status};
use weir_auth::{Principal, Role, Scope};
use weir_core::audit::{AuditRecord, Outcome};
use weir_core::connection::{self, Connection, ConnectionChange, MAX_PER_NAMESPACE};
use weir_core::spec::JobSpec;
use weir_core::validate::{validate_with, ValidJob};
use weir_proto::convert;
use weir_proto::v1::{self, connection_service_server::ConnectionService};
use weir_runtime::auth::caller;

use crate::status::{self, invalid};
use crate::Shared;

/// Checks `spec` with its namespace's connections expanded (read from the store only when
/// the spec names one).
pub(crate) async fn validate(shared: &Shared, spec: JobSpec) -> Result<ValidJob, Status> {
    let named = spec.steps.iter().any(|s| {
        s.config.as_ref().is_some_and(connection::mentions)
            || s.compensation.as_ref().and_then(|c| c.config.as_ref()).is_some_and(connection::mentions)
    }) || spec.params.as_ref().is_some_and(connection::mentions);
    if !named {
        return validate_with(spec, &connection::NoConnections).map_err(status::spec);
    }
    let namespace =
        if spec.namespace.is_empty() { weir_core::validate::DEFAULT_NAMESPACE } else { spec.namespace.as_str() };
    let found: BTreeMap<String, serde_json::Value> = shared
        .store
        .connections(namespace, MAX_PER_NAMESPACE as u32)
        .await
        .map_err(status::store)?
        .into_iter()
        .map(|c| (c.name, c.config))
        .collect();
    validate_with(spec, &found).map_err(status::spec)
}

/// The ConnectionService implementation.
pub struct Connections(pub(crate) std::sync::Arc<Shared>);

impl Connections {
    /// Refuses (and audits) a caller without `role` on `namespace`. Without read the
    /// namespace's connections are not found, as another namespace's jobs are not.
    async fn require(&self, who: &Principal, audit: &AuditRecord, namespace: &str, role: Role) -> Result<(), Status> {
        if who.may(namespace, role) {
            return Ok(());
        }
        if who.may(namespace, Role::Read) {
            let status = Status::permission_denied(format!(
                "{} may not change the connections of namespace {namespace:?} (needs {namespace}:admin)",
                who.subject
            ));
            return Err(self.0.refused(audit.clone(), status).await);
        }
        // Shown as not found, audited as the denial it is.
        let why = format!("{} may not read namespace {namespace:?}", who.subject);
        self.0.audit(audit.clone().with_outcome(Outcome::Denied, "NOT_FOUND", &why)).await;
        Err(Status::not_found(format!("namespace {namespace:?} has no connections {} may see", who.subject)))
    }

    async fn stored(&self, namespace: &str) -> Result<Vec<Connection>, Status> {
        self.0.store.connections(namespace, MAX_PER_NAMESPACE as u32).await.map_err(status::store)
    }
}

fn named(namespace: &str, name: &str) -> Result<(), Status> {
    weir_core::validate::check_name("namespace", namespace, 64).map_err(|e| invalid(e.0))?;
    weir_core::validate::check_name("connection name", name, 64).map_err(|e| invalid(e.0))
}

#[tonic::async_trait]
impl ConnectionService for Connections {
    async fn put_connection(
        &self,
        req: Request<v1::PutConnectionRequest>,
    ) -> Result<Response<v1::PutConnectionResponse>, Status> {
        self.0.check_ready()?;
        let who = caller(&req);
        let mut audit = crate::jobs::record(&req, &who, "PutConnection");
        let wire = req.into_inner().connection.ok_or_else(|| invalid("connection is required"))?;
        audit.namespace = wire.namespace.clone();
        audit.target = wire.name.clone();
        self.require(&who, &audit, &wire.namespace, Role::Admin).await?;
        let checked = convert::connection_from_wire(&wire).and_then(|mut c| {
            c.updated_ms = crate::now_ms();
            c.updated_by = who.subject.clone();
            c.check().map(|()| c)
        });
        let conn = match checked {
            Ok(c) => c,
            Err(e) => return Err(self.0.refused(audit, invalid(format!("connection {:?}: {e}", wire.name))).await),
        };
        let existing = self.stored(&conn.namespace).await?;
        let created = !existing.iter().any(|c| c.name == conn.name);
        if created && existing.len() >= MAX_PER_NAMESPACE {
            let status = Status::resource_exhausted(format!(
                "namespace {:?} holds {MAX_PER_NAMESPACE} connections, the most it may",
                conn.namespace
            ));
            return Err(self.0.refused(audit, status).await);
        }
        self.0.scheduler.connection(ConnectionChange::Put(conn.clone()), audit).await.map_err(status::sched)?;
        tracing::info!(namespace = %conn.namespace, name = %conn.name, created, by = %conn.updated_by, "connection put");
        Ok(Response::new(v1::PutConnectionResponse { connection: Some(convert::connection(&conn)), created }))
    }

    async fn get_connection(
        &self,
        req: Request<v1::GetConnectionRequest>,
    ) -> Result<Response<v1::GetConnectionResponse>, Status> {
        let who = caller(&req);
        let mut audit = crate::jobs::record(&req, &who, "GetConnection");
        let r = req.into_inner();
        named(&r.namespace, &r.name)?;
        audit.namespace = r.namespace.clone();
        audit.target = r.name.clone();
        self.require(&who, &audit, &r.namespace, Role::Read).await?;
        let found = self.stored(&r.namespace).await?.into_iter().find(|c| c.name == r.name);
        match found {
            Some(c) => Ok(Response::new(v1::GetConnectionResponse { connection: Some(convert::connection(&c)) })),
            None => Err(Status::not_found(format!("connection {:?} not found in namespace {:?}", r.name, r.namespace))),
        }
    }

    async fn list_connections(
        &self,
        req: Request<v1::ListConnectionsRequest>,
    ) -> Result<Response<v1::ListConnectionsResponse>, Status> {
        let who = caller(&req);
        let audit = crate::jobs::record(&req, &who, "ListConnections");
        let r = req.into_inner();
        let all = if r.namespace.is_empty() {
            let scope = who.grants.scope(Role::Read);
            // Every namespace's, then only those the caller reads.
            let limit = u32::try_from(MAX_PER_NAMESPACE * 100).unwrap_or(u32::MAX);
            let every = self.0.store.connections("", limit).await.map_err(status::store)?;
            match scope {
                Scope::All => every,
                Scope::Only(set) => every.into_iter().filter(|c| set.contains(&c.namespace)).collect(),
            }
        } else {
            weir_core::validate::check_name("namespace", &r.namespace, 64).map_err(|e| invalid(e.0))?;
            let mut audit = audit;
            audit.namespace = r.namespace.clone();
            self.require(&who, &audit, &r.namespace, Role::Read).await?;
            self.stored(&r.namespace).await?
        };
        Ok(Response::new(v1::ListConnectionsResponse { connections: all.iter().map(convert::connection).collect() }))
    }

    async fn delete_connection(
        &self,
        req: Request<v1::DeleteConnectionRequest>,
    ) -> Result<Response<v1::DeleteConnectionResponse>, Status> {
        self.0.check_ready()?;
        let who = caller(&req);
        let mut audit = crate::jobs::record(&req, &who, "DeleteConnection");
        let r = req.into_inner();
        named(&r.namespace, &r.name)?;
        audit.namespace = r.namespace.clone();
        audit.target = r.name.clone();
        self.require(&who, &audit, &r.namespace, Role::Admin).await?;
        if !self.stored(&r.namespace).await?.iter().any(|c| c.name == r.name) {
            let status = Status::not_found(format!("connection {:?} not found in namespace {:?}", r.name, r.namespace));
            return Err(self.0.refused(audit, status).await);
        }
        let change = ConnectionChange::Delete { namespace: r.namespace.clone(), name: r.name.clone() };
        self.0.scheduler.connection(change, audit).await.map_err(status::sched)?;
        tracing::info!(namespace = %r.namespace, name = %r.name, by = %who.subject, "connection deleted");
        Ok(Response::new(v1::DeleteConnectionResponse {}))
    }
}
