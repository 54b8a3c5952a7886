//! The request guard: every request to the gRPC port passes it first.
//!
//! It looks up the method in [`RULES`] and refuses one that has no rule
//! (PERMISSION_DENIED, auth on or off): a new RPC is unusable until it is
//! given one, and the test `every_rpc_has_a_rule` below lists every RPC of
//! the API's descriptors against the table. While auth is enabled it also
//! authenticates the request and enforces the coarse rules (root only,
//! some permission); handlers check the fine ones ([`Rule::Checked`]:
//! which keys, streams, services, subscriptions) through `auth::Authz`.
//!
//! Who the caller is, while auth is enabled (first that applies):
//! 1. a request another node forwarded (`esf-forwarded` with the peer
//!    secret): the user it names in `esf-forwarded-user`, or the node
//!    itself if none (its background tasks; requests it checked itself);
//! 2. `token` metadata from `Auth/Authenticate`;
//! 3. with `--client-cert-auth`, the common name of the connection's
//!    client certificate (verified at the handshake), if it is a user
//!    (etcd's rule);
//! 4. none: UNAUTHENTICATED.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use esf_proto::wire::{FORWARDED_METADATA, FORWARDED_USER_METADATA, TOKEN_METADATA};
use tonic::Status;
use tonic::body::Body;

use crate::auth::{Authz, Caller, token};
use crate::context::Ctx;
use crate::error::Error;
use crate::telemetry;

/// What a method needs, while auth is enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Nothing (health checks, authenticating).
    Open,
    /// The peer secret, checked by `intercept::PeersOnly` (Raft traffic).
    Peers,
    /// An authenticated caller with at least one permission.
    Any,
    /// The root role.
    Root,
    /// An authenticated caller with at least one permission; the handler
    /// checks the permission on what the request names.
    Checked,
}

