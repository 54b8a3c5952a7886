//! Event queries within one partition: filters, the secondary index each
//! uses, and JSON-field predicates.
//!
//! Every partition keeps three secondary indexes, written in the same
//! RocksDB batch as the event (see [`store`](super::store)), each ordered
//! by (timestamp, offset) within its prefix:
//!
//! | index | key after the table byte | used when the query has |
//! |---|---|---|
//! | `correlation` | `enc(correlation_id) ++ ts ++ offset` | a correlation id |
//! | `type` | `enc(type) ++ ts ++ offset` | a type (and no correlation id) |
//! | `time` | `ts ++ offset` | neither (a time range bounds it; none: every event) |
//!
//! A time range narrows any of them (the timestamp follows the prefix).
//! JSON-field predicates are checked on each candidate the index yields.
//! Results come in (timestamp, offset) order, ascending or descending.

use serde_json::Value;

/// A JSON-field comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum PredicateOp {
    /// Equal to the value (numbers compare as numbers).
    Eq(Value),
    /// Less than.
    Lt(Value),
    /// Less than or equal.
    Le(Value),
    /// Greater than.
    Gt(Value),
    /// Greater than or equal.
    Ge(Value),
    /// The field is present (any value, `null` included).
    Exists,
    /// Equal to one of the values.
    In(Vec<Value>),
}

/// The operator names [`Predicate::parse`] accepts.
pub const PREDICATE_OPS: &str = "eq, lt, le, gt, ge, exists, in";

/// A predicate on a field of the event's JSON data.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicate {
    /// Path of object keys from the top of the data (`a.b` is `["a", "b"]`).
    pub path: Vec<String>,
    /// The comparison.
    pub op: PredicateOp,
}

impl Predicate {
    /// Parses `field op value`: `field` a dotted path, `op` one of
    /// [`PREDICATE_OPS`], `value` JSON text (an array for `in`, empty for
    /// `exists`). Errors name the part that is wrong (`field`, `op`,
    /// `value`) and why.
    pub fn parse(field: &str, op: &str, value: &str) -> Result<Predicate, (&'static str, String)> {
        let path: Vec<String> = field.split('.').map(str::to_string).collect();
        if field.is_empty() || path.iter().any(String::is_empty) {
            return Err(("field", format!("{field:?} is not a dotted path of field names")));
        }
        let json = |v: &str| -> Result<Value, (&'static str, String)> {
            serde_json::from_str(v).map_err(|e| ("value", format!("{v:?} is not JSON: {e}")))
        };
        let scalar = |v: &str| -> Result<Value, (&'static str, String)> {
            let v = json(v)?;
            if v.is_array() || v.is_object() {
                return Err((
                    "value",
                    format!("{op} compares with a number, string, bool or null, not {v}"),
                ));
            }
            Ok(v)
        };
        let op = match op {
            "eq" => PredicateOp::Eq(scalar(value)?),
            "lt" => PredicateOp::Lt(scalar(value)?),
            "le" => PredicateOp::Le(scalar(value)?),
            "gt" => PredicateOp::Gt(scalar(value)?),
            "ge" => PredicateOp::Ge(scalar(value)?),
            "exists" => {
                if !value.is_empty() {
                    return Err(("value", "exists takes no value".into()));
                }
                PredicateOp::Exists
            }
            "in" => match json(value)? {
                Value::Array(vs) if !vs.is_empty() => PredicateOp::In(vs),
                other => return Err(("value", format!("in takes a non-empty JSON array, not {other}"))),
            },
            other => return Err(("op", format!("{other:?} is not an operator; one of {PREDICATE_OPS}"))),
        };
        Ok(Predicate { path, op })
    }

    /// Whether `data` (the event's JSON, parsed) satisfies it.
    pub fn matches(&self, data: &Value) -> bool {
        let mut at = data;
        for k in &self.path {
            match at.get(k) {
                Some(v) => at = v,
                None => return false,
            }
        }
        use std::cmp::Ordering::*;
        match &self.op {
            PredicateOp::Exists => true,
            PredicateOp::Eq(v) => compare(at, v) == Some(Equal),
            PredicateOp::Lt(v) => compare(at, v) == Some(Less),
            PredicateOp::Le(v) => matches!(compare(at, v), Some(Less | Equal)),
            PredicateOp::Gt(v) => compare(at, v) == Some(Greater),
            PredicateOp::Ge(v) => matches!(compare(at, v), Some(Greater | Equal)),
            PredicateOp::In(vs) => vs.iter().any(|v| compare(at, v) == Some(Equal)),
        }
    }
}

