//! `esf.v1.Config`: the etcd-style key-value API over the meta group.
//!
//! Writes and linearizable reads that reach a follower are forwarded once
//! to the leader ([`super::forward`]); serializable reads are served
//! locally; a watch is served by the node it is opened on
//! ([`crate::kv::watch`]).

use esf_proto::v1 as pb;
use esf_raft::command::{Command, Op, OpResult};
use esf_raft::group::Consistency;
use esf_raft::meta::auth::{Need, Resource};
use futures::StreamExt;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::forward::forward_or;
use crate::audit;
use crate::auth::Authz;
use crate::context::Ctx;
use crate::convert;
use crate::error::Error;
use crate::kv::watch;

type ConfigStub = pb::config_client::ConfigClient<Channel>;
type WatchStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// `esf.v1.Config`.
pub struct ConfigService(pub Ctx);

#[tonic::async_trait]
impl pb::config_server::Config for ConfigService {
    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let authz = Authz::of(&self.0, &req);
        let msg = req.into_inner();
        let range = convert::range("watch.range", msg.range)?;
        authz.require(Resource::Key, Need::Read, &range)?;
        let rx = watch::start_watch(
            &self.0,
            "watch",
            range,
            msg.start_revision,
            msg.prev_kv,
            msg.progress_notify_ms,
        )?;
        Ok(Response::new(Box::pin(rx.map(|r| r.map_err(Status::from)))))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let msg = req.get_ref().clone();
        let cmd = Command {
            session: convert::session(msg.session),
            op: Authz::of(&self.0, &req).wrap(Op::Put(convert::put("put", msg.clone())?))?,
        };
        match self.0.write(cmd).await {
            Ok((h, OpResult::Put { prev_kv })) => Ok(Response::new(pb::PutResponse {
                header: Some(h),
                prev_kv: prev_kv.map(convert::kv),
            })),
            Ok((_, other)) => Err(Error::unexpected(other).into()),
            Err(e) => forward_or!(self.0, ConfigStub, req, e, put, msg),
        }
    }

    async fn range(&self, req: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        let msg = req.get_ref().clone();
        let r = convert::range_request("range", msg.clone())?;
        Authz::of(&self.0, &req).require(Resource::Key, Need::Read, &r.range)?;
        let c = if msg.serializable {
            Consistency::Serializable
        } else {
            Consistency::Linearizable
        };
        match self.0.meta.range(&r, c).await {
            Ok((h, res)) => Ok(Response::new(convert::range_result(Some(convert::header(h)), res))),
            Err(e) => forward_or!(self.0, ConfigStub, req, e, range, msg),
        }
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let msg = req.get_ref().clone();
        let d = convert::delete("delete", msg.clone())?;
        let cmd = Command {
            session: convert::session(msg.session),
            op: Authz::of(&self.0, &req).wrap(Op::Delete(d))?,
        };
        match self.0.write(cmd).await {
            Ok((h, OpResult::Delete { deleted, prev_kvs })) => Ok(Response::new(pb::DeleteResponse {
                header: Some(h),
                deleted,
                prev_kvs: prev_kvs.into_iter().map(convert::kv).collect(),
            })),
            Ok((_, other)) => Err(Error::unexpected(other).into()),
            Err(e) => forward_or!(self.0, ConfigStub, req, e, delete, msg),
        }
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let msg = req.get_ref().clone();
        let t = convert::txn(msg.clone())?;
        let cmd = Command {
            session: convert::session(msg.session),
            op: Authz::of(&self.0, &req).wrap(Op::Txn(t))?,
        };
        match self.0.write(cmd).await {
            Ok((h, OpResult::Txn { succeeded, results })) => {
                Ok(Response::new(convert::txn_result(h, succeeded, results)))
            }
            Ok((_, other)) => Err(Error::unexpected(other).into()),
            Err(e) => forward_or!(self.0, ConfigStub, req, e, txn, msg),
        }
    }

    async fn history(&self, req: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        let msg = req.get_ref().clone();
        convert::user_key("history.key", &msg.key)?;
        Authz::of(&self.0, &req).require(
            Resource::Key,
            Need::Read,
            &esf_raft::command::KeyRange::Key(msg.key.clone()),
        )?;
        let c = if msg.serializable {
            Consistency::Serializable
        } else {
            Consistency::Linearizable
        };
        match self
            .0
            .meta
            .history(&msg.key, msg.from_revision, msg.to_revision, c)
            .await
        {
            Ok((h, kvs)) => Ok(Response::new(pb::HistoryResponse {
                header: Some(convert::header(h)),
                versions: kvs.into_iter().map(convert::kv).collect(),
            })),
            Err(e) => forward_or!(self.0, ConfigStub, req, e, history, msg),
        }
    }

    async fn compact(&self, req: Request<pb::CompactRequest>) -> Result<Response<pb::CompactResponse>, Status> {
        let msg = req.get_ref().clone();
        // The audit relay records its cursor at most every 500 ms: give it
        // that long to pass the revision before the state machine refuses.
        audit::wait_relayed(&self.0.meta, msg.revision).await;
        let cmd = Command {
            session: convert::session(msg.session),
            op: Authz::of(&self.0, &req).wrap(Op::Compact { revision: msg.revision })?,
        };
        match self.0.write(cmd).await {
            Ok((h, OpResult::Compacted { compact_revision })) => Ok(Response::new(pb::CompactResponse {
                header: Some(h),
                compact_revision,
            })),
            Ok((_, other)) => Err(Error::unexpected(other).into()),
            Err(e) => forward_or!(self.0, ConfigStub, req, e, compact, msg),
        }
    }
}
