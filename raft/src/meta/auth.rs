//! Users, roles and permissions, kept by the meta state machine (etcd's
//! model, extended to ESF's other resources).
//!
//! - A [`User`] has a password hash (computed by the node that took the
//!   request: apply never hashes) and roles. A [`Role`] has
//!   [`Permission`]s: read, write or both, on a range of one
//!   [`Resource`]'s names (config keys, event streams, registry services,
//!   subscriptions), given as a [`KeyRange`] (a key, a prefix, or
//!   `[start, end)`).
//! - The role [`ROOT_ROLE`] is built in: it may do everything, including
//!   the admin operations, and takes no permissions. Auth can be enabled
//!   only while the user [`ROOT_USER`] exists and has that role, and then
//!   root cannot be deleted nor lose the role (so nobody is locked out).
//! - Every change bumps the auth `revision` (not the key revision: auth
//!   changes are not key changes). A user's `password_revision` is the auth
//!   revision that last set its password; tokens issued before it are void.
//! - Permission is checked twice: by the node before proposing or reading
//!   (fast refusal), and here at apply, for the op a client's command
//!   carries ([`AuthState::check_op`]): every txn compare and branch op,
//!   `prev_kv` (a read), and lease revokes against the keys attached at
//!   apply time. A permission revoked while a write was in flight therefore
//!   still stops it.

use std::collections::BTreeMap;

use esf_storage::keys::prefix_end;
use serde::{Deserialize, Serialize};

use crate::command::{KeyRange, Op, Rejection, TxnOp};

/// The user that must exist, with [`ROOT_ROLE`], before auth is enabled.
pub const ROOT_USER: &str = "root";
/// The built-in role that may do everything.
pub const ROOT_ROLE: &str = "root";
/// Longest user or role name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Most permissions one role may hold.
pub const MAX_PERMISSIONS_PER_ROLE: usize = 1024;
/// Most roles one user may hold.
pub const MAX_ROLES_PER_USER: usize = 64;
/// Most users, and most roles, a cluster may have.
pub const MAX_PRINCIPALS: usize = 10_000;
/// Longest stored password hash, in bytes.
pub const MAX_PASSWORD_HASH_BYTES: usize = 512;
/// First byte of the meta keys ESF keeps for itself (the node's
/// `keyspace::RESERVED_KEY_BYTE`; a node test pins that they agree).
pub const RESERVED_KEY_BYTE: u8 = 0xff;
/// Prefix of the registry's instance keys (`SERVICE/ID` follows; the
/// node's `keyspace::Area::Registry`, pinned by the same test).
pub const REGISTRY_KEY_PREFIX: &[u8] = b"\xffregistry/";
/// Length of the token signing key, in bytes.
pub const TOKEN_KEY_BYTES: usize = 32;

/// What a permission applies to: the names of one kind of thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Resource {
    /// Config keys.
    Key,
    /// Event streams (by stream id).
    Stream,
    /// Registry services (by service name).
    Service,
    /// Durable subscriptions (by subscription name).
    Subscription,
}

impl Resource {
    /// Every resource.
    pub const ALL: [Resource; 4] = [
        Resource::Key,
        Resource::Stream,
        Resource::Service,
        Resource::Subscription,
    ];

    /// The name users type (`key`, `stream`, `service`, `subscription`).
    pub fn name(self) -> &'static str {
        match self {
            Resource::Key => "key",
            Resource::Stream => "stream",
            Resource::Service => "service",
            Resource::Subscription => "subscription",
        }
    }
}

/// What a permission allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Access {
    /// Read only.
    Read,
    /// Write only.
    Write,
    /// Both.
    ReadWrite,
}

impl Access {
    /// Whether this access grants `need`.
    pub fn grants(self, need: Need) -> bool {
        matches!(
            (self, need),
            (Access::ReadWrite, _) | (Access::Read, Need::Read) | (Access::Write, Need::Write)
        )
    }

    /// The name users type (`read`, `write`, `readwrite`).
    pub fn name(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "readwrite",
        }
    }
}

/// What an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// To read.
    Read,
    /// To write.
    Write,
}

