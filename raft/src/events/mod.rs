//! Event partitions: append-only logs of events, one Raft group each
//! (groups `1..=P`), sharing the node's RocksDB and its group commit.
//!
//! - [`store`]: the partition state machine's data (events by offset, by id,
//!   by stream and version; stream records) and its reads.
//! - [`PartitionStateMachine`]: openraft's `RaftStateMachine` over it (the
//!   one of every group, [`crate::group::GroupStateMachine`]).
//! - [`group`]: a running partition: proposals and reads with deadlines.
//! - [`query`]: filters, the secondary index each uses, JSON predicates.
//! - [`retention`]: which events are removed, by age and by bytes.
//!
//! Bounds on what one append may carry are the constants below; bad input
//! is a [`Rejection::InvalidArgument`] naming the field.

pub mod group;
pub mod query;
pub mod retention;
pub mod store;

pub use group::{PartitionGroup, PartitionRaft};
pub use store::{EventRecord, PartitionStore, StreamRecord};

/// A partition's state machine handle given to openraft.
pub type PartitionStateMachine = crate::group::GroupStateMachine<PartitionStore>;

use crate::command::{AppendRequest, Rejection};

/// Most events in one append.
pub const MAX_APPEND_EVENTS: usize = 1000;
/// Largest event (data plus metadata plus ids), bytes.
pub const MAX_EVENT_BYTES: usize = 1 << 20;
/// Largest append (every event), bytes.
pub const MAX_APPEND_BYTES: usize = 4 << 20;
/// Longest stream id, event type, correlation and causation id, bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Most metadata entries of an event.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Most events one retention command removes.
pub const MAX_REMOVE_EVENTS: usize = 10_000;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Rejection {
    Rejection::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Checks a name; `field` is displayed only when it is refused (no string
/// is built per event on the append path).
fn check_name(field: impl std::fmt::Display, s: &str, required: bool) -> Result<(), Rejection> {
    let reason = if required && s.is_empty() {
        "is required".to_string()
    } else if s.len() > MAX_NAME_BYTES {
        format!("is {} bytes, over the limit of {MAX_NAME_BYTES}", s.len())
    } else if s.chars().any(char::is_control) {
        "must not contain control characters".to_string()
    } else {
        return Ok(());
    };
    Err(invalid(field.to_string(), reason))
}

/// Checks a stream id: 1 to [`MAX_NAME_BYTES`] bytes, no control characters.
pub fn check_stream_id(field: &str, stream: &str) -> Result<(), Rejection> {
    check_name(field, stream, true)
}

/// Bytes an event counts against [`MAX_EVENT_BYTES`].
pub fn event_bytes(e: &crate::command::NewEvent) -> usize {
    16 + e.event_type.len()
        + e.correlation_id.len()
        + e.causation_id.len()
        + e.data.len()
        + e.metadata.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

/// `append.events[i].name`, formatted only for a refusal.
struct EventField(usize, &'static str);

impl std::fmt::Display for EventField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "append.events[{}].{}", self.0, self.1)
    }
}

/// Checks an append's shape and bounds (not its JSON: the node checks that
/// before proposing).
pub fn check_append(a: &AppendRequest) -> Result<(), Rejection> {
    check_stream_id("append.stream", &a.stream)?;
    if a.events.is_empty() {
        return Err(invalid("append.events", "must not be empty"));
    }
    if a.events.len() > MAX_APPEND_EVENTS {
        return Err(invalid(
            "append.events",
            format!("has {} events, over the limit of {MAX_APPEND_EVENTS}", a.events.len()),
        ));
    }
    let mut total = 0usize;
    let mut ids = std::collections::HashSet::new();
    for (i, e) in a.events.iter().enumerate() {
        let f = |name: &'static str| EventField(i, name);
        if e.id == [0; 16] {
            return Err(invalid(f("id").to_string(), "must not be the nil UUID"));
        }
        if !ids.insert(e.id) {
            return Err(invalid(f("id").to_string(), "appears twice in this append"));
        }
        check_name(f("type"), &e.event_type, true)?;
        check_name(f("correlation_id"), &e.correlation_id, false)?;
        check_name(f("causation_id"), &e.causation_id, false)?;
        if e.metadata.len() > MAX_METADATA_ENTRIES {
            return Err(invalid(
                f("metadata").to_string(),
                format!(
                    "has {} entries, over the limit of {MAX_METADATA_ENTRIES}",
                    e.metadata.len()
                ),
            ));
        }
        let n = event_bytes(e);
        if n > MAX_EVENT_BYTES {
            return Err(invalid(
                f("data").to_string(),
                format!("the event is {n} bytes, over the limit of {MAX_EVENT_BYTES}"),
            ));
        }
        total += n;
    }
    if total > MAX_APPEND_BYTES {
        return Err(invalid(
            "append.events",
            format!("are {total} bytes together, over the limit of {MAX_APPEND_BYTES}"),
        ));
    }
    Ok(())
}
