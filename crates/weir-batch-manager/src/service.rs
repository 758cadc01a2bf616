//! The batch manager's gRPC service (`weir.v1.DatasetService`): the dataset catalogue —
//! each dataset's and table's schema versions (`weir datasets list|history`).

use async_trait::async_trait;
use tonic::{Request, Response, Status};
use weir_core::model::DatasetVersion;
use weir_proto::v1::dataset_service_server::{DatasetService, DatasetServiceServer};
use weir_proto::v1::{self as wire};
use weir_worker::manager::{Background, BackgroundContext};
use weir_worker::store::LazyStore;

/// Serves `DatasetService` on the manager's listen address.
#[derive(Clone)]
pub struct Datasets {
    catalogue: LazyStore,
}

impl Datasets {
    pub fn new(catalogue: LazyStore) -> Self {
        Datasets { catalogue }
    }
}

#[async_trait]
impl Background for Datasets {
    async fn run(&self, _ctx: BackgroundContext) {}

    fn add_routes(&self, routes: &mut tonic::service::RoutesBuilder) {
        routes.add_service(DatasetServiceServer::new(self.clone()));
    }
}

/// A version as the service sends it.
pub fn to_wire(v: &DatasetVersion) -> wire::DatasetVersion {
    let s = &v.version.schema;
    let o = &v.version.origin;
    wire::DatasetVersion {
        dataset: v.dataset.clone(),
        kind: v.kind.clone(),
        version: v.version.version,
        columns: s
            .columns
            .iter()
            .map(|c| wire::DatasetColumn { name: c.name.clone(), r#type: c.kind.as_str().into(), nullable: c.nullable })
            .collect(),
        partition_column: s.partition.as_ref().map(|p| p.column.clone()).unwrap_or_default(),
        partition_folder: s.partition.as_ref().map(|p| p.folder.clone()).unwrap_or_default(),
        changes: v.version.changes.iter().map(ToString::to_string).collect(),
        job_id: o.job_id.clone(),
        task_id: o.task_id.clone(),
        step_id: o.step_id.clone(),
        input: o.input.clone(),
        recorded_at: Some(weir_proto::convert::timestamp(v.recorded_ms)),
    }
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("dataset catalogue: {e}"))
}

#[tonic::async_trait]
impl DatasetService for Datasets {
    async fn list_datasets(
        &self,
        req: Request<wire::ListDatasetsRequest>,
    ) -> Result<Response<wire::ListDatasetsResponse>, Status> {
        let r = req.into_inner();
        let limit = if r.limit == 0 { 1000 } else { r.limit.min(100_000) };
        let store = self.catalogue.get().await.map_err(unavailable)?;
        let all = store.list_datasets(limit).await.map_err(unavailable)?;
        Ok(Response::new(wire::ListDatasetsResponse { datasets: all.iter().map(to_wire).collect() }))
    }

    async fn get_dataset_history(
        &self,
        req: Request<wire::GetDatasetHistoryRequest>,
    ) -> Result<Response<wire::GetDatasetHistoryResponse>, Status> {
        let r = req.into_inner();
        if r.dataset.is_empty() {
            return Err(Status::invalid_argument("name the dataset (as `weir datasets list` shows it)"));
        }
        let store = self.catalogue.get().await.map_err(unavailable)?;
        let versions = store.dataset_versions(&r.dataset).await.map_err(unavailable)?;
        if versions.is_empty() {
            return Err(Status::not_found(format!("the catalogue has no dataset {:?}", r.dataset)));
        }
        Ok(Response::new(wire::GetDatasetHistoryResponse { versions: versions.iter().map(to_wire).collect() }))
    }
}