impl Need {
    fn name(self) -> &'static str {
        match self {
            Need::Read => "read",
            Need::Write => "write",
        }
    }
}

/// One permission of a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    /// What it applies to.
    pub resource: Resource,
    /// What it allows.
    pub access: Access,
    /// Which names.
    pub range: KeyRange,
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Name.
    pub name: String,
    /// PHC string of the password hash; empty: no password login (the user
    /// can only come in by its TLS client certificate).
    pub password_hash: String,
    /// Roles, sorted.
    pub roles: Vec<String>,
    /// Auth revision that last set the password (tokens issued before are
    /// void).
    pub password_revision: u64,
}

/// A role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Name.
    pub name: String,
    /// Permissions, in the order granted.
    pub permissions: Vec<Permission>,
}

/// A change of the auth state, proposed by a root user through the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthChange {
    /// Turn auth on, with a new token signing key (random, chosen by the
    /// proposing node; rotating it voids every token).
    Enable {
        /// [`TOKEN_KEY_BYTES`] bytes.
        token_key: Vec<u8>,
    },
    /// Turn auth off.
    Disable,
    /// Add a user.
    UserAdd {
        /// Name.
        name: String,
        /// PHC hash, or empty for no password.
        password_hash: String,
    },
    /// Delete a user.
    UserDelete {
        /// Name.
        name: String,
    },
    /// Set a user's password.
    UserPasswd {
        /// Name.
        name: String,
        /// PHC hash, or empty for no password.
        password_hash: String,
    },
    /// Give a user a role.
    UserGrantRole {
        /// User.
        name: String,
        /// Role.
        role: String,
    },
    /// Take a role from a user.
    UserRevokeRole {
        /// User.
        name: String,
        /// Role.
        role: String,
    },
    /// Add a role without permissions.
    RoleAdd {
        /// Name.
        name: String,
    },
    /// Delete a role (and take it from every user).
    RoleDelete {
        /// Name.
        name: String,
    },
    /// Give a role a permission (one on the same resource and range is
    /// replaced).
    RoleGrant {
        /// Role.
        name: String,
        /// Permission.
        permission: Permission,
    },
    /// Take from a role its permission on this resource and range.
    RoleRevoke {
        /// Role.
        name: String,
        /// Resource.
        resource: Resource,
        /// Range, as granted.
        range: KeyRange,
    },
}

impl AuthChange {
    /// Short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthChange::Enable { .. } => "enable",
            AuthChange::Disable => "disable",
            AuthChange::UserAdd { .. } => "user_add",
            AuthChange::UserDelete { .. } => "user_delete",
            AuthChange::UserPasswd { .. } => "user_passwd",
            AuthChange::UserGrantRole { .. } => "user_grant_role",
            AuthChange::UserRevokeRole { .. } => "user_revoke_role",
            AuthChange::RoleAdd { .. } => "role_add",
            AuthChange::RoleDelete { .. } => "role_delete",
            AuthChange::RoleGrant { .. } => "role_grant",
            AuthChange::RoleRevoke { .. } => "role_revoke",
        }
    }
}

/// The scalar part of the auth state, one stored row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthHead {
    /// Whether requests must be authenticated.
    pub enabled: bool,
    /// Bumped by every change.
    pub revision: u64,
    /// Token signing key (empty until auth is first enabled).
    pub token_key: Vec<u8>,
}

/// One stored row an auth change writes (`None`: delete it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRow {
    /// The head row.
    Head(AuthHead),
    /// A user row.
    User(String, Option<User>),
    /// A role row.
    Role(String, Option<Role>),
}

/// The whole auth state, held in memory by the meta store (it is small:
/// at most [`MAX_PRINCIPALS`] users and roles).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthState {
    /// Scalars.
    pub head: AuthHead,
    /// Users by name.
    pub users: BTreeMap<String, User>,
    /// Roles by name (without the built-in root role).
    pub roles: BTreeMap<String, Role>,
}

