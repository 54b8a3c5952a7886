//! `esf.v1.Registry`: the service registry's gRPC service over the meta
//! group (records in [`crate::registry`]). Registration is a put bound to
//! the instance's lease, lookup a range of the service's prefix, a
//! registry watch a key watch on it; writes and linearizable reads are
//! forwarded to the meta leader.

use std::collections::BTreeMap;

use esf_proto::v1 as pb;
use esf_raft::command::{Command, DeleteRequest, KeyRange, Op, OpResult, PutRequest};
use esf_raft::meta::auth::{Need, Resource};
use futures::StreamExt;
use prost::Message;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::forward::forward_or;
use crate::auth::Authz;
use crate::context::Ctx;
use crate::convert::{self, consistency};
use crate::error::Error;
use crate::kv::watch;
use crate::registry::{self, watch_response};

type RegistryStub = pb::registry_client::RegistryClient<Channel>;

/// `esf.v1.Registry`.
pub struct RegistryService(pub Ctx);

type RegistryWatchStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::RegistryWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::registry_server::Registry for RegistryService {
    type WatchStream = RegistryWatchStream;

    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let mut msg = req.get_ref().clone();
        let Some(mut inst) = msg.instance.clone() else {
            return Err(Error::invalid("instance", "is required").into());
        };
        registry::check_instance(&inst)?;
        let authz = Authz::of(&self.0, &req);
        authz.require_name(Resource::Service, Need::Write, &inst.service)?;
        // The cluster's fields: a client's values are never taken.
        match inst.check.as_mut() {
            Some(c) => {
                registry::check_health_check(c)?;
                inst.health = "critical".into();
                inst.health_output = "not checked yet".into();
            }
            None => {
                inst.health.clear();
                inst.health_output.clear();
            }
        }
        msg.instance = Some(inst.clone());
        let stored = pb::Instance {
            lease: 0,
            revision: 0,
            ..inst.clone()
        };
        let cmd = Command {
            session: convert::session(msg.session),
            op: authz.wrap(Op::Put(PutRequest {
                key: registry::instance_key(&inst.service, &inst.id),
                value: stored.encode_to_vec(),
                lease: inst.lease,
                // The instance it replaces is a read of the service.
                prev_kv: authz.permits(
                    Resource::Service,
                    Need::Read,
                    &KeyRange::Key(inst.service.clone().into_bytes()),
                ),
            }))?,
        };
        match self.0.write(cmd).await {
            Ok((h, OpResult::Put { prev_kv })) => Ok(Response::new(pb::RegisterResponse {
                header: Some(h),
                previous: prev_kv.as_ref().map(registry::instance),
            })),
            Ok((_, other)) => Err(Error::unexpected(other).into()),
            Err(e) => forward_or!(self.0, RegistryStub, req, e, register, msg),
        }
    }

    async fn deregister(
        &self,
        req: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let msg = req.get_ref().clone();
        registry::check_name("service", &msg.service, false)?;
        registry::check_name("id", &msg.id, true)?;
        let authz = Authz::of(&self.0, &req);
        authz.require_name(Resource::Service, Need::Write, &msg.service)?;
        let cmd = Command {
            session: convert::session(msg.session),
            op: authz.wrap(Op::Delete(DeleteRequest {
                range: KeyRange::Key(registry::instance_key(&msg.service, &msg.id)),
                prev_kv: false,
            }))?,
        };
        match self.0.write(cmd).await {
            Ok((h, OpResult::Delete { deleted, .. })) => Ok(Response::new(pb::DeregisterResponse {
                header: Some(h),
                deregistered: deleted > 0,
            })),
            Ok((_, other)) => Err(Error::unexpected(other).into()),
            Err(e) => forward_or!(self.0, RegistryStub, req, e, deregister, msg),
        }
    }

    async fn check_update(
        &self,
        req: Request<pb::CheckUpdateRequest>,
    ) -> Result<Response<pb::CheckUpdateResponse>, Status> {
        let msg = req.get_ref().clone();
        registry::check_update(&msg)?;
        // Reporting an instance's health is writing its registration.
        Authz::of(&self.0, &req).require_name(Resource::Service, Need::Write, &msg.service)?;
        // Only the leader times ttl checks; a follower forwards.
        if !self.0.meta.raft().is_leader() {
            let e = self.0.meta.not_leader_error();
            forward_or!(self.0, RegistryStub, req, e, check_update, msg);
        }
        let key = registry::instance_key(&msg.service, &msg.id);
        let r = convert::read_all(KeyRange::Key(key), false);
        let (h, res) = match self.0.meta.range(&r, consistency(false)).await {
            Ok(v) => v,
            Err(e) => forward_or!(self.0, RegistryStub, req, e, check_update, msg),
        };
        let Some(inst) = res.kvs.first().map(registry::instance) else {
            return Err(Error::NotFound(format!("instance {}/{} is not registered", msg.service, msg.id)).into());
        };
        if inst.check.as_ref().is_none_or(|c| c.kind != "ttl") {
            return Err(Error::Precondition(format!(
                "instance {}/{} has no ttl check (its check is {})",
                msg.service,
                msg.id,
                inst.check.as_ref().map_or("none", |c| c.kind.as_str())
            ))
            .into());
        }
        self.0.ttl_checks.updated(&inst);
        let output = if msg.status == "passing" {
            String::new()
        } else {
            msg.output.clone()
        };
        if inst.health == msg.status && inst.health_output == output {
            return Ok(Response::new(pb::CheckUpdateResponse {
                header: Some(convert::header(h)),
                health: inst.health,
            }));
        }
        crate::registry_health::record(&self.0, &inst, &msg.status, output).await;
        Ok(Response::new(pb::CheckUpdateResponse {
            header: Some(self.0.meta_header()),
            health: msg.status,
        }))
    }

    async fn lookup(&self, req: Request<pb::LookupRequest>) -> Result<Response<pb::LookupResponse>, Status> {
        let msg = req.get_ref().clone();
        registry::check_name("service", &msg.service, false)?;
        Authz::of(&self.0, &req).require_name(Resource::Service, Need::Read, &msg.service)?;
        let r = convert::read_all(registry::instances(Some(&msg.service)), false);
        match self.0.meta.range(&r, consistency(msg.serializable)).await {
            Ok((h, res)) => Ok(Response::new(pb::LookupResponse {
                header: Some(convert::header(h)),
                instances: res
                    .kvs
                    .iter()
                    .map(registry::instance)
                    .filter(|i| msg.tags.iter().all(|t| i.tags.contains(t)))
                    .filter(|i| !msg.passing || i.health != "critical")
                    .collect(),
            })),
            Err(e) => forward_or!(self.0, RegistryStub, req, e, lookup, msg),
        }
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        // Lists the services the caller may read (Consul's filtering).
        let authz = Authz::of(&self.0, &req);
        authz.require_any("list services")?;
        let msg = req.get_ref().clone();
        let r = convert::read_all(registry::instances(None), true);
        match self.0.meta.range(&r, consistency(msg.serializable)).await {
            Ok((h, res)) => {
                let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                for kv in &res.kvs {
                    if let Some((service, _)) = registry::split_key(&kv.key)
                        && authz.permits(
                            Resource::Service,
                            Need::Read,
                            &KeyRange::Key(service.clone().into_bytes()),
                        )
                    {
                        *counts.entry(service).or_default() += 1;
                    }
                }
                Ok(Response::new(pb::ListServicesResponse {
                    header: Some(convert::header(h)),
                    services: counts
                        .into_iter()
                        .map(|(name, instances)| pb::ServiceSummary { name, instances })
                        .collect(),
                }))
            }
            Err(e) => forward_or!(self.0, RegistryStub, req, e, list_services, msg),
        }
    }

    async fn watch(&self, req: Request<pb::RegistryWatchRequest>) -> Result<Response<RegistryWatchStream>, Status> {
        let authz = Authz::of(&self.0, &req);
        let msg = req.into_inner();
        let service = if msg.service.is_empty() {
            authz.require(Resource::Service, Need::Read, &KeyRange::Prefix(Vec::new()))?;
            None
        } else {
            registry::check_name("watch.service", &msg.service, false)?;
            authz.require_name(Resource::Service, Need::Read, &msg.service)?;
            Some(msg.service.as_str())
        };
        let rx = watch::start_watch(
            &self.0,
            "watch",
            registry::instances(service),
            msg.start_revision,
            true,
            msg.progress_notify_ms,
        )?;
        Ok(Response::new(Box::pin(
            rx.map(|r| r.map(watch_response).map_err(Status::from)),
        )))
    }
}
