//! The Registry service: register and deregister service instances (each
//! bound to a lease), look them up, and watch them change.
//!
//! Registering writes through a session (retried safely). A registry watch
//! that survives the loss of its node is a [`ResumableWatch`] over a
//! [`pb::RegistryWatchRequest`]. Nothing here keeps an instance's lease
//! alive: see `lease`.

use crate::endpoint::RegistryStub;
use crate::{Client, Result, ResumableWatch, Streaming, pb};

impl Client {
    /// Registers (or re-registers) an instance; returns the previous
    /// registration of the same id, if any.
    pub async fn register(&self, instance: pb::Instance) -> Result<pb::RegisterResponse> {
        let req = pb::RegisterRequest {
            instance: Some(instance),
            session: None,
        };
        self.write(
            "register",
            req,
            |mut c: RegistryStub, r| async move { c.register(r).await },
        )
        .await
    }

    /// Removes an instance; `deregistered` is false if it was not registered.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<pb::DeregisterResponse> {
        let req = pb::DeregisterRequest {
            service: service.to_string(),
            id: id.to_string(),
            session: None,
        };
        self.write("deregister", req, |mut c: RegistryStub, r| async move {
            c.deregister(r).await
        })
        .await
    }

    /// Reports the status of an instance's ttl check ("passing" or
    /// "critical", with why in `output`): it holds for the check's ttl.
    /// Call it at least that often (a third of the ttl leaves room for a
    /// lost call).
    pub async fn check_update(
        &self,
        service: &str,
        id: &str,
        status: &str,
        output: &str,
    ) -> Result<pb::CheckUpdateResponse> {
        let req = pb::CheckUpdateRequest {
            service: service.to_string(),
            id: id.to_string(),
            status: status.to_string(),
            output: output.to_string(),
        };
        self.ask("check update", req, |mut c: RegistryStub, r| async move {
            c.check_update(r).await
        })
        .await
    }

    /// The instances of a service carrying every tag in `tags`
    /// (linearizable).
    pub async fn lookup(&self, service: &str, tags: &[String]) -> Result<pb::LookupResponse> {
        let req = pb::LookupRequest {
            service: service.to_string(),
            tags: tags.to_vec(),
            serializable: false,
            passing: false,
        };
        self.ask("lookup", req, |mut c: RegistryStub, r| async move { c.lookup(r).await })
            .await
    }

    /// As [`Client::lookup`], leaving out instances whose health check is
    /// critical (instances without a check are always in).
    pub async fn lookup_passing(&self, service: &str, tags: &[String]) -> Result<pb::LookupResponse> {
        let req = pb::LookupRequest {
            service: service.to_string(),
            tags: tags.to_vec(),
            serializable: false,
            passing: true,
        };
        self.ask("lookup", req, |mut c: RegistryStub, r| async move { c.lookup(r).await })
            .await
    }

    /// Every service with at least one instance.
    pub async fn list_services(&self) -> Result<pb::ListServicesResponse> {
        self.ask(
            "list services",
            pb::ListServicesRequest { serializable: false },
            |mut c: RegistryStub, r| async move { c.list_services(r).await },
        )
        .await
    }

    /// Opens a registry watch on the first endpoint that answers (see
    /// [`Client::watch`]).
    pub async fn registry_watch(&self, req: pb::RegistryWatchRequest) -> Result<Streaming<pb::RegistryWatchResponse>> {
        self.ask("registry watch", req, |mut c: RegistryStub, r| async move {
            c.watch(r).await
        })
        .await
    }

    /// A registry watch that survives the loss of its node (see
    /// [`ResumableWatch`]). With `start_revision` 0 it starts after the
    /// current revision.
    pub async fn registry_watch_resumable(
        &self,
        mut req: pb::RegistryWatchRequest,
    ) -> Result<ResumableWatch<pb::RegistryWatchRequest>> {
        if req.start_revision == 0 {
            let r = self.list_services().await?;
            req.start_revision = r.header.map_or(0, |h| h.revision) + 1;
        }
        Ok(ResumableWatch::new(self.clone(), req))
    }
}
