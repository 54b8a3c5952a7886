//! Forwarding a refused request to the leader, for the gRPC services.
//!
//! A write or linearizable read that reaches a follower is forwarded once
//! to the leader the refusal names, marked with `esf-forwarded` so it is
//! never forwarded again ([`crate::context::Origin`]); if the leader is
//! unknown the caller gets UNAVAILABLE and retries. The answer to a
//! forwarded meta request (config, lease, registry, subscriptions, cluster)
//! names the leader (`esf-leader-addr`), so esf-client sends the next ones
//! there directly; requests of the Events service do not (event requests
//! go to their partition's leader, which the client looks up itself).
//!
//! Event requests routed to a partition's replica are not forwarded here
//! but by the events domain (`crate::events`), which background tasks
//! call too.

/// Returns from the handler with the answer of the leader named by `$err`
/// (a `crate::error::Error` or anything that converts into one), called
/// through a `$stub` with `$method($msg)`, or with `$err` itself.
/// `no_hint:` before the arguments leaves the leader hint out of the answer
/// (the Events service, and Cluster requests, as before the hint existed).
macro_rules! forward_or {
    (no_hint: $ctx:expr, $stub:ty, $req:expr, $err:expr, $method:ident, $msg:expr) => {{
        $crate::api::forward::forward_or!(@go false, $ctx, $stub, $req, $err, $method, $msg)
    }};
    ($ctx:expr, $stub:ty, $req:expr, $err:expr, $method:ident, $msg:expr) => {{
        $crate::api::forward::forward_or!(@go true, $ctx, $stub, $req, $err, $method, $msg)
    }};
    (@go $hint:expr, $ctx:expr, $stub:ty, $req:expr, $err:expr, $method:ident, $msg:expr) => {{
        let err: $crate::error::Error = $err.into();
        let caller = $crate::auth::Caller::of(&$req);
        match $ctx.forward_target($crate::context::Origin::of(&$req), &err) {
            Some(addr) => {
                let mut c: $stub = $ctx.peer(&addr)?;
                let mut fwd = $ctx.forwarded($msg);
                caller.mark(&mut fwd);
                let mut resp = c
                    .$method(fwd)
                    .await
                    .map_err($crate::error::Error::Peer)?;
                if $hint {
                    if let Ok(v) = addr.parse() {
                        resp.metadata_mut().insert(esf_proto::wire::LEADER_ADDR_METADATA, v);
                    }
                }
                return Ok(resp);
            }
            None => return Err(err.into()),
        }
    }};
}
pub(crate) use forward_or;

/// Forwards a Cluster request that only the meta leader serves
/// (membership changes, leader transfer) when this node does not lead.
macro_rules! leader_only {
    ($ctx:expr, $req:expr, $method:ident) => {{
        if !$ctx.meta.raft().is_leader() {
            let e = $ctx.meta.not_leader_error();
            $crate::api::forward::forward_or!(
                no_hint: $ctx,
                esf_proto::v1::cluster_client::ClusterClient<tonic::transport::Channel>,
                $req,
                e,
                $method,
                $req.into_inner()
            );
        }
    }};
}
pub(crate) use leader_only;