/// Orders two JSON scalars of the same kind (numbers as numbers); values
/// of different kinds, arrays and objects do not compare (`None`), except
/// that equal values are equal.
pub fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match ((x.as_u64(), y.as_u64()), (x.as_i64(), y.as_i64())) {
            ((Some(x), Some(y)), _) => Some(x.cmp(&y)),
            (_, (Some(x), Some(y))) => Some(x.cmp(&y)),
            _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
        },
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(std::cmp::Ordering::Equal),
        _ => (a == b).then_some(std::cmp::Ordering::Equal),
    }
}

/// What a query asks of the events (all conditions must hold).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Event type (empty: any).
    pub event_type: String,
    /// Correlation id (empty: any).
    pub correlation_id: String,
    /// Earliest timestamp, inclusive (ms since the Unix epoch).
    pub from_ms: Option<u64>,
    /// Latest timestamp, exclusive.
    pub to_ms: Option<u64>,
    /// Predicates on the JSON data.
    pub predicates: Vec<Predicate>,
}

impl Filter {
    /// The index a query with this filter reads, given the fields whose
    /// declared index is complete on the partition: the correlation index;
    /// else a field index serving an `eq` predicate; else the type index;
    /// else the time index.
    pub fn index(&self, indexed: &[String]) -> Index {
        if !self.correlation_id.is_empty() {
            return Index::Correlation;
        }
        let field = self.predicates.iter().position(|p| {
            matches!(&p.op, PredicateOp::Eq(v) if value_key(v).is_some()) && indexed.contains(&p.path.join("."))
        });
        if let Some(i) = field {
            Index::Field(i)
        } else if !self.event_type.is_empty() {
            Index::Type
        } else {
            Index::Time
        }
    }

    /// Whether the index this filter reads decides every condition alone
    /// (no event need be loaded to know it matches): no predicates, and
    /// not both a type and a correlation id.
    pub fn index_decides(&self) -> bool {
        self.predicates.is_empty() && (self.correlation_id.is_empty() || self.event_type.is_empty())
    }

    /// Whether `e` satisfies every condition (what the index did not
    /// already narrow is checked here; checking all is harmless).
    pub fn matches(&self, e: &super::EventRecord) -> bool {
        if !self.event_type.is_empty() && e.event_type != self.event_type {
            return false;
        }
        if !self.correlation_id.is_empty() && e.correlation_id != self.correlation_id {
            return false;
        }
        if self.from_ms.is_some_and(|f| e.timestamp_ms < f) || self.to_ms.is_some_and(|t| e.timestamp_ms >= t) {
            return false;
        }
        if self.predicates.is_empty() {
            return true;
        }
        match serde_json::from_slice::<Value>(&e.data) {
            Ok(data) => self.predicates.iter().all(|p| p.matches(&data)),
            Err(_) => false,
        }
    }
}

/// A secondary index of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    /// By correlation id, then time.
    Correlation,
    /// By type, then time.
    Type,
    /// A declared field index: by the value of a JSON field, then time;
    /// serves the `eq` predicate with this position in the filter.
    Field(usize),
    /// By time.
    Time,
}

impl Index {
    /// Its name in `explain` (`field:PATH` for a field index).
    pub fn name(self, f: &Filter) -> String {
        match self {
            Index::Correlation => "correlation".into(),
            Index::Type => "type".into(),
            Index::Field(i) => format!("field:{}", f.predicates[i].path.join(".")),
            Index::Time => "time".into(),
        }
    }
}

/// The value at dotted `path` of `data`, if any.
pub fn lookup<'a>(data: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(data, |at, k| at.get(k))
}

