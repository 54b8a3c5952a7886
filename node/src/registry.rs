//! `esf.v1.Registry`: the service registry.
//!
//! An instance is one key of the meta keyspace,
//! `0xff "registry/" service "/" id`, whose value is the encoded
//! [`pb::Instance`] and whose lease is the instance's lease. So registration
//! is a put (linearizable, deduplicated by session, revisioned with the
//! config store), a lease's end removes its instances like its keys, and a
//! registry watch is a key watch on the service's prefix. The Config service
//! refuses keys starting with 0xff, so users cannot forge or hide instances.

use std::collections::BTreeMap;

use esf_client::pb;
use esf_raft::command::{Command, DeleteRequest, KeyRange, KeyValue, Op, OpResult, PutRequest, RangeRequest};
use futures::StreamExt;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::convert::{self, RESERVED_KEY_BYTE, consistency, invalid};
use crate::service::{Ctx, forward_or};

/// Longest service name and instance id, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest instance address, in bytes.
pub const MAX_ADDRESS_BYTES: usize = 512;
/// Most tags of an instance.
pub const MAX_TAGS: usize = 64;
/// Most metadata entries of an instance.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Longest tag and metadata key, in bytes.
pub const MAX_TAG_BYTES: usize = 128;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_BYTES: usize = 1024;

const KEY_PREFIX: &[u8] = b"registry/";

/// Checks a service name or an instance id: 1 to [`MAX_NAME_BYTES`] bytes of
/// `[A-Za-z0-9._-]` (and `:` in ids).
pub(crate) fn check_name(field: &str, name: &str, colon: bool) -> Result<(), Status> {
    if name.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(invalid(
            field,
            format!("is {} bytes, over the limit of {MAX_NAME_BYTES}", name.len()),
        ));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || (colon && c == ':');
    if let Some(c) = name.chars().find(|c| !ok(*c)) {
        let allowed = if colon {
            "A-Z a-z 0-9 . _ - :"
        } else {
            "A-Z a-z 0-9 . _ -"
        };
        return Err(invalid(field, format!("{c:?} is not allowed (only {allowed})")));
    }
    Ok(())
}

