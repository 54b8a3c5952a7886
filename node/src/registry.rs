//! The service registry's records (the gRPC service is `api/registry.rs`).
//!
//! An instance is one key of the meta keyspace,
//! `0xff "registry/" service "/" id`, whose value is the encoded
//! [`pb::Instance`] and whose lease is the instance's lease. So registration
//! is a put (linearizable, deduplicated by session, revisioned with the
//! config store), a lease's end removes its instances like its keys, and a
//! registry watch is a key watch on the service's prefix. The Config service
//! refuses keys starting with 0xff, so users cannot forge or hide instances.

use esf_proto::v1 as pb;
use esf_raft::command::{KeyRange, KeyValue};
use prost::Message;

use crate::error::{Error, Result};
use crate::keyspace::Area;

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

/// Checks a service name or an instance id: 1 to [`MAX_NAME_BYTES`] bytes of
/// `[A-Za-z0-9._-]` (and `:` in ids).
pub fn check_name(field: &str, name: &str, colon: bool) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::invalid(
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
        return Err(Error::invalid(field, format!("{c:?} is not allowed (only {allowed})")));
    }
    Ok(())
}

fn check_text(field: &str, s: &str, max: usize, required: bool) -> Result<()> {
    if required && s.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if s.len() > max {
        return Err(Error::invalid(
            field,
            format!("is {} bytes, over the limit of {max}", s.len()),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Probes of a health check are this far apart by default, ms.
pub const DEFAULT_CHECK_INTERVAL_MS: u32 = 10_000;
/// Shortest and longest interval between probes, ms.
pub const CHECK_INTERVAL_RANGE_MS: std::ops::RangeInclusive<u32> = 1_000..=3_600_000;
/// A probe's deadline by default, ms.
pub const DEFAULT_CHECK_TIMEOUT_MS: u32 = 2_000;
/// Shortest probe deadline, ms.
pub const MIN_CHECK_TIMEOUT_MS: u32 = 100;
/// Longest check output kept, bytes.
pub const MAX_CHECK_OUTPUT_BYTES: usize = 256;

/// Checks a health check and fills in its defaults.
pub fn check_health_check(c: &mut pb::HealthCheck) -> Result<()> {
    const F: &str = "instance.check";
    if !matches!(c.kind.as_str(), "tcp" | "http" | "grpc" | "ttl") {
        return Err(Error::invalid(
            &format!("{F}.kind"),
            format!(
                "{:?} is not one of tcp, http, grpc, ttl (to remove an instance whose keep-alives stop, bind it to a lease)",
                c.kind
            ),
        ));
    }
    if c.kind == "ttl" {
        for (field, value) in [("target", &c.target), ("grpc_service", &c.grpc_service)] {
            if !value.is_empty() {
                return Err(Error::invalid(
                    &format!("{F}.{field}"),
                    "a ttl check has none (the instance reports its status with CheckUpdate)",
                ));
            }
        }
        if c.ttl_ms == 0 {
            return Err(Error::invalid(&format!("{F}.ttl_ms"), "is required for a ttl check"));
        }
        if !CHECK_INTERVAL_RANGE_MS.contains(&c.ttl_ms) {
            return Err(Error::invalid(
                &format!("{F}.ttl_ms"),
                format!("{} is outside {CHECK_INTERVAL_RANGE_MS:?}", c.ttl_ms),
            ));
        }
        // Nothing is probed: the leader looks at it every scan.
        c.interval_ms = 0;
        c.timeout_ms = 0;
        return Ok(());
    }
    if c.ttl_ms != 0 {
        return Err(Error::invalid(&format!("{F}.ttl_ms"), "is only for a ttl check"));
    }
    check_text(&format!("{F}.target"), &c.target, MAX_ADDRESS_BYTES, true)?;
    if c.target.chars().any(char::is_whitespace) {
        return Err(Error::invalid(&format!("{F}.target"), "must not contain whitespace"));
    }
    let host_port = match c.kind.as_str() {
        "http" => match c.target.strip_prefix("http://") {
            Some(rest) => rest.split('/').next().unwrap_or_default(),
            None => {
                return Err(Error::invalid(
                    &format!("{F}.target"),
                    "an http check's target is an http:// URL (https is not supported yet)",
                ));
            }
        },
        _ => c.target.as_str(),
    };
    match host_port.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {}
        _ => {
            return Err(Error::invalid(
                &format!("{F}.target"),
                format!("{host_port:?} is not host:port"),
            ));
        }
    }
    check_text(&format!("{F}.grpc_service"), &c.grpc_service, MAX_NAME_BYTES, false)?;
    if c.interval_ms == 0 {
        c.interval_ms = DEFAULT_CHECK_INTERVAL_MS;
    }
    if !CHECK_INTERVAL_RANGE_MS.contains(&c.interval_ms) {
        return Err(Error::invalid(
            &format!("{F}.interval_ms"),
            format!("{} is outside {CHECK_INTERVAL_RANGE_MS:?}", c.interval_ms),
        ));
    }
    if c.timeout_ms == 0 {
        c.timeout_ms = DEFAULT_CHECK_TIMEOUT_MS.min(c.interval_ms);
    }
    if c.timeout_ms < MIN_CHECK_TIMEOUT_MS || c.timeout_ms > c.interval_ms {
        return Err(Error::invalid(
            &format!("{F}.timeout_ms"),
            format!(
                "{} is outside {MIN_CHECK_TIMEOUT_MS}..={} (the interval)",
                c.timeout_ms, c.interval_ms
            ),
        ));
    }
    Ok(())
}

/// Validates a CheckUpdate: the status and output an instance reports.
pub fn check_update(r: &pb::CheckUpdateRequest) -> Result<()> {
    check_name("service", &r.service, false)?;
    check_name("id", &r.id, true)?;
    if !matches!(r.status.as_str(), "passing" | "critical") {
        return Err(Error::invalid(
            "status",
            format!("{:?} is not passing or critical", r.status),
        ));
    }
    check_text("output", &r.output, MAX_CHECK_OUTPUT_BYTES, false)
}

/// Validates an instance to register; every error names its field.
pub fn check_instance(i: &pb::Instance) -> Result<()> {
    check_name("instance.service", &i.service, false)?;
    check_name("instance.id", &i.id, true)?;
    check_text("instance.address", &i.address, MAX_ADDRESS_BYTES, true)?;
    if i.address.chars().any(char::is_whitespace) {
        return Err(Error::invalid("instance.address", "must not contain whitespace"));
    }
    if i.tags.len() > MAX_TAGS {
        return Err(Error::invalid(
            "instance.tags",
            format!("has {} tags, over the limit of {MAX_TAGS}", i.tags.len()),
        ));
    }
    for (n, t) in i.tags.iter().enumerate() {
        check_text(&format!("instance.tags[{n}]"), t, MAX_TAG_BYTES, true)?;
    }
    if i.metadata.len() > MAX_METADATA_ENTRIES {
        return Err(Error::invalid(
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

/// Every instance key, or one service's.
pub fn instances(service: Option<&str>) -> KeyRange {
    KeyRange::Prefix(Area::Registry.key(service.map(|s| format!("{s}/")).unwrap_or_default().as_bytes()))
}

/// The key of instance `id` of `service`.
pub fn instance_key(service: &str, id: &str) -> Vec<u8> {
    Area::Registry.key(format!("{service}/{id}").as_bytes())
}

/// (service, id) of an instance key.
pub fn split_key(key: &[u8]) -> Option<(String, String)> {
    let rest = Area::Registry.name_of(key)?;
    let slash = rest.iter().position(|b| *b == b'/')?;
    Some((
        String::from_utf8_lossy(&rest[..slash]).into_owned(),
        String::from_utf8_lossy(&rest[slash + 1..]).into_owned(),
    ))
}

/// The instance stored at `kv` (its lease and revision come from the key's
/// record). A value that does not decode (never written by this service)
/// still yields the service and id from the key.
pub fn instance(kv: &KeyValue) -> pb::Instance {
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
pub fn watch_response(r: pb::WatchResponse) -> pb::RegistryWatchResponse {
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
            let e = tonic::Status::from(check_instance(&i).expect_err(want));
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
        assert_eq!(k[0], crate::keyspace::RESERVED_KEY_BYTE);
        assert_eq!(split_key(&k), Some(("api".into(), "api-1:9".into())));
        // A service's prefix does not cover a service whose name extends it.
        let prefix = |service| match instances(service) {
            KeyRange::Prefix(p) => p,
            other => panic!("{other:?}"),
        };
        assert!(!instance_key("api2", "x").starts_with(&prefix(Some("api"))));
        assert!(instance_key("api", "x").starts_with(&prefix(None)));
        assert_eq!(instance_key("api", "x"), b"\xffregistry/api/x".to_vec());
    }
}
