//! `esf.v1.Auth`: users, roles, permissions and tokens over the meta group
//! (the records and their rules in `esf_raft::meta::auth`; passwords and
//! tokens in [`crate::auth`]). Changes are meta writes done as the root
//! user who asked (the guard lets only root in), forwarded to the leader
//! from a follower; reads see this node's state after a linearizable
//! barrier, so a user just added can authenticate at once anywhere.

use esf_proto::v1 as pb;
use esf_raft::command::{Command, KeyRange, Op, OpResult};
use esf_raft::meta::auth::{self as model, AuthChange, TOKEN_KEY_BYTES, check_name};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::forward::forward_or;
use crate::auth::{Authz, password, token};
use crate::context::Ctx;
use crate::error::Error;

type AuthStub = pb::auth_client::AuthClient<Channel>;

/// `esf.v1.Auth`.
pub struct AuthService(pub Ctx);

fn resource(r: i32) -> Result<model::Resource, Error> {
    Ok(match pb::Resource::try_from(r) {
        Ok(pb::Resource::Key) => model::Resource::Key,
        Ok(pb::Resource::Stream) => model::Resource::Stream,
        Ok(pb::Resource::Service) => model::Resource::Service,
        Ok(pb::Resource::Subscription) => model::Resource::Subscription,
        Err(_) => return Err(Error::invalid("permission.resource", format!("unknown value {r}"))),
    })
}

fn access(a: i32) -> Result<model::Access, Error> {
    Ok(match pb::Access::try_from(a) {
        Ok(pb::Access::Read) => model::Access::Read,
        Ok(pb::Access::Write) => model::Access::Write,
        Ok(pb::Access::Readwrite) => model::Access::ReadWrite,
        Err(_) => return Err(Error::invalid("permission.access", format!("unknown value {a}"))),
    })
}

/// The names a permission covers, as given (no clipping to user keys: a
/// permission on prefix "" covers everything).
fn names(r: Option<pb::KeyRange>) -> Result<KeyRange, Error> {
    use pb::key_range::Kind;
    const MAX: usize = esf_raft::limits::MAX_KEY_BYTES;
    let long = |field: &str, b: &[u8]| {
        if b.len() > MAX {
            Err(Error::invalid(field, format!("is {} bytes, over {MAX}", b.len())))
        } else {
            Ok(())
        }
    };
    match r.and_then(|r| r.kind) {
        None => Err(Error::invalid(
            "permission.range",
            "is required (key, prefix or between)",
        )),
        Some(Kind::Key(k)) if k.is_empty() => Err(Error::invalid("permission.range.key", "must not be empty")),
        Some(Kind::Key(k)) => long("permission.range.key", &k).map(|_| KeyRange::Key(k)),
        Some(Kind::Prefix(p)) => long("permission.range.prefix", &p).map(|_| KeyRange::Prefix(p)),
        Some(Kind::Between(b)) => {
            long("permission.range.start", &b.start)?;
            long("permission.range.end", &b.end)?;
            if b.end <= b.start {
                return Err(Error::invalid("permission.range.end", "must be after start"));
            }
            Ok(KeyRange::Between {
                start: b.start,
                end: b.end,
            })
        }
    }
}

fn permission_pb(p: &model::Permission) -> pb::Permission {
    use pb::key_range::Kind;
    pb::Permission {
        resource: match p.resource {
            model::Resource::Key => pb::Resource::Key,
            model::Resource::Stream => pb::Resource::Stream,
            model::Resource::Service => pb::Resource::Service,
            model::Resource::Subscription => pb::Resource::Subscription,
        } as i32,
        access: match p.access {
            model::Access::Read => pb::Access::Read,
            model::Access::Write => pb::Access::Write,
            model::Access::ReadWrite => pb::Access::Readwrite,
        } as i32,
        range: Some(pb::KeyRange {
            kind: Some(match &p.range {
                KeyRange::Key(k) => Kind::Key(k.clone()),
                KeyRange::Prefix(p) => Kind::Prefix(p.clone()),
                KeyRange::Between { start, end } => Kind::Between(pb::Between {
                    start: start.clone(),
                    end: end.clone(),
                }),
            }),
        }),
    }
}

impl AuthService {
    /// Proposes `change` as the caller; the new auth revision.
    async fn change<T>(&self, req: &Request<T>, change: AuthChange) -> Result<pb::AuthChangeResponse, Error> {
        let op = Authz::of(&self.0, req).wrap(Op::Auth(change))?;
        match self.0.write(Command::new(op)).await? {
            (h, OpResult::AuthChanged { auth_revision }) => Ok(pb::AuthChangeResponse {
                header: Some(h),
                auth_revision,
            }),
            (_, other) => Err(Error::unexpected(other)),
        }
    }

