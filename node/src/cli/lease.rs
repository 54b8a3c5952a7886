//! `esf lease`: grant, revoke, keep-alive, time-to-live, list.

use super::*;

#[derive(Debug, Subcommand)]
pub(super) enum LeaseCmd {
    /// Grant a lease; prints its id.
    Grant {
        /// Time to live in seconds.
        ttl_secs: u64,
        /// Lease id to use (default: the cluster picks one).
        #[arg(long, default_value_t = 0)]
        id: u64,
    },
    /// Revoke a lease and delete its keys.
    Revoke { id: u64 },
    /// Granted TTL and time left.
    Ttl {
        id: u64,
        /// Also list the attached keys.
        #[arg(long)]
        keys: bool,
    },
    /// Keep a lease alive: renews every third of its TTL until interrupted
    /// (or once with --once).
    Keepalive {
        id: u64,
        #[arg(long)]
        once: bool,
    },
}

pub(super) async fn lease(c: Client, out: Output, cmd: LeaseCmd) -> anyhow::Result<()> {
    match cmd {
        LeaseCmd::Grant { ttl_secs, id } => {
            let r = c.lease_grant(ttl_secs, id).await?;
            print(out, &json!({"id": r.id, "ttl_secs": r.ttl_secs}), || {
                format!("lease {} granted with ttl {}s\n", r.id, r.ttl_secs)
            });
        }
        LeaseCmd::Revoke { id } => {
            let r = c.lease_revoke(id).await?;
            print(out, &json!({"id": id, "deleted_keys": r.deleted_keys}), || {
                format!("lease {id} revoked; {} keys deleted\n", r.deleted_keys)
            });
        }
        LeaseCmd::Ttl { id, keys } => {
            let r = c.lease_ttl(id, keys).await?;
            let names: Vec<String> = r.keys.iter().map(|k| text(k)).collect();
            print(
                out,
                &json!({"id": r.id, "granted_ttl_secs": r.granted_ttl_secs, "remaining_ms": r.remaining_ms, "keys": names}),
                || {
                    let mut s = format!(
                        "lease {} granted ttl {}s, remaining {:.1}s\n",
                        r.id,
                        r.granted_ttl_secs,
                        r.remaining_ms as f64 / 1000.0
                    );
                    for k in &names {
                        s += &format!("  {k}\n");
                    }
                    s
                },
            );
        }
        LeaseCmd::Keepalive { id, once: true } => {
            let r = c.lease_keepalive(id).await?;
            print(out, &json!({"id": r.id, "ttl_secs": r.ttl_secs}), || {
                format!("lease {} kept alive, ttl {}s\n", r.id, r.ttl_secs)
            });
        }
        LeaseCmd::Keepalive { id, once: false } => {
            c.lease_keep_alive_forever(id, |r| {
                print(out, &json!({"id": r.id, "ttl_secs": r.ttl_secs}), || {
                    format!("lease {} kept alive, ttl {}s\n", r.id, r.ttl_secs)
                })
            })
            .await?
        }
    }
    Ok(())
}