/// Every method of the gRPC port and its rule. Prefix entries (ending in
/// `/`) cover a whole service.
pub const RULES: &[(&str, Rule)] = &[
    ("/grpc.health.v1.Health/", Rule::Open),
    ("/grpc.reflection.v1.ServerReflection/", Rule::Any),
    ("/esf.v1.RaftTransport/", Rule::Peers),
    ("/esf.v1.Auth/Authenticate", Rule::Open),
    ("/esf.v1.Auth/Status", Rule::Open),
    ("/esf.v1.Auth/Enable", Rule::Root),
    ("/esf.v1.Auth/Disable", Rule::Root),
    ("/esf.v1.Auth/UserAdd", Rule::Root),
    ("/esf.v1.Auth/UserDelete", Rule::Root),
    ("/esf.v1.Auth/UserGet", Rule::Root),
    ("/esf.v1.Auth/UserList", Rule::Root),
    ("/esf.v1.Auth/UserPasswd", Rule::Root),
    ("/esf.v1.Auth/UserGrantRole", Rule::Root),
    ("/esf.v1.Auth/UserRevokeRole", Rule::Root),
    ("/esf.v1.Auth/RoleAdd", Rule::Root),
    ("/esf.v1.Auth/RoleDelete", Rule::Root),
    ("/esf.v1.Auth/RoleGet", Rule::Root),
    ("/esf.v1.Auth/RoleList", Rule::Root),
    ("/esf.v1.Auth/RoleGrantPermission", Rule::Root),
    ("/esf.v1.Auth/RoleRevokePermission", Rule::Root),
    ("/esf.v1.Config/Put", Rule::Checked),
    ("/esf.v1.Config/Range", Rule::Checked),
    ("/esf.v1.Config/Delete", Rule::Checked),
    ("/esf.v1.Config/Txn", Rule::Checked),
    ("/esf.v1.Config/History", Rule::Checked),
    ("/esf.v1.Config/Compact", Rule::Root),
    ("/esf.v1.Config/Watch", Rule::Checked),
    ("/esf.v1.Lease/Grant", Rule::Checked),
    ("/esf.v1.Lease/Revoke", Rule::Checked),
    ("/esf.v1.Lease/KeepAlive", Rule::Checked),
    ("/esf.v1.Lease/KeepAliveStream", Rule::Checked),
    ("/esf.v1.Lease/TimeToLive", Rule::Checked),
    ("/esf.v1.Registry/Register", Rule::Checked),
    ("/esf.v1.Registry/Deregister", Rule::Checked),
    ("/esf.v1.Registry/CheckUpdate", Rule::Checked),
    ("/esf.v1.Registry/Lookup", Rule::Checked),
    ("/esf.v1.Registry/ListServices", Rule::Checked),
    ("/esf.v1.Registry/Watch", Rule::Checked),
    ("/esf.v1.Events/Append", Rule::Checked),
    ("/esf.v1.Events/Get", Rule::Checked),
    ("/esf.v1.Events/ReadStream", Rule::Checked),
    ("/esf.v1.Events/ReadPartition", Rule::Checked),
    ("/esf.v1.Events/DeleteStream", Rule::Checked),
    ("/esf.v1.Events/Query", Rule::Checked),
    ("/esf.v1.Events/Subscribe", Rule::Checked),
    ("/esf.v1.Events/SetRetention", Rule::Root),
    ("/esf.v1.Events/ListRetention", Rule::Any),
    ("/esf.v1.Events/ReadIndex", Rule::Checked),
    ("/esf.v1.Events/CreateIndex", Rule::Root),
    ("/esf.v1.Events/DropIndex", Rule::Root),
    ("/esf.v1.Events/ListIndexes", Rule::Any),
    ("/esf.v1.Subscriptions/Create", Rule::Checked),
    ("/esf.v1.Subscriptions/Get", Rule::Checked),
    ("/esf.v1.Subscriptions/List", Rule::Checked),
    ("/esf.v1.Subscriptions/Delete", Rule::Checked),
    ("/esf.v1.Subscriptions/Ack", Rule::Checked),
    ("/esf.v1.Subscriptions/Join", Rule::Checked),
    ("/esf.v1.Subscriptions/Leave", Rule::Checked),
    ("/esf.v1.Subscriptions/Consumers", Rule::Checked),
    ("/esf.v1.Cluster/Members", Rule::Any),
    ("/esf.v1.Cluster/Status", Rule::Any),
    ("/esf.v1.Cluster/Health", Rule::Any),
    ("/esf.v1.Cluster/AddLearner", Rule::Root),
    ("/esf.v1.Cluster/Promote", Rule::Root),
    ("/esf.v1.Cluster/Remove", Rule::Root),
    ("/esf.v1.Cluster/TransferLeader", Rule::Root),
    ("/esf.v1.Cluster/Hello", Rule::Root),
    ("/esf.v1.Cluster/Snapshot", Rule::Root),
    ("/esf.v1.Cluster/PartitionSnapshot", Rule::Root),
    ("/esf.v1.Cluster/Consistency", Rule::Root),
];

/// The rule of the method at `path`, if it has one.
pub fn rule(path: &str) -> Option<Rule> {
    RULES
        .iter()
        .find(|(p, _)| {
            if p.ends_with('/') {
                path.starts_with(p)
            } else {
                path == *p
            }
        })
        .map(|(_, r)| *r)
}

/// The guard as a tower layer around every service of the port.
#[derive(Clone)]
pub struct GuardLayer(pub Ctx);

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            ctx: self.0.clone(),
        }
    }
}

/// The guard around one service.
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    ctx: Ctx,
}

impl<S> tower::Service<http::Request<Body>> for Guard<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let metrics = telemetry::request_metrics(req.uri().path());
        let started = std::time::Instant::now();
        let answer: Self::Future = match admit(&self.ctx, &req) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                Box::pin(self.inner.call(req))
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        };
        Box::pin(async move {
            let resp = answer.await;
            // A refusal carries its status in the headers; a served call
            // in the trailers (OK unless the headers say otherwise).
            let code = match &resp {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                Err(_) => tonic::Code::Unknown as i32,
            };
            metrics.observe(code, started.elapsed());
            resp
        })
    }
}

/// The common name of the (verified) client certificate of `req`'s
/// connection, if it has one.
fn certificate_user(req: &http::Request<Body>) -> Option<String> {
    let r = tonic::Request::from_parts(tonic::metadata::MetadataMap::new(), req.extensions().clone(), ());
    crate::net::tls::client_cert_common_name(&r)
}

