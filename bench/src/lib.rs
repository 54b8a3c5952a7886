//! `esf-bench`: the same workloads, with the same clients, connections
//! and sizes, against ESF, etcd (its v3 gRPC API) or NATS JetStream; the
//! machine's physical limits; and the report `scripts/bench.sh` writes
//! into docs/benchmarks.md.

pub mod limits;
pub mod report;
pub mod run;
pub mod stats;
pub mod target;

/// The etcd v3 API subset the kv and watch workloads use.
#[allow(missing_docs, clippy::all)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