    /// This node's auth state once it has applied everything committed.
    async fn fresh(&self) -> Result<std::sync::Arc<model::AuthState>, Error> {
        self.0.meta.linearize().await?;
        Ok(self.0.meta.store().auth())
    }
}

/// Answers a change, or forwards it to the leader.
macro_rules! change {
    ($self:ident, $req:ident, $method:ident, $change:expr) => {{
        let msg = $req.get_ref().clone();
        match $self.change(&$req, $change).await {
            Ok(r) => Ok(Response::new(r)),
            Err(e) => forward_or!($self.0, AuthStub, $req, e, $method, msg),
        }
    }};
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthService {
    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let msg = req.get_ref().clone();
        check_name("name", &msg.name).map_err(Error::from)?;
        let state = match self.fresh().await {
            Ok(s) => s,
            Err(e) => forward_or!(self.0, AuthStub, req, e, authenticate, msg),
        };
        let wrong = || Error::Unauthenticated("authenticate: wrong user name or password".into());
        if !state.enabled() {
            return Err(Error::Precondition("authenticate: auth is not enabled".into()).into());
        }
        let Some(user) = state.users.get(&msg.name) else {
            // As slow as a real check, so timing does not tell who exists.
            let _ = password::hash("a password nobody has").await;
            return Err(wrong().into());
        };
        if !password::verify(&msg.password, &user.password_hash).await? {
            return Err(wrong().into());
        }
        let ttl = self.0.auth_token_ttl;
        Ok(Response::new(pb::AuthenticateResponse {
            header: Some(self.0.meta_header()),
            token: token::issue(&state, &msg.name, ttl)?,
            ttl_secs: ttl.as_secs(),
        }))
    }

    async fn status(&self, req: Request<pb::AuthStatusRequest>) -> Result<Response<pb::AuthStatusResponse>, Status> {
        let msg = req.get_ref().clone();
        let state = match self.fresh().await {
            Ok(s) => s,
            Err(e) => forward_or!(self.0, AuthStub, req, e, status, msg),
        };
        Ok(Response::new(pb::AuthStatusResponse {
            header: Some(self.0.meta_header()),
            enabled: state.enabled(),
            auth_revision: state.head.revision,
        }))
    }

    async fn enable(&self, req: Request<pb::AuthEnableRequest>) -> Result<Response<pb::AuthChangeResponse>, Status> {
        let token_key = password::random_bytes(TOKEN_KEY_BYTES)?;
        change!(self, req, enable, AuthChange::Enable { token_key })
    }

    async fn disable(&self, req: Request<pb::AuthDisableRequest>) -> Result<Response<pb::AuthChangeResponse>, Status> {
        change!(self, req, disable, AuthChange::Disable)
    }

    async fn user_add(&self, req: Request<pb::UserAddRequest>) -> Result<Response<pb::AuthChangeResponse>, Status> {
        let m = req.get_ref();
        check_name("name", &m.name).map_err(Error::from)?;
        let password_hash = match (m.no_password, m.password.is_empty()) {
            (true, true) => String::new(),
            (true, false) => return Err(Error::invalid("password", "must be empty with no_password").into()),
            (false, _) => password::hash(&m.password).await?,
        };
        let name = m.name.clone();
        change!(self, req, user_add, AuthChange::UserAdd { name, password_hash })
    }

    async fn user_delete(&self, req: Request<pb::UserNameRequest>) -> Result<Response<pb::AuthChangeResponse>, Status> {
        let name = req.get_ref().name.clone();
        change!(self, req, user_delete, AuthChange::UserDelete { name })
    }

    async fn user_get(&self, req: Request<pb::UserNameRequest>) -> Result<Response<pb::UserGetResponse>, Status> {
        let msg = req.get_ref().clone();
        let state = match self.fresh().await {
            Ok(s) => s,
            Err(e) => forward_or!(self.0, AuthStub, req, e, user_get, msg),
        };
        let u = state
            .users
            .get(&msg.name)
            .ok_or_else(|| Error::NotFound(format!("name: user {:?} does not exist", msg.name)))?;
        Ok(Response::new(pb::UserGetResponse {
            header: Some(self.0.meta_header()),
            roles: u.roles.clone(),
        }))
    }

    async fn user_list(&self, req: Request<pb::UserListRequest>) -> Result<Response<pb::UserListResponse>, Status> {
        let msg = req.get_ref().clone();
        let state = match self.fresh().await {
            Ok(s) => s,
            Err(e) => forward_or!(self.0, AuthStub, req, e, user_list, msg),
        };
        Ok(Response::new(pb::UserListResponse {
            header: Some(self.0.meta_header()),
            users: state.users.keys().cloned().collect(),
        }))
    }

    async fn user_passwd(
        &self,
        req: Request<pb::UserPasswdRequest>,
    ) -> Result<Response<pb::AuthChangeResponse>, Status> {
        let m = req.get_ref();
        let name = m.name.clone();
        let password_hash = password::hash(&m.password).await?;
        change!(self, req, user_passwd, AuthChange::UserPasswd { name, password_hash })
    }

    async fn user_grant_role(
        &self,
        req: Request<pb::UserRoleRequest>,
    ) -> Result<Response<pb::AuthChangeResponse>, Status> {
        let (name, role) = (req.get_ref().name.clone(), req.get_ref().role.clone());
        change!(self, req, user_grant_role, AuthChange::UserGrantRole { name, role })
    }

    async fn user_revoke_role(
        &self,
        req: Request<pb::UserRoleRequest>,
    ) -> Result<Response<pb::AuthChangeResponse>, Status> {
        let (name, role) = (req.get_ref().name.clone(), req.get_ref().role.clone());
        change!(self, req, user_revoke_role, AuthChange::UserRevokeRole { name, role })
    }

    async fn role_add(&self, req: Request<pb::RoleNameRequest>) -> Result<Response<pb::AuthChangeResponse>, Status> {
        let name = req.get_ref().name.clone();
        change!(self, req, role_add, AuthChange::RoleAdd { name })
    }

    async fn role_delete(&self, req: Request<pb::RoleNameRequest>) -> Result<Response<pb::AuthChangeResponse>, Status> {
        let name = req.get_ref().name.clone();
        change!(self, req, role_delete, AuthChange::RoleDelete { name })
    }

    async fn role_get(&self, req: Request<pb::RoleNameRequest>) -> Result<Response<pb::RoleGetResponse>, Status> {
        let msg = req.get_ref().clone();
        let state = match self.fresh().await {
            Ok(s) => s,
            Err(e) => forward_or!(self.0, AuthStub, req, e, role_get, msg),
        };
        if msg.name == model::ROOT_ROLE {
            return Ok(Response::new(pb::RoleGetResponse {
                header: Some(self.0.meta_header()),
                permissions: Vec::new(),
            }));
        }
        let r = state
            .roles
            .get(&msg.name)
            .ok_or_else(|| Error::NotFound(format!("name: role {:?} does not exist", msg.name)))?;
        Ok(Response::new(pb::RoleGetResponse {
            header: Some(self.0.meta_header()),
            permissions: r.permissions.iter().map(permission_pb).collect(),
        }))
    }

    async fn role_list(&self, req: Request<pb::RoleListRequest>) -> Result<Response<pb::RoleListResponse>, Status> {
        let msg = req.get_ref().clone();
        let state = match self.fresh().await {
            Ok(s) => s,
            Err(e) => forward_or!(self.0, AuthStub, req, e, role_list, msg),
        };
        let mut roles: Vec<String> = std::iter::once(model::ROOT_ROLE.to_string())
            .chain(state.roles.keys().cloned())
            .collect();
        roles.sort();
        Ok(Response::new(pb::RoleListResponse {
            header: Some(self.0.meta_header()),
            roles,
        }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<pb::RolePermissionRequest>,
    ) -> Result<Response<pb::AuthChangeResponse>, Status> {
        let m = req.get_ref().clone();
        let p = m
            .permission
            .ok_or_else(|| Error::invalid("permission", "is required"))?;
        let permission = model::Permission {
            resource: resource(p.resource)?,
            access: access(p.access)?,
            range: names(p.range)?,
        };
        change!(
            self,
            req,
            role_grant_permission,
            AuthChange::RoleGrant {
                name: m.name,
                permission
            }
        )
    }

    async fn role_revoke_permission(
        &self,
        req: Request<pb::RolePermissionRequest>,
    ) -> Result<Response<pb::AuthChangeResponse>, Status> {
        let m = req.get_ref().clone();
        let p = m
            .permission
            .ok_or_else(|| Error::invalid("permission", "is required"))?;
        let (resource, range) = (resource(p.resource)?, names(p.range)?);
        change!(
            self,
            req,
            role_revoke_permission,
            AuthChange::RoleRevoke {
                name: m.name,
                resource,
                range
            }
        )
    }
}
