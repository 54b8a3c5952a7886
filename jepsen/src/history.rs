//! Operation histories: what each logical process invoked and how it
//! ended, as JSON lines.
//!
//! Every operation is two records with the same `process`: an `invoke`,
//! then `ok`, `fail` (it certainly did not take effect) or `info` (it may
//! or may not have). A process whose operation ended `info` never invokes
//! again (the generator replaces it with a new process id), so a process
//! has at most one operation in flight.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

/// How a record ends (or starts) an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The client is about to send the request.
    Invoke,
    /// Acknowledged.
    Ok,
    /// Certainly not applied (the cluster refused it).
    Fail,
    /// Unknown: it may or may not have been applied.
    Info,
}

/// One history record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Logical process.
    pub process: u64,
    /// invoke / ok / fail / info.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Operation: `read`, `write`, `cas`, `append`, ...
    pub f: String,
    /// The key, stream or service the operation touches.
    #[serde(default)]
    pub key: String,
    /// Operation-specific value: the value written, `[from, to]` of a CAS,
    /// the value read (on completion), an event id.
    #[serde(default)]
    pub value: serde_json::Value,
    /// Nanoseconds since the start of the test.
    pub time_ns: u64,
    /// The node the client sent it to, if known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// Why it failed or is unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// An invocation paired with its completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    /// The invoke record.
    pub invoke: Record,
    /// ok / fail / info record; `None` if the history ended first (treated
    /// as info).
    pub complete: Option<Record>,
}

impl Completed {
    /// How it ended (`Info` if it never did).
    pub fn kind(&self) -> Kind {
        self.complete.as_ref().map_or(Kind::Info, |c| c.kind)
    }

    /// Start time.
    pub fn start(&self) -> u64 {
        self.invoke.time_ns
    }

    /// End time; `u64::MAX` unless it ended `ok` or `fail`.
    pub fn end(&self) -> u64 {
        match &self.complete {
            Some(c) if c.kind != Kind::Info => c.time_ns,
            _ => u64::MAX,
        }
    }
}

/// A malformed history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryError {
    /// 1-based line or record number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for HistoryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "history line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for HistoryError {}

/// Pairs invocations with completions. Refuses a completion without an
/// invocation, a second invocation while one is in flight, and a process
/// that invokes again after an `info`.
pub fn pair(records: &[Record]) -> Result<Vec<Completed>, HistoryError> {
    let mut open: BTreeMap<u64, usize> = BTreeMap::new();
    let mut retired: std::collections::BTreeSet<u64> = Default::default();
    let mut out: Vec<Completed> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let line = i + 1;
        match r.kind {
            Kind::Invoke => {
                if retired.contains(&r.process) {
                    return Err(HistoryError {
                        line,
                        reason: format!("process {} invokes again after an info", r.process),
                    });
                }
                if open.contains_key(&r.process) {
                    return Err(HistoryError {
                        line,
                        reason: format!("process {} invokes while an operation is in flight", r.process),
                    });
                }
                open.insert(r.process, out.len());
                out.push(Completed {
                    invoke: r.clone(),
                    complete: None,
                });
            }
            _ => {
                let Some(at) = open.remove(&r.process) else {
                    return Err(HistoryError {
                        line,
                        reason: format!("process {} completes an operation it never invoked", r.process),
                    });
                };
                if r.time_ns < out[at].invoke.time_ns {
                    return Err(HistoryError {
                        line,
                        reason: format!("process {} completes before it invoked", r.process),
                    });
                }
                if r.kind == Kind::Info {
                    retired.insert(r.process);
                }
                out[at].complete = Some(r.clone());
            }
        }
    }
    Ok(out)
}

/// Writes records as JSON lines.
pub fn write_jsonl(w: &mut impl Write, records: &[Record]) -> std::io::Result<()> {
    for r in records {
        serde_json::to_writer(&mut *w, r)?;
        w.write_all(b"\n")?;
    }
    Ok(())
}

/// Reads JSON lines.
pub fn read_jsonl(r: impl BufRead) -> Result<Vec<Record>, HistoryError> {
    let mut out = Vec::new();
    for (i, line) in r.lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|e| HistoryError {
            line: line_no,
            reason: e.to_string(),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| HistoryError {
            line: line_no,
            reason: e.to_string(),
        })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(process: u64, kind: Kind, f: &str, value: serde_json::Value, t: u64) -> Record {
        Record {
            process,
            kind,
            f: f.into(),
            key: "k".into(),
            value,
            time_ns: t,
            node: String::new(),
            error: String::new(),
        }
    }

    #[test]
    fn pairs_and_round_trips() {
        let h = vec![
            rec(1, Kind::Invoke, "write", 1.into(), 1),
            rec(2, Kind::Invoke, "read", serde_json::Value::Null, 2),
            rec(1, Kind::Ok, "write", 1.into(), 3),
            rec(2, Kind::Info, "read", serde_json::Value::Null, 4),
            rec(3, Kind::Invoke, "write", 2.into(), 5),
        ];
        let mut buf = Vec::new();
        write_jsonl(&mut buf, &h).unwrap();
        let back = read_jsonl(buf.as_slice()).unwrap();
        assert_eq!(back, h);
        let ops = pair(&back).unwrap();
        assert_eq!(ops.len(), 3);
        assert_eq!((ops[0].kind(), ops[0].end()), (Kind::Ok, 3));
        assert_eq!((ops[1].kind(), ops[1].end()), (Kind::Info, u64::MAX));
        assert_eq!((ops[2].kind(), ops[2].end()), (Kind::Info, u64::MAX), "never completed");
    }

    #[test]
    fn malformed_histories_are_refused_with_the_line() {
        let orphan = vec![rec(1, Kind::Ok, "write", 1.into(), 1)];
        assert_eq!(pair(&orphan).unwrap_err().line, 1);
        let twice = vec![
            rec(1, Kind::Invoke, "write", 1.into(), 1),
            rec(1, Kind::Invoke, "write", 2.into(), 2),
        ];
        assert!(pair(&twice).unwrap_err().reason.contains("in flight"));
        let reused = vec![
            rec(1, Kind::Invoke, "write", 1.into(), 1),
            rec(1, Kind::Info, "write", 1.into(), 2),
            rec(1, Kind::Invoke, "write", 2.into(), 3),
        ];
        assert_eq!(pair(&reused).unwrap_err().line, 3);
        let bad = read_jsonl("{\"process\":1}\n".as_bytes()).unwrap_err();
        assert_eq!(bad.line, 1);
    }
}
