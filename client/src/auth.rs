//! The Auth service: tokens, turning auth on and off, users, roles and
//! their permissions (etcd's model; see docs/security.md). Everything but
//! [`Client::auth_status`] needs the root role once auth is enabled; the
//! client authenticates by itself with [`crate::ClientOptions::credentials`].

use crate::endpoint::AuthStub;
use crate::{Client, Result, pb};

/// One permission to grant or revoke.
pub fn permission(resource: pb::Resource, access: pb::Access, range: pb::KeyRange) -> pb::Permission {
    pb::Permission {
        resource: resource as i32,
        access: access as i32,
        range: Some(range),
    }
}

macro_rules! auth_calls {
    ($($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) -> $resp:ty = $method:ident($req:expr);)*) => {$(
        $(#[$doc])*
        pub async fn $name(&self, $($arg: $ty),*) -> Result<$resp> {
            self.ask(
                concat!("auth ", stringify!($method)),
                $req,
                |mut c: AuthStub, r| async move { c.$method(r).await },
            )
            .await
        }
    )*};
}

impl Client {
    auth_calls! {
        /// Whether auth is enabled, and the auth revision.
        auth_status() -> pb::AuthStatusResponse = status(pb::AuthStatusRequest {});
        /// Turns auth on (user `root` must exist with role `root`).
        auth_enable() -> pb::AuthChangeResponse = enable(pb::AuthEnableRequest {});
        /// Turns auth off.
        auth_disable() -> pb::AuthChangeResponse = disable(pb::AuthDisableRequest {});
        /// Adds a user (`password` empty with `no_password`: certificate only).
        user_add(name: &str, password: &str, no_password: bool) -> pb::AuthChangeResponse = user_add(pb::UserAddRequest {
            name: name.into(),
            password: password.into(),
            no_password,
        });
        /// Deletes a user.
        user_delete(name: &str) -> pb::AuthChangeResponse = user_delete(pb::UserNameRequest { name: name.into() });
        /// A user's roles.
        user_get(name: &str) -> pb::UserGetResponse = user_get(pb::UserNameRequest { name: name.into() });
        /// Every user.
        user_list() -> pb::UserListResponse = user_list(pb::UserListRequest {});
        /// Sets a user's password (its tokens stop working).
        user_passwd(name: &str, password: &str) -> pb::AuthChangeResponse = user_passwd(pb::UserPasswdRequest {
            name: name.into(),
            password: password.into(),
        });
        /// Gives a user a role.
        user_grant_role(name: &str, role: &str) -> pb::AuthChangeResponse = user_grant_role(pb::UserRoleRequest {
            name: name.into(),
            role: role.into(),
        });
        /// Takes a role from a user.
        user_revoke_role(name: &str, role: &str) -> pb::AuthChangeResponse = user_revoke_role(pb::UserRoleRequest {
            name: name.into(),
            role: role.into(),
        });
        /// Adds a role without permissions.
        role_add(name: &str) -> pb::AuthChangeResponse = role_add(pb::RoleNameRequest { name: name.into() });
        /// Deletes a role.
        role_delete(name: &str) -> pb::AuthChangeResponse = role_delete(pb::RoleNameRequest { name: name.into() });
        /// A role's permissions.
        role_get(name: &str) -> pb::RoleGetResponse = role_get(pb::RoleNameRequest { name: name.into() });
        /// Every role.
        role_list() -> pb::RoleListResponse = role_list(pb::RoleListRequest {});
        /// Gives a role a permission.
        role_grant_permission(name: &str, permission: pb::Permission) -> pb::AuthChangeResponse =
            role_grant_permission(pb::RolePermissionRequest { name: name.into(), permission: Some(permission) });
        /// Takes from a role its permission on that resource and range.
        role_revoke_permission(name: &str, permission: pb::Permission) -> pb::AuthChangeResponse =
            role_revoke_permission(pb::RolePermissionRequest { name: name.into(), permission: Some(permission) });
    }
}