fn denied(user: &str, reason: impl Into<String>) -> Rejection {
    Rejection::PermissionDenied {
        user: user.to_string(),
        reason: reason.into(),
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> Rejection {
    Rejection::InvalidArgument {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// A name of a user or role: 1 to [`MAX_NAME_BYTES`] bytes of printable
/// characters without spaces or `/`, `:` (they separate names elsewhere).
pub fn check_name(field: &str, name: &str) -> Result<(), Rejection> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(invalid(
            field,
            format!("must be 1 to {MAX_NAME_BYTES} bytes, not {}", name.len()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || matches!(c, '/' | ':'))
    {
        return Err(invalid(field, format!("must not contain {c:?}")));
    }
    Ok(())
}

/// A range as `[start, end)`, `end == None` meaning no end.
fn bounds(range: &KeyRange) -> (Vec<u8>, Option<Vec<u8>>) {
    match range {
        KeyRange::Key(k) => {
            let mut end = k.clone();
            end.push(0);
            (k.clone(), Some(end))
        }
        KeyRange::Prefix(p) => (p.clone(), prefix_end(p)),
        KeyRange::Between { start, end } => (start.clone(), Some(end.clone())),
    }
}

/// How users see a range in messages.
pub fn describe(range: &KeyRange) -> String {
    match range {
        KeyRange::Key(k) => format!("{:?}", String::from_utf8_lossy(k)),
        KeyRange::Prefix(p) => format!("prefix {:?}", String::from_utf8_lossy(p)),
        KeyRange::Between { start, end } => format!(
            "[{:?}, {:?})",
            String::from_utf8_lossy(start),
            String::from_utf8_lossy(end)
        ),
    }
}

impl AuthState {
    /// Whether requests must be authenticated.
    pub fn enabled(&self) -> bool {
        self.head.enabled
    }

    /// Whether `user` exists and has the root role.
    pub fn is_root(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT_ROLE))
    }

    fn permissions_of<'a>(&'a self, user: &'a User) -> impl Iterator<Item = &'a Permission> + 'a {
        user.roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.permissions.iter())
    }

    /// Whether auth lets `user` do `need` on every name of `range` of
    /// `resource` (always, while auth is disabled). The permissions of all
    /// the user's roles count together: two permissions that meet cover
    /// their union.
    pub fn permits(&self, user: &str, resource: Resource, need: Need, range: &KeyRange) -> bool {
        if !self.head.enabled || self.is_root(user) {
            return true;
        }
        let Some(u) = self.users.get(user) else {
            return false;
        };
        let (start, mut end) = bounds(range);
        if end.as_ref().is_some_and(|e| *e <= start) {
            // An empty range still needs its start key.
            let mut e = start.clone();
            e.push(0);
            end = Some(e);
        }
        let mut granted: Vec<(Vec<u8>, Option<Vec<u8>>)> = self
            .permissions_of(u)
            .filter(|p| p.resource == resource && p.access.grants(need))
            .map(|p| bounds(&p.range))
            .collect();
        granted.sort();
        // Sweep: `covered` is how far from `start` the granted ranges reach.
        let mut covered = start.clone();
        for (s, e) in granted {
            if s > covered {
                break;
            }
            match e {
                None => return true,
                Some(e) if e > covered => covered = e,
                Some(_) => {}
            }
            if end.as_ref().is_some_and(|end| covered >= *end) {
                return true;
            }
        }
        false
    }

    /// Whether `user` holds any permission at all (root does). Operations
    /// that touch no named thing (cluster status, lease keep-alive) need
    /// this much: a user with no permissions may do nothing but
    /// authenticate.
    pub fn has_any(&self, user: &str) -> bool {
        if !self.head.enabled || self.is_root(user) {
            return true;
        }
        self.users
            .get(user)
            .is_some_and(|u| self.permissions_of(u).next().is_some())
    }

    /// Whether `user` may write something a lease can hold: a config key
    /// or a registry service.
    pub fn may_lease(&self, user: &str) -> bool {
        if !self.head.enabled || self.is_root(user) {
            return true;
        }
        self.users.get(user).is_some_and(|u| {
            self.permissions_of(u)
                .any(|p| matches!(p.resource, Resource::Key | Resource::Service) && p.access.grants(Need::Write))
        })
    }

    /// Refuses unless `user` may do `need` on `key` of the meta keyspace
    /// (as a put, or a lease revoke deleting the lease's keys): a config
    /// key needs it on the key; a registry instance (`REGISTRY_KEY_PREFIX
    /// SERVICE/ID`) on its service; any other reserved key needs root.
    pub fn require_meta_key(&self, user: &str, need: Need, key: &[u8]) -> Result<(), Rejection> {
        if let Some(rest) = key.strip_prefix(REGISTRY_KEY_PREFIX) {
            let service = rest.split(|b| *b == b'/').next().unwrap_or_default();
            return self.require(user, Resource::Service, need, &KeyRange::Key(service.to_vec()));
        }
        if key.first() == Some(&RESERVED_KEY_BYTE) {
            return self.require_root(user, "a reserved key");
        }
        self.require(user, Resource::Key, need, &KeyRange::Key(key.to_vec()))
    }

    /// [`AuthState::require_meta_key`] for a range: one key as that; a
    /// wider range starting in the reserved keyspace needs root.
    fn require_meta_range(&self, user: &str, need: Need, range: &KeyRange) -> Result<(), Rejection> {
        let start = match range {
            KeyRange::Key(k) => return self.require_meta_key(user, need, k),
            KeyRange::Prefix(p) => p,
            KeyRange::Between { start, .. } => start,
        };
        if start.first() == Some(&RESERVED_KEY_BYTE) {
            return self.require_root(user, "a range of reserved keys");
        }
        self.require(user, Resource::Key, need, range)
    }

    /// [`AuthState::permits`] as a rejection naming what is missing.
    pub fn require(&self, user: &str, resource: Resource, need: Need, range: &KeyRange) -> Result<(), Rejection> {
        if self.permits(user, resource, need, range) {
            return Ok(());
        }
        Err(denied(
            user,
            format!("needs {} on {} {}", need.name(), resource.name(), describe(range)),
        ))
    }

    /// Refuses unless `user` has the root role.
    pub fn require_root(&self, user: &str, what: &str) -> Result<(), Rejection> {
        if !self.head.enabled || self.is_root(user) {
            return Ok(());
        }
        Err(denied(user, format!("{what} needs the root role")))
    }

    /// Checks the permissions `op` needs, done as `user`: every key it
    /// writes, every key it reads (txn compares and ranges, `prev_kv`).
    /// A lease revoke also needs write on the lease's keys, which the
    /// caller checks ([`AuthState::require`] per key) since only the store
    /// knows them.
    pub fn check_op(&self, user: &str, op: &Op) -> Result<(), Rejection> {
        if !self.head.enabled || self.is_root(user) {
            return Ok(());
        }
        if !self.users.contains_key(user) {
            return Err(denied(user, "no such user"));
        }
        let key = |need, range: &KeyRange| self.require_meta_range(user, need, range);
        match op {
            Op::Put(p) => {
                let r = KeyRange::Key(p.key.clone());
                key(Need::Write, &r)?;
                if p.prev_kv {
                    key(Need::Read, &r)?;
                }
                Ok(())
            }
            Op::Delete(d) => {
                key(Need::Write, &d.range)?;
                if d.prev_kv {
                    key(Need::Read, &d.range)?;
                }
                Ok(())
            }
            Op::Txn(t) => {
                for c in &t.compares {
                    key(Need::Read, &KeyRange::Key(c.key.clone()))?;
                }
                for op in t.success.iter().chain(&t.failure) {
                    match op {
                        TxnOp::Put(p) => self.check_op(user, &Op::Put(p.clone()))?,
                        TxnOp::Delete(d) => self.check_op(user, &Op::Delete(d.clone()))?,
                        TxnOp::Range(r) => key(Need::Read, &r.range)?,
                    }
                }
                Ok(())
            }
            Op::LeaseGrant { .. } | Op::LeaseRevoke { .. } => {
                if self.may_lease(user) {
                    Ok(())
                } else {
                    Err(denied(user, "leases need write on some key or service"))
                }
            }
            Op::Append(a) => self.require(
                user,
                Resource::Stream,
                Need::Write,
                &KeyRange::Key(a.stream.clone().into_bytes()),
            ),
            Op::DeleteStream { stream, .. } => self.require(
                user,
                Resource::Stream,
                Need::Write,
                &KeyRange::Key(stream.clone().into_bytes()),
            ),
            Op::AsUser { .. } => Err(denied(user, "a command cannot be done as two users")),
            Op::Batch(_) => Err(denied(user, "a batch is made by the leader, not by a client")),
            Op::Compact { .. }
            | Op::SetLimits(_)
            | Op::MemberReplicated { .. }
            | Op::RecordPartitions { .. }
            | Op::PlacePartitions { .. }
            | Op::AuditCursor { .. }
            | Op::RemoveEvents { .. }
            | Op::IndexField { .. }
            | Op::Auth(_) => Err(denied(user, format!("{} needs the root role", op.name()))),
        }
    }

    /// Applies `change` to a copy of this state: the new state and the rows
    /// to store, or a deterministic rejection.
    pub fn apply(&self, change: &AuthChange) -> Result<(AuthState, Vec<AuthRow>), Rejection> {
        let mut next = self.clone();
        let mut rows = Vec::new();
        let user_mut = |next: &mut AuthState, name: &str| -> Result<User, Rejection> {
            next.users
                .get(name)
                .cloned()
                .ok_or_else(|| invalid("user", format!("user {name:?} does not exist")))
        };
        match change {
            AuthChange::Enable { token_key } => {
                if token_key.len() != TOKEN_KEY_BYTES {
                    return Err(invalid("token_key", format!("must be {TOKEN_KEY_BYTES} bytes")));
                }
                if !self.is_root(ROOT_USER) {
                    return Err(invalid(
                        "auth",
                        format!("user {ROOT_USER:?} must exist with role {ROOT_ROLE:?} before auth is enabled"),
                    ));
                }
                next.head.enabled = true;
                next.head.token_key = token_key.clone();
            }
            AuthChange::Disable => next.head.enabled = false,
            AuthChange::UserAdd { name, password_hash } => {
                check_name("user", name)?;
                check_hash(password_hash)?;
                if next.users.contains_key(name) {
                    return Err(invalid("user", format!("user {name:?} already exists")));
                }
                if next.users.len() >= MAX_PRINCIPALS {
                    return Err(invalid(
                        "user",
                        format!("the cluster has {MAX_PRINCIPALS} users, the most it may"),
                    ));
                }
                let u = User {
                    name: name.clone(),
                    password_hash: password_hash.clone(),
                    roles: Vec::new(),
                    password_revision: self.head.revision + 1,
                };
                next.users.insert(name.clone(), u.clone());
                rows.push(AuthRow::User(name.clone(), Some(u)));
            }
            AuthChange::UserDelete { name } => {
                user_mut(&mut next, name)?;
                if self.head.enabled && name == ROOT_USER {
                    return Err(invalid("user", "root cannot be deleted while auth is enabled"));
                }
                next.users.remove(name);
                rows.push(AuthRow::User(name.clone(), None));
            }
            AuthChange::UserPasswd { name, password_hash } => {
                check_hash(password_hash)?;
                let mut u = user_mut(&mut next, name)?;
                u.password_hash = password_hash.clone();
                u.password_revision = self.head.revision + 1;
                next.users.insert(name.clone(), u.clone());
                rows.push(AuthRow::User(name.clone(), Some(u)));
            }
            AuthChange::UserGrantRole { name, role } => {
                let mut u = user_mut(&mut next, name)?;
                if role != ROOT_ROLE && !next.roles.contains_key(role) {
                    return Err(invalid("role", format!("role {role:?} does not exist")));
                }
                if !u.roles.contains(role) {
                    if u.roles.len() >= MAX_ROLES_PER_USER {
                        return Err(invalid(
                            "role",
                            format!("user {name:?} has {MAX_ROLES_PER_USER} roles, the most it may"),
                        ));
                    }
                    u.roles.push(role.clone());
                    u.roles.sort();
                }
                next.users.insert(name.clone(), u.clone());
                rows.push(AuthRow::User(name.clone(), Some(u)));
            }
            AuthChange::UserRevokeRole { name, role } => {
                let mut u = user_mut(&mut next, name)?;
                if !u.roles.contains(role) {
                    return Err(invalid("role", format!("user {name:?} does not have role {role:?}")));
                }
                if self.head.enabled && name == ROOT_USER && role == ROOT_ROLE {
                    return Err(invalid("role", "root cannot lose the root role while auth is enabled"));
                }
                u.roles.retain(|r| r != role);
                next.users.insert(name.clone(), u.clone());
                rows.push(AuthRow::User(name.clone(), Some(u)));
            }
            AuthChange::RoleAdd { name } => {
                check_name("role", name)?;
                if name == ROOT_ROLE || next.roles.contains_key(name) {
                    return Err(invalid("role", format!("role {name:?} already exists")));
                }
                if next.roles.len() >= MAX_PRINCIPALS {
                    return Err(invalid(
                        "role",
                        format!("the cluster has {MAX_PRINCIPALS} roles, the most it may"),
                    ));
                }
                let r = Role {
                    name: name.clone(),
                    permissions: Vec::new(),
                };
                next.roles.insert(name.clone(), r.clone());
                rows.push(AuthRow::Role(name.clone(), Some(r)));
            }
            AuthChange::RoleDelete { name } => {
                if name == ROOT_ROLE {
                    return Err(invalid("role", "the root role is built in and cannot be deleted"));
                }
                if next.roles.remove(name).is_none() {
                    return Err(invalid("role", format!("role {name:?} does not exist")));
                }
                rows.push(AuthRow::Role(name.clone(), None));
                for u in next.users.values_mut().filter(|u| u.roles.contains(name)) {
                    u.roles.retain(|r| r != name);
                    rows.push(AuthRow::User(u.name.clone(), Some(u.clone())));
                }
            }
            AuthChange::RoleGrant { name, permission } => {
                let mut r = role_of(&next, name)?;
                if let Some(p) = r
                    .permissions
                    .iter_mut()
                    .find(|p| p.resource == permission.resource && p.range == permission.range)
                {
                    p.access = permission.access;
                } else {
                    if r.permissions.len() >= MAX_PERMISSIONS_PER_ROLE {
                        return Err(invalid(
                            "permission",
                            format!("role {name:?} has {MAX_PERMISSIONS_PER_ROLE} permissions, the most it may"),
                        ));
                    }
                    r.permissions.push(permission.clone());
                }
                next.roles.insert(name.clone(), r.clone());
                rows.push(AuthRow::Role(name.clone(), Some(r)));
            }
            AuthChange::RoleRevoke { name, resource, range } => {
                let mut r = role_of(&next, name)?;
                let before = r.permissions.len();
                r.permissions
                    .retain(|p| !(p.resource == *resource && p.range == *range));
                if r.permissions.len() == before {
                    return Err(invalid(
                        "permission",
                        format!(
                            "role {name:?} has no permission on {} {}",
                            resource.name(),
                            describe(range)
                        ),
                    ));
                }
                next.roles.insert(name.clone(), r.clone());
                rows.push(AuthRow::Role(name.clone(), Some(r)));
            }
        }
        next.head.revision += 1;
        rows.push(AuthRow::Head(next.head.clone()));
        Ok((next, rows))
    }
}

fn role_of(state: &AuthState, name: &str) -> Result<Role, Rejection> {
    if name == ROOT_ROLE {
        return Err(invalid(
            "role",
            "the root role is built in: it may do everything and takes no permissions",
        ));
    }
    state
        .roles
        .get(name)
        .cloned()
        .ok_or_else(|| invalid("role", format!("role {name:?} does not exist")))
}

fn check_hash(hash: &str) -> Result<(), Rejection> {
    if hash.len() > MAX_PASSWORD_HASH_BYTES {
        return Err(invalid(
            "password_hash",
            format!("is over {MAX_PASSWORD_HASH_BYTES} bytes"),
        ));
    }
    Ok(())
}
