//! How client commands print: a table line or JSON per result (`-o`).

use super::*;

pub(super) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub(super) fn kv_json(kv: &pb::KeyValue) -> Value {
    json!({"key": text(&kv.key), "value": text(&kv.value), "create_revision": kv.create_revision, "mod_revision": kv.mod_revision, "version": kv.version, "lease": kv.lease})
}

pub(super) fn header_json(h: &Option<pb::ResponseHeader>) -> Value {
    match h {
        Some(h) => {
            json!({"cluster_id": h.cluster_id, "node_id": h.node_id, "revision": h.revision, "raft_term": h.raft_term})
        }
        None => Value::Null,
    }
}

pub(super) fn print(out: Output, v: &Value, table: impl FnOnce() -> String) {
    match out {
        Output::Json => println!("{v}"),
        Output::Table => print!("{}", table()),
    }
}

pub(super) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}
