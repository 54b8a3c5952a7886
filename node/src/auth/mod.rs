//! Who is calling, and what they may do.
//!
//! The request guard (`api::guard`) turns each request's credentials into
//! a [`Caller`] (a token, a TLS client certificate's common name, or a
//! peer node vouching for the user of a request it forwarded) and puts it
//! in the request's extensions. Handlers then ask [`Authz`] for the
//! permission the operation needs before they read or propose; writes to
//! meta are proposed as [`Authz::wrap`] (`Op::AsUser`), so apply checks
//! the same permissions again against the auth state of that moment.
//!
//! The users, roles and permissions themselves live in the meta state
//! machine (`esf_raft::meta::auth`); this module adds passwords
//! ([`password`]) and tokens ([`token`]).

pub mod password;
pub mod token;

use std::sync::Arc;

use esf_proto::wire::FORWARDED_USER_METADATA;
use esf_raft::command::{KeyRange, Op};
use esf_raft::meta::auth::{AuthState, Need, Resource};
use tonic::Request;

use crate::context::Ctx;
use crate::error::{Error, Result};

/// Who a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Nobody authenticated: allowed everything while auth is disabled,
    /// nothing while it is enabled.
    Anonymous,
    /// A user (authenticated by token, certificate, or a peer node).
    User(String),
    /// A node of the cluster acting for itself (its background tasks, or
    /// a request it forwarded after checking it): allowed everything.
    Node,
}

impl Caller {
    /// The caller the guard put in `req`'s extensions ([`Caller::Anonymous`]
    /// if none: a request that skipped the guard gets nothing while auth
    /// is enabled).
    pub fn of<T>(req: &Request<T>) -> Caller {
        req.extensions().get::<Caller>().cloned().unwrap_or(Caller::Anonymous)
    }

    /// The user's name, if the caller is a user.
    pub fn user(&self) -> Option<&str> {
        match self {
            Caller::User(u) => Some(u),
            _ => None,
        }
    }

    /// Marks a request this node forwards with the user it acts for (the
    /// receiving node believes it only from a peer: see `api::guard`).
    pub fn mark<T>(&self, req: &mut Request<T>) {
        if let Some(v) = self.user().and_then(|u| u.parse().ok()) {
            req.metadata_mut().insert(FORWARDED_USER_METADATA, v);
        }
    }
}

/// The permissions of one caller, against the auth state as this node last
/// applied it.
pub struct Authz {
    state: Arc<AuthState>,
    caller: Caller,
}

impl Authz {
    /// `caller`'s permissions on this node.
    pub fn new(ctx: &Ctx, caller: Caller) -> Authz {
        Authz {
            state: ctx.meta.store().auth(),
            caller,
        }
    }

    /// The permissions of whoever sent `req`.
    pub fn of<T>(ctx: &Ctx, req: &Request<T>) -> Authz {
        Authz::new(ctx, Caller::of(req))
    }

    /// The caller.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    fn unauthenticated(&self) -> Error {
        Error::Unauthenticated("auth is enabled: authenticate first (esf --user NAME, or a token)".into())
    }

    /// Whether the caller may do `need` on all of `range` of `resource`.
    pub fn permits(&self, resource: Resource, need: Need, range: &KeyRange) -> bool {
        match &self.caller {
            Caller::Node => true,
            Caller::Anonymous => !self.state.enabled(),
            Caller::User(u) => self.state.permits(u, resource, need, range),
        }
    }

    /// Refuses unless the caller may do `need` on all of `range`.
    pub fn require(&self, resource: Resource, need: Need, range: &KeyRange) -> Result<()> {
        match &self.caller {
            Caller::Node => Ok(()),
            Caller::Anonymous if self.state.enabled() => Err(self.unauthenticated()),
            Caller::Anonymous => Ok(()),
            Caller::User(u) => Ok(self.state.require(u, resource, need, range)?),
        }
    }

    /// [`Authz::require`] of one name.
    pub fn require_name(&self, resource: Resource, need: Need, name: &str) -> Result<()> {
        self.require(resource, need, &KeyRange::Key(name.as_bytes().to_vec()))
    }

    /// Refuses unless the caller has the root role (`what` names the
    /// operation in the refusal).
    pub fn require_root(&self, what: &str) -> Result<()> {
        match &self.caller {
            Caller::Node => Ok(()),
            Caller::Anonymous if self.state.enabled() => Err(self.unauthenticated()),
            Caller::Anonymous => Ok(()),
            Caller::User(u) => Ok(self.state.require_root(u, what)?),
        }
    }

    /// Refuses unless the caller holds some permission (what operations
    /// on no named thing need: cluster status, listing, lease keep-alive).
    pub fn require_any(&self, what: &str) -> Result<()> {
        match &self.caller {
            Caller::Node => Ok(()),
            Caller::Anonymous if self.state.enabled() => Err(self.unauthenticated()),
            Caller::Anonymous => Ok(()),
            Caller::User(u) if self.state.has_any(u) => Ok(()),
            Caller::User(u) => Err(Error::PermissionDenied(format!(
                "user {u:?} has no permissions, so may not {what}"
            ))),
        }
    }

    /// Refuses unless the caller may write some key or service (what
    /// leases are for).
    pub fn require_lease(&self) -> Result<()> {
        match &self.caller {
            Caller::User(u) if self.state.enabled() && !self.state.may_lease(u) => Err(Error::PermissionDenied(
                format!("user {u:?} may write no key or service, so may not use leases"),
            )),
            _ => self.require_any("use leases"),
        }
    }

    /// Checks what `op` needs now (fast refusal) and returns it as the
    /// command to propose: done as the caller's user, so apply checks it
    /// again (a permission revoked meanwhile still stops it).
    pub fn wrap(&self, op: Op) -> Result<Op> {
        match &self.caller {
            Caller::Node => Ok(op),
            Caller::Anonymous if self.state.enabled() => Err(self.unauthenticated()),
            Caller::Anonymous => Ok(op),
            Caller::User(u) => {
                self.state.check_op(u, &op)?;
                Ok(Op::AsUser {
                    user: u.clone(),
                    op: Box::new(op),
                })
            }
        }
    }
}