fn check_text(field: &str, s: &str, max: usize, required: bool) -> Result<(), Status> {
    if required && s.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if s.len() > max {
        return Err(invalid(field, format!("is {} bytes, over the limit of {max}", s.len())));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Validates an instance to register; every error names its field.
pub fn check_instance(i: &pb::Instance) -> Result<(), Status> {
    check_name("instance.service", &i.service, false)?;
    check_name("instance.id", &i.id, true)?;
    check_text("instance.address", &i.address, MAX_ADDRESS_BYTES, true)?;
    if i.address.chars().any(char::is_whitespace) {
        return Err(invalid("instance.address", "must not contain whitespace"));
    }
    if i.tags.len() > MAX_TAGS {
        return Err(invalid(
            "instance.tags",
            format!("has {} tags, over the limit of {MAX_TAGS}", i.tags.len()),
        ));
    }
    for (n, t) in i.tags.iter().enumerate() {
        check_text(&format!("instance.tags[{n}]"), t, MAX_TAG_BYTES, true)?;
    }
    if i.metadata.len() > MAX_METADATA_ENTRIES {
        return Err(invalid(
            "instance.metadata",
            format!(
                "has {} entries, over the limit of {MAX_METADATA_ENTRIES}",
                i.metadata.len()
            ),
        ));
    }
    for (k, v) in &i.metadata {
        check_text("instance.metadata key", k, MAX_TAG_BYTES, true)?;
        check_text(&format!("instance.metadata[{k}]"), v, MAX_METADATA_VALUE_BYTES, false)?;
    }
    Ok(())
}

/// Prefix of every instance key, or of one service's.
fn prefix(service: Option<&str>) -> Vec<u8> {
    let mut k = vec![RESERVED_KEY_BYTE];
    k.extend_from_slice(KEY_PREFIX);
    if let Some(s) = service {
        k.extend_from_slice(s.as_bytes());
        k.push(b'/');
    }
    k
}

fn instance_key(service: &str, id: &str) -> Vec<u8> {
    let mut k = prefix(Some(service));
    k.extend_from_slice(id.as_bytes());
    k
}

/// (service, id) of an instance key.
fn split_key(key: &[u8]) -> Option<(String, String)> {
    let rest = key.strip_prefix(prefix(None).as_slice())?;
    let slash = rest.iter().position(|b| *b == b'/')?;
    Some((
        String::from_utf8_lossy(&rest[..slash]).into_owned(),
        String::from_utf8_lossy(&rest[slash + 1..]).into_owned(),
    ))
}

/// The instance stored at `kv` (its lease and revision come from the key's
/// record). A value that does not decode (never written by this service)
/// still yields the service and id from the key.
fn instance(kv: &KeyValue) -> pb::Instance {
    let mut i = pb::Instance::decode(kv.value.as_slice()).unwrap_or_default();
    if let Some((service, id)) = split_key(&kv.key) {
        i.service = service;
        i.id = id;
    }
    i.lease = kv.lease;
    i.revision = kv.mod_revision;
    i
}

fn instance_pb(kv: &pb::KeyValue) -> pb::Instance {
    instance(&KeyValue {
        key: kv.key.clone(),
        value: kv.value.clone(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    })
}

/// A key watch response on instance keys as a registry watch response.
fn watch_response(r: pb::WatchResponse) -> pb::RegistryWatchResponse {
    use pb::registry_event::EventType;
    let events = r
        .events
        .iter()
        .map(|e| {
            let kv = e.kv.clone().unwrap_or_default();
            if e.r#type == pb::event::EventType::Delete as i32 {
                // The last registration, or (history compacted) the key alone.
                let mut i = e.prev_kv.as_ref().map(instance_pb).unwrap_or_else(|| instance_pb(&kv));
                if let Some((service, id)) = split_key(&kv.key) {
                    i.service = service;
                    i.id = id;
                }
                pb::RegistryEvent {
                    r#type: EventType::Down as i32,
                    instance: Some(i),
                    revision: kv.mod_revision,
                }
            } else {
                pb::RegistryEvent {
                    r#type: EventType::Up as i32,
                    instance: Some(instance_pb(&kv)),
                    revision: kv.mod_revision,
                }
            }
        })
        .collect();
    pb::RegistryWatchResponse {
        header: r.header,
        events,
        snapshot: r.snapshot,
        progress: r.progress,
        canceled: r.canceled,
        cancel_reason: r.cancel_reason,
    }
}

/// `esf.v1.Registry`.
pub struct RegistryService(pub Ctx);

type RegistryWatchStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::RegistryWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::registry_server::Registry for RegistryService {
    type WatchStream = RegistryWatchStream;

    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let msg = req.get_ref().clone();
        let Some(inst) = msg.instance.clone() else {
            return Err(invalid("instance", "is required"));
        };
        check_instance(&inst)?;
        let stored = pb::Instance {
            lease: 0,
            revision: 0,
            ..inst.clone()
        };
        let cmd = Command {
            session: convert::session(msg.session),
            op: Op::Put(PutRequest {
                key: instance_key(&inst.service, &inst.id),
                value: stored.encode_to_vec(),
                lease: inst.lease,
                prev_kv: true,
            }),
        };
        match self.0.write(cmd).await {
            Ok((h, OpResult::Put { prev_kv })) => Ok(Response::new(pb::RegisterResponse {
                header: Some(h),
                previous: prev_kv.as_ref().map(instance),
            })),
            Ok((_, other)) => Err(Status::internal(format!("unexpected result {other:?}"))),
            Err(e) => forward_or!(self.0, registry_client, req, e, register, msg),
        }
    }

    async fn deregister(
        &self,
        req: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let msg = req.get_ref().clone();
        check_name("service", &msg.service, false)?;
        check_name("id", &msg.id, true)?;
        let cmd = Command {
            session: convert::session(msg.session),
            op: Op::Delete(DeleteRequest {
                range: KeyRange::Key(instance_key(&msg.service, &msg.id)),
                prev_kv: false,
            }),
        };
        match self.0.write(cmd).await {
            Ok((h, OpResult::Delete { deleted, .. })) => Ok(Response::new(pb::DeregisterResponse {
                header: Some(h),
                deregistered: deleted > 0,
            })),
            Ok((_, other)) => Err(Status::internal(format!("unexpected result {other:?}"))),
            Err(e) => forward_or!(self.0, registry_client, req, e, deregister, msg),
        }
    }

    async fn lookup(&self, req: Request<pb::LookupRequest>) -> Result<Response<pb::LookupResponse>, Status> {
        let msg = req.get_ref().clone();
        check_name("service", &msg.service, false)?;
        let r = RangeRequest {
            range: KeyRange::Prefix(prefix(Some(&msg.service))),
            revision: 0,
            limit: 0,
            count_only: false,
            keys_only: false,
        };
        match self.0.meta.range(&r, consistency(msg.serializable)).await {
            Ok((h, res)) => Ok(Response::new(pb::LookupResponse {
                header: Some(convert::header(h)),
                instances: res
                    .kvs
                    .iter()
                    .map(instance)
                    .filter(|i| msg.tags.iter().all(|t| i.tags.contains(t)))
                    .collect(),
            })),
            Err(e) => forward_or!(self.0, registry_client, req, e, lookup, msg),
        }
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let msg = req.get_ref().clone();
        let r = RangeRequest {
            range: KeyRange::Prefix(prefix(None)),
            revision: 0,
            limit: 0,
            count_only: false,
            keys_only: true,
        };
        match self.0.meta.range(&r, consistency(msg.serializable)).await {
            Ok((h, res)) => {
                let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                for kv in &res.kvs {
                    if let Some((service, _)) = split_key(&kv.key) {
                        *counts.entry(service).or_default() += 1;
                    }
                }
                Ok(Response::new(pb::ListServicesResponse {
                    header: Some(convert::header(h)),
                    services: counts
                        .into_iter()
                        .map(|(name, instances)| pb::ServiceSummary { name, instances })
                        .collect(),
                }))
            }
            Err(e) => forward_or!(self.0, registry_client, req, e, list_services, msg),
        }
    }

    async fn watch(&self, req: Request<pb::RegistryWatchRequest>) -> Result<Response<RegistryWatchStream>, Status> {
        let msg = req.into_inner();
        let service = if msg.service.is_empty() {
            None
        } else {
            check_name("watch.service", &msg.service, false)?;
            Some(msg.service.as_str())
        };
        let rx = self.0.start_watch(
            "watch",
            KeyRange::Prefix(prefix(service)),
            msg.start_revision,
            true,
            msg.progress_notify_ms,
        )?;
        Ok(Response::new(Box::pin(rx.map(|r| r.map(watch_response)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst() -> pb::Instance {
        pb::Instance {
            service: "api".into(),
            id: "api-1".into(),
            address: "10.0.0.1:8080".into(),
            tags: vec!["v2".into()],
            ..Default::default()
        }
    }

    #[test]
    fn bad_instances_name_their_field() {
        let cases: Vec<(Box<dyn Fn(&mut pb::Instance)>, &str)> = vec![
            (Box::new(|i| i.address.clear()), "instance.address: is required"),
            (Box::new(|i| i.service.clear()), "instance.service: is required"),
            (
                Box::new(|i| i.service = "a/b".into()),
                "instance.service: '/' is not allowed",
            ),
            (Box::new(|i| i.id = "x y".into()), "instance.id: ' ' is not allowed"),
            (
                Box::new(|i| i.address = "a b".into()),
                "instance.address: must not contain whitespace",
            ),
            (
                Box::new(|i| i.tags = vec![String::new()]),
                "instance.tags[0]: is required",
            ),
            (
                Box::new(|i| i.tags = vec!["t".into(); MAX_TAGS + 1]),
                "instance.tags: has 65 tags",
            ),
            (
                Box::new(|i| {
                    i.metadata.insert("k".into(), "v".repeat(MAX_METADATA_VALUE_BYTES + 1));
                }),
                "instance.metadata[k]: is 1025 bytes",
            ),
        ];
        for (mutate, want) in cases {
            let mut i = inst();
            mutate(&mut i);
            let e = check_instance(&i).expect_err(want);
            assert!(
                e.message().starts_with(want),
                "{} does not start with {want}",
                e.message()
            );
        }
        check_instance(&inst()).expect("a good instance passes");
    }

    #[test]
    fn keys_split_back_into_service_and_id() {
        let k = instance_key("api", "api-1:9");
        assert_eq!(k[0], RESERVED_KEY_BYTE);
        assert_eq!(split_key(&k), Some(("api".into(), "api-1:9".into())));
        // A service's prefix does not cover a service whose name extends it.
        assert!(!instance_key("api2", "x").starts_with(&prefix(Some("api"))));
        assert!(instance_key("api", "x").starts_with(&prefix(None)));
    }
}
