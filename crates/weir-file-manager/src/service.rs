//! The file manager's gRPC service (`weir.v1.FileService`): the inventory, and re-driving
//! a file so it is ingested again once fixed (`weir files redrive`).

use async_trait::async_trait;
use tonic::{Request, Response, Status};
use weir_core::model::FileRecord;
use weir_proto::v1::file_service_server::{FileService, FileServiceServer};
use weir_proto::v1::{InventoryFile, ListFilesRequest, ListFilesResponse, RedriveFileRequest, RedriveFileResponse};
use weir_worker::manager::{Background, BackgroundContext};

use crate::FileSettings;

/// Serves `FileService` on the manager's listen address.
#[derive(Clone)]
pub struct Files {
    settings: FileSettings,
}

impl Files {
    pub fn new(settings: FileSettings) -> Self {
        Files { settings }
    }
}

#[async_trait]
impl Background for Files {
    async fn run(&self, _ctx: BackgroundContext) {}

    fn add_routes(&self, routes: &mut tonic::service::RoutesBuilder) {
        routes.add_service(FileServiceServer::new(self.clone()));
    }
}

fn wire(r: &FileRecord) -> InventoryFile {
    InventoryFile {
        watch: r.watch.clone(),
        path: r.file.path.clone(),
        size: r.file.size,
        modified_ms: r.file.modified_ms,
        etag: r.file.etag.clone().unwrap_or_default(),
        generation: r.generation,
        state: r.state.clone(),
        job_id: r.job_id.clone().unwrap_or_default(),
        first_seen_ms: r.first_seen_ms,
        changed_ms: r.changed_ms,
    }
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("inventory: {e}"))
}

#[tonic::async_trait]
impl FileService for Files {
    async fn list_files(&self, req: Request<ListFilesRequest>) -> Result<Response<ListFilesResponse>, Status> {
        let r = req.into_inner();
        let limit = if r.limit == 0 { 1000 } else { r.limit.min(100_000) };
        let store = self.settings.store.get().await.map_err(unavailable)?;
        let watch = (!r.watch.is_empty()).then_some(r.watch.as_str());
        let files = store.list_files(watch, limit).await.map_err(unavailable)?;
        Ok(Response::new(ListFilesResponse { files: files.iter().map(wire).collect() }))
    }

    async fn redrive_file(&self, req: Request<RedriveFileRequest>) -> Result<Response<RedriveFileResponse>, Status> {
        let r = req.into_inner();
        if r.watch.is_empty() || r.path.is_empty() {
            return Err(Status::invalid_argument("give the watch and the path of the file to re-drive"));
        }
        let store = self.settings.store.get().await.map_err(unavailable)?;
        let now = crate::now_ms();
        let file = store
            .redrive_file(&r.watch, &r.path, now)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Status::not_found(format!("watch {:?} has never seen {:?}", r.watch, r.path)))?;
        Ok(Response::new(RedriveFileResponse { file: Some(wire(&file)) }))
    }
}