/// The key part a declared field index stores for a scalar JSON value
/// (`None` for arrays and objects, which are not indexed): a kind tag,
/// then numbers as order-preserving IEEE doubles (so `12` and `12.0`
/// meet) and strings in the prefix-free byte encoding.
pub fn value_key(v: &Value) -> Option<Vec<u8>> {
    let mut k = Vec::with_capacity(10);
    match v {
        Value::Null => k.push(1),
        Value::Bool(false) => k.push(2),
        Value::Bool(true) => k.push(3),
        Value::Number(n) => {
            // -0.0 equals 0.0.
            let x = match n.as_f64()? {
                z if z == 0.0 => 0.0f64,
                x => x,
            };
            let bits = x.to_bits();
            let ordered = if x.is_sign_negative() { !bits } else { bits | (1 << 63) };
            k.push(4);
            k.extend_from_slice(&ordered.to_be_bytes());
        }
        Value::String(s) => {
            k.push(5);
            esf_storage::keys::encode_bytes(&mut k, s.as_bytes());
        }
        Value::Array(_) | Value::Object(_) => return None,
    }
    Some(k)
}

/// A dotted path as a declared field's name ("customer.tier"); checks it.
pub fn check_field(field: &str) -> Result<Vec<String>, String> {
    if field.is_empty() || field.len() > super::MAX_NAME_BYTES {
        return Err(format!("must be 1 to {} bytes", super::MAX_NAME_BYTES));
    }
    let path: Vec<String> = field.split('.').map(String::from).collect();
    if path.iter().any(String::is_empty) {
        return Err(format!("{field:?} has an empty part (use a.b.c)"));
    }
    if field.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(path)
}

/// Where a page of a query starts in one partition, inclusive, in the
/// query's direction: (timestamp, offset). `None`: nothing is left.
pub type Bound = Option<(u64, u64)>;

/// What one partition's part of a query did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryStats {
    /// Index entries read.
    pub rows_examined: u64,
    /// Events loaded and checked.
    pub events_loaded: u64,
    /// (timestamp, offset) of the last index entry read: where a scan that
    /// stopped early stopped.
    pub last: Option<(u64, u64)>,
    /// The index the partition read.
    pub index: Option<Index>,
}

/// Most index entries one partition's part of a query reads; past it the
/// page ends (with `more`) where the scan stopped, possibly empty, and the
/// cursor continues from there.
pub const MAX_QUERY_ROWS: u64 = 100_000;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn predicates_compare_numbers_strings_and_paths() {
        let d = json!({"amount": 12, "price": 2.5, "customer": {"tier": "gold"}, "flag": null});
        let p = |f: &str, o: &str, v: &str| Predicate::parse(f, o, v).expect("parse").matches(&d);
        assert!(p("amount", "eq", "12") && p("amount", "eq", "12.0"));
        assert!(p("amount", "gt", "11") && !p("amount", "gt", "12") && p("amount", "ge", "12"));
        assert!(p("price", "lt", "3") && p("price", "le", "2.5") && !p("price", "lt", "2.5"));
        assert!(p("customer.tier", "eq", "\"gold\"") && p("customer.tier", "in", "[\"silver\", \"gold\"]"));
        assert!(
            !p("customer.tier", "gt", "3"),
            "a string does not compare with a number"
        );
        assert!(p("flag", "exists", "") && !p("missing", "exists", "") && !p("customer.tier.x", "exists", ""));
        assert!(!p("amount", "eq", "\"12\""), "a number is not its string");
    }

    #[test]
    fn bad_predicates_name_the_part_and_the_reason() {
        let e = |f: &str, o: &str, v: &str| Predicate::parse(f, o, v).expect_err("must fail");
        assert_eq!(e("a", "like", "1").0, "op");
        assert!(e("a", "like", "1").1.contains("one of eq, lt"));
        assert_eq!(e("a..b", "eq", "1").0, "field");
        assert_eq!(e("", "eq", "1").0, "field");
        assert_eq!(e("a", "eq", "{nope").0, "value");
        assert_eq!(e("a", "in", "1").0, "value");
        assert_eq!(e("a", "in", "[]").0, "value");
        assert_eq!(e("a", "gt", "[1]").0, "value");
        assert_eq!(e("a", "exists", "1").0, "value");
    }
}
