//! `esf subscription`: durable subscriptions, consumer groups, consume and ack.

use super::*;

#[derive(Debug, Subcommand)]
pub(super) enum SubscriptionCmd {
    /// Create one (positions at the start of every partition, or the end
    /// with --from-now).
    Create {
        name: String,
        #[arg(long = "type", default_value = "")]
        event_type: String,
        #[arg(long, default_value = "")]
        stream_prefix: String,
        #[arg(long)]
        from_now: bool,
    },
    /// Every subscription with its positions.
    List,
    /// One subscription's filter and positions.
    Info {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Print its events from the acknowledged positions, acknowledging each
    /// response once printed. By default as a member of the subscription's
    /// consumer group (sharing its partitions with the other members,
    /// rebalanced as they come and go); with --member/--members as a fixed
    /// share.
    Consume {
        name: String,
        /// Fixed share: this consumer's index (0-based) ...
        #[arg(long, requires = "members")]
        member: Option<u32>,
        /// ... of this many consumers.
        #[arg(long, requires = "member")]
        members: Option<u32>,
        /// Group member: the lease TTL in seconds (the group drops a member
        /// that stops renewing after it).
        #[arg(long, default_value_t = 10)]
        ttl: u64,
        /// Group member: this consumer's id (default: generated).
        #[arg(long, default_value = "")]
        consumer_id: String,
        /// Exit after this many events (acknowledged up to the last one).
        #[arg(long)]
        count: Option<u64>,
    },
    /// The members of a subscription's consumer group.
    Consumers {
        name: String,
    },
}

pub(super) fn subscription_json(s: &pb::SubscriptionInfo) -> Value {
    let positions: std::collections::BTreeMap<u32, u64> = s.positions.iter().map(|(p, o)| (*p, *o)).collect();
    json!({"name": s.name, "type": s.r#type, "stream_prefix": s.stream_prefix, "positions": positions, "created_revision": s.created_revision})
}

pub(super) fn subscription_line(s: &pb::SubscriptionInfo) -> String {
    let positions: std::collections::BTreeMap<u32, u64> = s.positions.iter().map(|(p, o)| (*p, *o)).collect();
    let pos: Vec<String> = positions.iter().map(|(p, o)| format!("{p}:{o}")).collect();
    format!(
        "{} type={} stream_prefix={} positions={}\n",
        s.name,
        if s.r#type.is_empty() { "*" } else { &s.r#type },
        if s.stream_prefix.is_empty() {
            "*"
        } else {
            &s.stream_prefix
        },
        pos.join(",")
    )
}

pub(super) async fn subscription(c: Client, out: Output, cmd: SubscriptionCmd) -> anyhow::Result<()> {
    match cmd {
        SubscriptionCmd::Create {
            name,
            event_type,
            stream_prefix,
            from_now,
        } => {
            let r = c
                .create_subscription(&name, &event_type, &stream_prefix, from_now)
                .await?;
            let s = r.subscription.unwrap_or_default();
            print(out, &subscription_json(&s), || {
                format!("created {}", subscription_line(&s))
            });
        }
        SubscriptionCmd::List => {
            let r = c.list_subscriptions().await?;
            let v = Value::Array(r.subscriptions.iter().map(subscription_json).collect());
            print(out, &v, || r.subscriptions.iter().map(subscription_line).collect());
        }
        SubscriptionCmd::Info { name } => {
            let s = c.get_subscription(&name).await?.subscription.unwrap_or_default();
            print(out, &subscription_json(&s), || subscription_line(&s));
        }
        SubscriptionCmd::Delete { name } => {
            c.delete_subscription(&name).await?;
            print(out, &json!({"name": name, "deleted": true}), || {
                format!("deleted subscription {name}\n")
            });
        }
        SubscriptionCmd::Consumers { name } => {
            let r = c.consumers(&name).await?;
            print(out, &json!({"name": name, "consumers": r.consumer_ids}), || {
                r.consumer_ids.iter().map(|id| format!("{id}\n")).collect()
            });
        }
        SubscriptionCmd::Consume {
            name,
            member,
            members,
            ttl,
            consumer_id,
            count,
        } => {
            let mut source = match (member, members) {
                (Some(m), Some(n)) => Consumer::Fixed(c.consume(&name, m, n).await?),
                _ => {
                    let g = c.consume_group(&name, &consumer_id, ttl).await?;
                    eprintln!("joined the consumer group of {name} as {}", g.consumer_id());
                    Consumer::Group(Box::new(g))
                }
            };
            let mut stop = Interrupts::catch()?;
            let mut seen = 0u64;
            loop {
                let resp = tokio::select! {
                    r = source.next() => r?,
                    _ = stop.recv() => return source.finish().await,
                };
                if let Consumer::Group(g) = &source {
                    if resp.events.is_empty() && !resp.caught_up && !resp.next_offsets.is_empty() {
                        eprintln!("consuming partitions {:?}", g.assigned());
                    }
                }
                let mut done = std::collections::BTreeMap::new();
                for e in &resp.events {
                    print(out, &event_json(e), || event_line(e));
                    done.insert(e.partition, e.offset + 1);
                    seen += 1;
                    if count.is_some_and(|n| seen >= n) {
                        c.ack(&name, &done).await?;
                        return source.finish().await;
                    }
                }
                // The whole response is processed: filtered events too.
                done.extend(resp.next_offsets.iter().map(|(p, o)| (*p, *o)));
                if !done.is_empty() {
                    c.ack(&name, &done).await?;
                }
            }
        }
    }
    Ok(())
}

/// SIGINT and SIGTERM, caught from the moment this is called.
/// Where `subscription consume` reads from.
pub(super) enum Consumer {
    Fixed(esf_client::ResumableSubscription),
    Group(Box<esf_client::GroupConsumer>),
}

impl Consumer {
    async fn next(&mut self) -> esf_client::Result<pb::SubscribeResponse> {
        match self {
            Consumer::Fixed(s) => s.next().await,
            Consumer::Group(g) => g.next().await,
        }
    }

    /// A group member leaves at once (its share moves to the others).
    async fn finish(self) -> anyhow::Result<()> {
        if let Consumer::Group(g) = self {
            g.leave().await?;
        }
        Ok(())
    }
}

pub(super) struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupts {
    pub(super) fn catch() -> anyhow::Result<Interrupts> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Interrupts {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves on the first SIGINT or SIGTERM.
    pub(super) async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}
