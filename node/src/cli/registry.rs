//! `esf registry`: register, deregister, lookup, list, watch.

use super::*;

#[derive(Debug, Subcommand)]
pub(super) enum RegistryCmd {
    /// Register an instance. With --ttl, grants a lease of that many
    /// seconds, binds the instance to it and keeps it alive until
    /// interrupted (SIGINT or SIGTERM revoke it, removing the instance; if
    /// this process dies, the instance goes when the TTL runs out).
    Register {
        service: String,
        id: String,
        /// host:port or URL where the instance is reached.
        address: String,
        /// A tag (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Metadata KEY=VALUE (repeatable).
        #[arg(long = "meta")]
        metadata: Vec<String>,
        /// Bind to this existing lease.
        #[arg(long, default_value_t = 0, conflicts_with = "ttl")]
        lease: u64,
        /// Grant a lease of this many seconds and keep it alive.
        #[arg(long)]
        ttl: Option<u64>,
        /// Health check: passing while a TCP connection to HOST:PORT opens.
        #[arg(long, conflicts_with_all = ["check_http", "check_grpc"])]
        check_tcp: Option<String>,
        /// Health check: passing while GET URL (http://...) answers 2xx.
        #[arg(long, conflicts_with = "check_grpc")]
        check_http: Option<String>,
        /// Health check: passing while grpc.health.v1 at HOST:PORT answers
        /// SERVING (for --check-grpc-service, default the server as a whole).
        #[arg(long, conflicts_with = "check_ttl_ms")]
        check_grpc: Option<String>,
        /// Health check: the instance reports its status (`esf registry
        /// pass` / `fail`) at least every this many ms, else it is critical.
        #[arg(long, conflicts_with_all = ["check_tcp", "check_http"])]
        check_ttl_ms: Option<u32>,
        /// The service the gRPC health check asks about.
        #[arg(long, default_value = "")]
        check_grpc_service: String,
        /// Between two probes, ms (default 10000).
        #[arg(long, default_value_t = 0)]
        check_interval_ms: u32,
        /// Deadline of one probe, ms (default 2000).
        #[arg(long, default_value_t = 0)]
        check_timeout_ms: u32,
    },
    /// Remove an instance.
    Deregister { service: String, id: String },
    /// Report an instance's ttl check passing (it holds for the ttl).
    Pass { service: String, id: String },
    /// Report an instance's ttl check critical, with why.
    Fail {
        service: String,
        id: String,
        /// Why (at most 256 bytes; the check's output).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Services with at least one instance.
    List,
    /// Instances of a service (with every --tag given).
    Get {
        service: String,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Only instances whose health check is not critical.
        #[arg(long)]
        passing: bool,
    },
    /// Print instances going up and down (every service if none is named).
    Watch {
        service: Option<String>,
        /// Start at this revision (default: changes from now on).
        #[arg(long, default_value_t = 0)]
        rev: u64,
        /// Exit after this many events (default: run until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
}

pub(super) fn instance_json(i: &pb::Instance) -> Value {
    json!({"service": i.service, "id": i.id, "address": i.address, "tags": i.tags, "metadata": i.metadata, "lease": i.lease, "revision": i.revision, "health": i.health, "health_output": i.health_output, "check": i.check.as_ref().map(|c| json!({"kind": c.kind, "target": c.target, "grpc_service": c.grpc_service, "interval_ms": c.interval_ms, "timeout_ms": c.timeout_ms, "ttl_ms": c.ttl_ms}))})
}

pub(super) fn instance_line(i: &pb::Instance) -> String {
    let mut s = format!("{}/{} {}", i.service, i.id, i.address);
    if !i.tags.is_empty() {
        s += &format!(" tags={}", i.tags.join(","));
    }
    let mut meta: Vec<_> = i.metadata.iter().collect();
    meta.sort();
    for (k, v) in meta {
        s += &format!(" {k}={v}");
    }
    if i.lease != 0 {
        s += &format!(" lease={}", i.lease);
    }
    if !i.health.is_empty() {
        s += &format!(" health={}", i.health);
        if !i.health_output.is_empty() {
            s += &format!(" ({})", i.health_output);
        }
    }
    s
}

pub(super) async fn registry(c: Client, out: Output, cmd: RegistryCmd) -> anyhow::Result<()> {
    match cmd {
        RegistryCmd::Register {
            service,
            id,
            address,
            tags,
            metadata,
            lease,
            ttl,
            check_tcp,
            check_http,
            check_grpc,
            check_grpc_service,
            check_interval_ms,
            check_timeout_ms,
            check_ttl_ms,
        } => {
            let check = [("tcp", check_tcp), ("http", check_http), ("grpc", check_grpc)]
                .into_iter()
                .find_map(|(kind, t)| t.map(|target| (kind, target)))
                .map(|(kind, target)| pb::HealthCheck {
                    kind: kind.into(),
                    target,
                    grpc_service: check_grpc_service.clone(),
                    interval_ms: check_interval_ms,
                    timeout_ms: check_timeout_ms,
                    ttl_ms: 0,
                })
                .or(check_ttl_ms.map(|ttl_ms| pb::HealthCheck {
                    kind: "ttl".into(),
                    ttl_ms,
                    ..Default::default()
                }));
            let mut meta = std::collections::HashMap::new();
            for m in metadata {
                let Some((k, v)) = m.split_once('=') else {
                    anyhow::bail!("--meta: {m:?} is not KEY=VALUE");
                };
                meta.insert(k.to_string(), v.to_string());
            }
            // Caught before registering, so an early signal still revokes.
            let mut interrupts = match ttl {
                Some(_) => Some(Interrupts::catch()?),
                None => None,
            };
            let lease = match ttl {
                Some(t) => c.lease_grant(t, 0).await?.id,
                None => lease,
            };
            let inst = pb::Instance {
                service,
                id,
                address,
                tags,
                metadata: meta,
                lease,
                revision: 0,
                check,
                ..Default::default()
            };
            let r = match c.register(inst.clone()).await {
                Ok(r) => r,
                Err(e) => {
                    if ttl.is_some() {
                        let _ = c.lease_revoke(lease).await;
                    }
                    return Err(e.into());
                }
            };
            let registered = pb::Instance {
                revision: r.header.as_ref().map_or(0, |h| h.revision),
                ..inst
            };
            print(out, &json!({"registered": instance_json(&registered)}), || {
                format!(
                    "registered {} at revision {}\n",
                    instance_line(&registered),
                    registered.revision
                )
            });
            let Some(interrupts) = interrupts.as_mut() else {
                return Ok(());
            };
            let keep = async {
                loop {
                    let r = c
                        .lease_keep_alive_forever(lease, |k| {
                            print(out, &json!({"lease": k.id, "ttl_secs": k.ttl_secs}), || {
                                format!("lease {} kept alive, ttl {}s\n", k.id, k.ttl_secs)
                            })
                        })
                        .await;
                    match r {
                        Err(esf_client::Error::NotFound(_)) => {
                            return anyhow::anyhow!("lease {lease} is gone: the instance was removed");
                        }
                        // The cluster is unreachable for now; the lease may
                        // still be alive: keep trying until it is known gone.
                        Err(e) => eprintln!("warning: keepalive of lease {lease}: {e}; retrying"),
                        Ok(()) => {}
                    }
                }
            };
            tokio::select! {
                e = keep => return Err(e),
                _ = interrupts.recv() => {
                    // A second signal exits at once, without revoking.
                    tokio::select! {
                        r = c.lease_revoke(lease) => { r?; }
                        _ = interrupts.recv() => anyhow::bail!("interrupted again; lease {lease} left to expire"),
                    }
                    print(out, &json!({"deregistered": instance_json(&registered)}), || {
                        format!("deregistered {}/{} (lease {lease} revoked)\n", registered.service, registered.id)
                    });
                }
            }
        }
        RegistryCmd::Deregister { service, id } => {
            let r = c.deregister(&service, &id).await?;
            print(
                out,
                &json!({"service": service, "id": id, "deregistered": r.deregistered}),
                || {
                    if r.deregistered {
                        format!("deregistered {service}/{id}\n")
                    } else {
                        format!("{service}/{id} was not registered\n")
                    }
                },
            );
        }
        RegistryCmd::Pass { service, id } => check_update(&c, out, &service, &id, "passing", "").await?,
        RegistryCmd::Fail { service, id, reason } => check_update(&c, out, &service, &id, "critical", &reason).await?,
        RegistryCmd::List => {
            let r = c.list_services().await?;
            let v = json!({"header": header_json(&r.header), "services": r.services.iter().map(|s| json!({"name": s.name, "instances": s.instances})).collect::<Vec<_>>()});
            print(out, &v, || {
                let mut s = format!("{:<32} {}\n", "SERVICE", "INSTANCES");
                for svc in &r.services {
                    s += &format!("{:<32} {}\n", svc.name, svc.instances);
                }
                s
            });
        }
        RegistryCmd::Get { service, tags, passing } => {
            let r = if passing {
                c.lookup_passing(&service, &tags).await?
            } else {
                c.lookup(&service, &tags).await?
            };
            let v = json!({"header": header_json(&r.header), "instances": r.instances.iter().map(instance_json).collect::<Vec<_>>()});
            print(out, &v, || {
                r.instances.iter().map(|i| instance_line(i) + "\n").collect()
            });
        }
        RegistryCmd::Watch { service, rev, count } => {
            let req = pb::RegistryWatchRequest {
                service: service.unwrap_or_default(),
                start_revision: rev,
                progress_notify_ms: 0,
            };
            let mut w = c.registry_watch_resumable(req).await?;
            let mut seen = 0u64;
            loop {
                let resp = w.next().await?;
                for e in &resp.events {
                    let i = e.instance.clone().unwrap_or_default();
                    let kind = if resp.snapshot {
                        "SNAPSHOT"
                    } else if e.r#type == pb::registry_event::EventType::Down as i32 {
                        "DOWN"
                    } else {
                        "UP"
                    };
                    let v = json!({"type": kind, "revision": e.revision, "instance": instance_json(&i)});
                    print(out, &v, || {
                        format!("{kind} {} (revision {})\n", instance_line(&i), e.revision)
                    });
                    seen += 1;
                    if count.is_some_and(|n| seen >= n) {
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}

async fn check_update(
    c: &Client,
    out: Output,
    service: &str,
    id: &str,
    status: &str,
    output: &str,
) -> anyhow::Result<()> {
    let r = c.check_update(service, id, status, output).await?;
    print(
        out,
        &json!({"service": service, "id": id, "health": r.health, "header": header_json(&r.header)}),
        || format!("{service}/{id} {}\n", r.health),
    );
    Ok(())
}
