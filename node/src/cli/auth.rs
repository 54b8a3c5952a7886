//! `esf auth`, `esf user`, `esf role`: turning auth on and off, users,
//! roles and permissions (etcdctl's commands, plus `--resource` for
//! ESF's streams, services and subscriptions).

use super::*;

#[derive(Debug, Subcommand)]
pub(super) enum AuthCmd {
    /// Turn auth on (user root must exist with role root).
    Enable,
    /// Turn auth off.
    Disable,
    /// Whether auth is on, and the auth revision.
    Status,
}

#[derive(Debug, Subcommand)]
pub(super) enum UserCmd {
    /// Add a user.
    Add {
        name: String,
        /// Its password (8 to 1024 bytes); or ESF_NEW_PASSWORD.
        #[arg(long, env = "ESF_NEW_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// No password: the user comes in by its TLS client certificate only.
        #[arg(long, conflicts_with = "password")]
        no_password: bool,
    },
    /// Delete a user.
    Delete { name: String },
    /// A user's roles.
    Get { name: String },
    /// Every user.
    List,
    /// Set a user's password (its tokens stop working).
    Passwd {
        name: String,
        #[arg(long, env = "ESF_NEW_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Give a user a role.
    GrantRole { name: String, role: String },
    /// Take a role from a user.
    RevokeRole { name: String, role: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum ResourceArg {
    Key,
    Stream,
    Service,
    Subscription,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum AccessArg {
    Read,
    Write,
    Readwrite,
}

/// The names a permission covers.
#[derive(Debug, clap::Args)]
pub(super) struct PermissionArgs {
    /// What the names are.
    #[arg(long, value_enum, default_value = "key")]
    resource: ResourceArg,
    /// A name (key, stream, service or subscription).
    key: String,
    /// End of the range [key, range_end) (exclusive).
    range_end: Option<String>,
    /// Every name starting with KEY ("" with --prefix: everything).
    #[arg(long, conflicts_with = "range_end")]
    prefix: bool,
}

#[derive(Debug, Subcommand)]
pub(super) enum RoleCmd {
    /// Add a role without permissions.
    Add { name: String },
    /// Delete a role (and take it from every user).
    Delete { name: String },
    /// A role's permissions.
    Get { name: String },
    /// Every role.
    List,
    /// Give a role a permission: `esf role grant-permission app readwrite app/ --prefix`.
    GrantPermission {
        name: String,
        #[arg(value_enum)]
        access: AccessArg,
        #[command(flatten)]
        on: PermissionArgs,
    },
    /// Take from a role its permission on that resource and range.
    RevokePermission {
        name: String,
        #[command(flatten)]
        on: PermissionArgs,
    },
}

fn permission(access: AccessArg, on: PermissionArgs) -> pb::Permission {
    let range = match (on.prefix, on.range_end) {
        (true, _) => pb::KeyRange::prefix(on.key),
        (false, Some(end)) => pb::KeyRange::between(on.key, end),
        (false, None) => pb::KeyRange::key(on.key),
    };
    esf_client::permission(
        match on.resource {
            ResourceArg::Key => pb::Resource::Key,
            ResourceArg::Stream => pb::Resource::Stream,
            ResourceArg::Service => pb::Resource::Service,
            ResourceArg::Subscription => pb::Resource::Subscription,
        },
        match access {
            AccessArg::Read => pb::Access::Read,
            AccessArg::Write => pb::Access::Write,
            AccessArg::Readwrite => pb::Access::Readwrite,
        },
        range,
    )
}

fn describe(p: &pb::Permission) -> Value {
    use pb::key_range::Kind;
    let resource = pb::Resource::try_from(p.resource).map_or("?", |r| match r {
        pb::Resource::Key => "key",
        pb::Resource::Stream => "stream",
        pb::Resource::Service => "service",
        pb::Resource::Subscription => "subscription",
    });
    let access = pb::Access::try_from(p.access).map_or("?", |a| match a {
        pb::Access::Read => "read",
        pb::Access::Write => "write",
        pb::Access::Readwrite => "readwrite",
    });
    let (kind, key, end) = match p.range.as_ref().and_then(|r| r.kind.clone()) {
        Some(Kind::Key(k)) => ("key", text(&k), String::new()),
        Some(Kind::Prefix(k)) => ("prefix", text(&k), String::new()),
        Some(Kind::Between(b)) => ("between", text(&b.start), text(&b.end)),
        None => ("?", String::new(), String::new()),
    };
    json!({"resource": resource, "access": access, "kind": kind, "key": key, "range_end": end})
}

fn changed(out: Output, what: String, r: pb::AuthChangeResponse) {
    print(out, &json!({"auth_revision": r.auth_revision}), || format!("{what}\n"));
}

pub(super) async fn auth(c: Client, out: Output, cmd: AuthCmd) -> anyhow::Result<()> {
    match cmd {
        AuthCmd::Enable => changed(out, "Authentication Enabled".into(), c.auth_enable().await?),
        AuthCmd::Disable => changed(out, "Authentication Disabled".into(), c.auth_disable().await?),
        AuthCmd::Status => {
            let r = c.auth_status().await?;
            print(
                out,
                &json!({"enabled": r.enabled, "auth_revision": r.auth_revision}),
                || {
                    format!(
                        "Authentication Status: {}\nAuthRevision: {}\n",
                        r.enabled, r.auth_revision
                    )
                },
            );
        }
    }
    Ok(())
}

pub(super) async fn user(c: Client, out: Output, cmd: UserCmd) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Add {
            name,
            password,
            no_password,
        } => {
            let password = match (password, no_password) {
                (Some(p), false) => p,
                (None, true) => String::new(),
                _ => anyhow::bail!("password: give --password (or ESF_NEW_PASSWORD), or --no-password"),
            };
            changed(
                out,
                format!("User {name} created"),
                c.user_add(&name, &password, no_password).await?,
            )
        }
        UserCmd::Delete { name } => changed(out, format!("User {name} deleted"), c.user_delete(&name).await?),
        UserCmd::Get { name } => {
            let r = c.user_get(&name).await?;
            print(out, &json!({"user": name, "roles": r.roles}), || {
                format!("User: {name}\nRoles: {}\n", r.roles.join(" "))
            });
        }
        UserCmd::List => {
            let r = c.user_list().await?;
            print(out, &json!(r.users), || {
                r.users.iter().map(|u| format!("{u}\n")).collect()
            });
        }
        UserCmd::Passwd { name, password } => {
            changed(out, "Password updated".into(), c.user_passwd(&name, &password).await?)
        }
        UserCmd::GrantRole { name, role } => changed(
            out,
            format!("Role {role} is granted to user {name}"),
            c.user_grant_role(&name, &role).await?,
        ),
        UserCmd::RevokeRole { name, role } => changed(
            out,
            format!("Role {role} is revoked from user {name}"),
            c.user_revoke_role(&name, &role).await?,
        ),
    }
    Ok(())
}

pub(super) async fn role(c: Client, out: Output, cmd: RoleCmd) -> anyhow::Result<()> {
    match cmd {
        RoleCmd::Add { name } => changed(out, format!("Role {name} created"), c.role_add(&name).await?),
        RoleCmd::Delete { name } => changed(out, format!("Role {name} deleted"), c.role_delete(&name).await?),
        RoleCmd::Get { name } => {
            let r = c.role_get(&name).await?;
            let perms: Vec<Value> = r.permissions.iter().map(describe).collect();
            print(out, &json!({"role": name, "permissions": perms}), || {
                let mut s = format!("Role {name}\n");
                for p in &perms {
                    s += &format!(
                        "  {} {} {} {:?}{}\n",
                        p["resource"].as_str().unwrap_or(""),
                        p["access"].as_str().unwrap_or(""),
                        p["kind"].as_str().unwrap_or(""),
                        p["key"].as_str().unwrap_or(""),
                        match p["range_end"].as_str() {
                            Some(e) if !e.is_empty() => format!(" to {e:?}"),
                            _ => String::new(),
                        }
                    );
                }
                s
            });
        }
        RoleCmd::List => {
            let r = c.role_list().await?;
            print(out, &json!(r.roles), || {
                r.roles.iter().map(|u| format!("{u}\n")).collect()
            });
        }
        RoleCmd::GrantPermission { name, access, on } => changed(
            out,
            format!("Role {name} updated"),
            c.role_grant_permission(&name, permission(access, on)).await?,
        ),
        RoleCmd::RevokePermission { name, on } => changed(
            out,
            format!("Permission of role {name} revoked"),
            c.role_revoke_permission(&name, permission(AccessArg::Read, on)).await?,
        ),
    }
    Ok(())
}