/// Who `req` acts for, or why it is refused.
fn admit(ctx: &Ctx, req: &http::Request<Body>) -> Result<Caller, Status> {
    let path = req.uri().path();
    // A removed node serves nobody, peers included; UNAVAILABLE so that
    // clients move on to another endpoint.
    if let Some(why) = ctx.removed.get()
        && !path.starts_with("/grpc.health.v1.Health/")
    {
        return Err(Status::unavailable(why.clone()));
    }
    let Some(rule) = rule(path) else {
        return Err(Status::permission_denied(format!(
            "{path}: this method has no permission rule, so nobody may call it"
        )));
    };
    let state = ctx.meta.store().auth();
    if !state.enabled() || matches!(rule, Rule::Open | Rule::Peers) {
        return Ok(Caller::Anonymous);
    }
    let headers = req.headers();
    let caller = if headers.contains_key(FORWARDED_METADATA) && ctx.pool.secret().verify_headers(headers) {
        match headers.get(FORWARDED_USER_METADATA).map(|v| v.to_str()) {
            Some(Ok(u)) => Caller::User(u.to_string()),
            Some(Err(_)) => return Err(Status::invalid_argument("esf-forwarded-user: not ASCII")),
            None => Caller::Node,
        }
    } else if let Some(t) = headers.get(TOKEN_METADATA) {
        let t = t
            .to_str()
            .map_err(|_| Status::unauthenticated("token: not ASCII; authenticate again"))?;
        Caller::User(token::verify(&state, t)?)
    } else if let Some(cn) = ctx.client_cert_auth.then(|| certificate_user(req)).flatten() {
        if !state.users.contains_key(&cn) {
            return Err(Error::Unauthenticated(format!(
                "{path}: the client certificate's common name {cn:?} is not a user"
            ))
            .into());
        }
        Caller::User(cn)
    } else {
        return Err(Error::Unauthenticated(format!(
            "{path}: auth is enabled: send a token (Auth/Authenticate; esf --user NAME) or a client certificate whose common name is a user"
        ))
        .into());
    };
    let authz = Authz::new(ctx, caller.clone());
    match rule {
        Rule::Root => authz.require_root(path)?,
        // A user without any permission may do nothing but authenticate,
        // whatever the request names (even nothing: an empty txn).
        Rule::Any | Rule::Checked => authz.require_any(path)?,
        Rule::Open | Rule::Peers => {}
    }
    Ok(caller)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_resolve_exact_then_prefix() {
        assert_eq!(rule("/esf.v1.Config/Put"), Some(Rule::Checked));
        assert_eq!(rule("/esf.v1.Config/Compact"), Some(Rule::Root));
        assert_eq!(rule("/esf.v1.RaftTransport/Vote"), Some(Rule::Peers));
        assert_eq!(rule("/grpc.health.v1.Health/Check"), Some(Rule::Open));
        assert_eq!(rule("/esf.v1.Config/PutX"), None, "no prefix match on a method");
        assert_eq!(rule("/esf.v1.Nope/X"), None);
    }

    /// Every RPC of the API has a rule, and every rule names an RPC that
    /// exists (a renamed method must not leave a stale rule behind).
    #[test]
    fn every_rpc_has_a_rule() {
        use prost::Message;
        let fds = prost_types::FileDescriptorSet::decode(esf_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
        let mut methods = Vec::new();
        for file in &fds.file {
            for service in &file.service {
                for method in &service.method {
                    methods.push(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
                }
            }
        }
        assert!(methods.len() > 50, "only {} methods in the descriptors", methods.len());
        let missing: Vec<&String> = methods.iter().filter(|m| rule(m).is_none()).collect();
        assert!(missing.is_empty(), "RPCs without a rule in RULES: {missing:?}");
        let stale: Vec<&str> = RULES
            .iter()
            .map(|(path, _)| *path)
            .filter(|path| path.starts_with("/esf.v1."))
            .filter(|path| {
                !methods
                    .iter()
                    .any(|m| m == path || (path.ends_with('/') && m.starts_with(path)))
            })
            .collect();
        assert!(stale.is_empty(), "rules for RPCs that do not exist: {stale:?}");
    }
}
