//! The gRPC services: tonic adapters only. Each handler turns a request
//! into a call of the domain (`kv`, `events`, `registry`, `subscriptions`,
//! `cluster`, `backup`), forwards it to the leader when the domain says
//! this node cannot serve it ([`forward`]), and turns the answer back into
//! a response; errors become statuses through `crate::error` alone.
//!
//! Nothing outside this folder and `node.rs` imports it (checked by
//! `scripts/check-layers.sh`).

pub mod auth;
pub mod cluster;
pub mod config;
pub mod events;
pub mod forward;
pub mod guard;
pub mod intercept;
pub mod lease;
pub mod raft;
pub mod registry;
pub mod subscriptions;

use esf_proto::v1 as pb;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Router;

use crate::context::Ctx;
use crate::net::raft_network::MAX_MESSAGE_BYTES;

/// The server of the client port: every request passes the guard
/// ([`guard`]: rules, authentication) first.
pub fn server(
    ctx: &Ctx,
) -> tonic::transport::Server<tower::layer::util::Stack<guard::GuardLayer, tower::layer::util::Identity>> {
    tonic::transport::Server::builder().layer(guard::GuardLayer(ctx.clone()))
}

/// Every service of the client port on `server`: the client-facing ones
/// behind the cluster pin, the Raft transport (`raft`), health and
/// reflection.
pub fn routes<L: Clone>(
    server: &mut tonic::transport::Server<L>,
    ctx: &Ctx,
    raft: raft::RaftService,
    cluster_health: std::sync::Arc<crate::health::Health>,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    reflection: tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
) -> Router<L> {
    let pin = intercept::ClusterPin {
        cluster_id: ctx.cluster_id.clone(),
        secret: ctx.pool.secret().clone(),
    };
    server
        .add_service(pb::config_server::ConfigServer::with_interceptor(
            config::ConfigService(ctx.clone()),
            pin.clone(),
        ))
        .add_service(pb::auth_server::AuthServer::with_interceptor(
            auth::AuthService(ctx.clone()),
            pin.clone(),
        ))
        .add_service(pb::cluster_server::ClusterServer::with_interceptor(
            cluster::ClusterService(ctx.clone(), cluster_health),
            pin.clone(),
        ))
        .add_service(pb::lease_server::LeaseServer::with_interceptor(
            lease::LeaseService(ctx.clone()),
            pin.clone(),
        ))
        .add_service(pb::registry_server::RegistryServer::with_interceptor(
            registry::RegistryService(ctx.clone()),
            pin.clone(),
        ))
        .add_service(pb::subscriptions_server::SubscriptionsServer::with_interceptor(
            subscriptions::SubscriptionsService(ctx.clone()),
            pin.clone(),
        ))
        .add_service(InterceptedService::new(
            pb::events_server::EventsServer::new(events::EventsService(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            pin,
        ))
        .add_service(InterceptedService::new(
            pb::raft_transport_server::RaftTransportServer::new(raft)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            intercept::PeersOnly(ctx.pool.secret().clone()),
        ))
        .add_service(health)
        .add_service(reflection)
}
