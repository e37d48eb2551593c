//! Conversions between the store's types and the wire messages, errors included: a failed call
//! carries an `ErrorDetail` in its status, so the client raises the same `StoreError` the
//! served store did.

use prost::Message;
use tonic::codegen::Bytes;
use tonic::{Code, Status};

use super::pb;
use crate::error::StoreError;
use crate::kv::{Compare, EventKind, KeyValue, LeaseId, Txn, TxnOp, WatchEvent};

pub(super) fn lease_to_pb(lease: Option<LeaseId>) -> i64 {
    lease.map_or(0, |l| l.0)
}

pub(super) fn lease_from_pb(lease: i64) -> Option<LeaseId> {
    (lease != 0).then_some(LeaseId(lease))
}

pub(super) fn kv_to_pb(kv: KeyValue) -> pb::KeyValue {
    pb::KeyValue {
        key: kv.key,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: lease_to_pb(kv.lease),
    }
}

pub(super) fn kv_from_pb(kv: pb::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: lease_from_pb(kv.lease),
    }
}

pub(super) fn txn_to_pb(txn: Txn) -> pb::TxnRequest {
    pb::TxnRequest {
        compares: txn.compares.into_iter().map(compare_to_pb).collect(),
        success: txn.success.into_iter().map(op_to_pb).collect(),
        failure: txn.failure.into_iter().map(op_to_pb).collect(),
    }
}

fn compare_to_pb(c: Compare) -> pb::Compare {
    use pb::compare::Target;
    let (key, target) = match c {
        Compare::ValueEquals { key, value } => (key, Target::Value(value)),
        Compare::ModRevisionEquals { key, revision } => (key, Target::ModRevision(revision)),
        Compare::CreateRevisionEquals { key, revision } => (key, Target::CreateRevision(revision)),
    };
    pb::Compare {
        key,
        target: Some(target),
    }
}

fn op_to_pb(op: TxnOp) -> pb::TxnOp {
    use pb::txn_op::Op;
    let op = match op {
        TxnOp::Put { key, value, lease } => Op::Put(pb::PutRequest {
            key,
            value,
            lease: lease_to_pb(lease),
        }),
        TxnOp::Delete { key } => Op::Delete(pb::DeleteRequest { key, prefix: false }),
        TxnOp::DeletePrefix { prefix } => Op::Delete(pb::DeleteRequest {
            key: prefix,
            prefix: true,
        }),
    };
    pb::TxnOp { op: Some(op) }
}

pub(super) fn txn_from_pb(req: pb::TxnRequest) -> Result<Txn, StoreError> {
    let compares = req
        .compares
        .into_iter()
        .map(compare_from_pb)
        .collect::<Result<_, _>>()?;
    let success = req
        .success
        .into_iter()
        .map(op_from_pb)
        .collect::<Result<_, _>>()?;
    let failure = req
        .failure
        .into_iter()
        .map(op_from_pb)
        .collect::<Result<_, _>>()?;
    Ok(Txn {
        compares,
        success,
        failure,
    })
}

fn compare_from_pb(c: pb::Compare) -> Result<Compare, StoreError> {
    use pb::compare::Target;
    match c.target {
        Some(Target::Value(value)) => Ok(Compare::value(c.key, value)),
        Some(Target::ModRevision(r)) => Ok(Compare::mod_revision(c.key, r)),
        Some(Target::CreateRevision(r)) => Ok(Compare::create_revision(c.key, r)),
        None => Err(StoreError::InvalidRequest(format!(
            "a compare on {:?} names no target; give a value, mod revision or create revision",
            c.key
        ))),
    }
}

fn op_from_pb(op: pb::TxnOp) -> Result<TxnOp, StoreError> {
    use pb::txn_op::Op;
    match op.op {
        Some(Op::Put(p)) => Ok(TxnOp::Put {
            key: p.key,
            value: p.value,
            lease: lease_from_pb(p.lease),
        }),
        Some(Op::Delete(d)) if d.prefix => Ok(TxnOp::DeletePrefix { prefix: d.key }),
        Some(Op::Delete(d)) => Ok(TxnOp::Delete { key: d.key }),
        None => Err(StoreError::InvalidRequest(
            "a transaction operation is empty; give a put or a delete".into(),
        )),
    }
}

pub(super) fn event_to_pb(event: WatchEvent) -> pb::WatchResponse {
    let kind = match event.kind {
        EventKind::Put => pb::watch_response::Kind::Put,
        EventKind::Delete => pb::watch_response::Kind::Delete,
    };
    pb::WatchResponse {
        kind: kind as i32,
        kv: Some(kv_to_pb(event.kv)),
        revision: event.revision,
    }
}

pub(super) fn event_from_pb(msg: pb::WatchResponse) -> Result<WatchEvent, String> {
    let kind = match pb::watch_response::Kind::try_from(msg.kind) {
        Ok(pb::watch_response::Kind::Put) => EventKind::Put,
        Ok(pb::watch_response::Kind::Delete) => EventKind::Delete,
        Err(_) => return Err(format!("a watch event of unknown kind {}", msg.kind)),
    };
    let kv = msg.kv.ok_or("a watch event without its key-value")?;
    Ok(WatchEvent {
        kind,
        kv: kv_from_pb(kv),
        revision: msg.revision,
    })
}

/// The status a failed call answers with.
pub(super) fn error_to_status(e: StoreError) -> Status {
    use pb::error_detail::Kind;
    let mut detail = pb::ErrorDetail {
        message: e.to_string(),
        ..Default::default()
    };
    let code = match &e {
        StoreError::LeaseExpired(lease) => {
            detail.kind = Kind::LeaseExpired as i32;
            detail.lease = lease.0;
            Code::NotFound
        }
        StoreError::Compacted {
            requested,
            compacted,
        } => {
            detail.kind = Kind::Compacted as i32;
            detail.requested_revision = *requested;
            detail.compacted_revision = *compacted;
            Code::OutOfRange
        }
        StoreError::InvalidRequest(_) | StoreError::BadEndpoint { .. } => {
            detail.kind = Kind::InvalidRequest as i32;
            Code::InvalidArgument
        }
        e if e.is_transient() => Code::Unavailable,
        _ => Code::FailedPrecondition,
    };
    Status::with_details(code, e.to_string(), Bytes::from(detail.encode_to_vec()))
}

/// The error a failed call raises on the client.
pub(super) fn status_to_error(status: Status, target: &str, operation: &'static str) -> StoreError {
    use pb::error_detail::Kind;
    if let Ok(detail) = pb::ErrorDetail::decode(status.details()) {
        match Kind::try_from(detail.kind) {
            Ok(Kind::LeaseExpired) => return StoreError::LeaseExpired(LeaseId(detail.lease)),
            Ok(Kind::Compacted) => {
                return StoreError::Compacted {
                    requested: detail.requested_revision,
                    compacted: detail.compacted_revision,
                };
            }
            Ok(Kind::InvalidRequest) => {
                // The served store's message already says "invalid store request: ...".
                let message = detail.message;
                let inner = message
                    .strip_prefix("invalid store request: ")
                    .unwrap_or(&message);
                return StoreError::InvalidRequest(inner.to_string());
            }
            Ok(Kind::Other) | Err(_) => {}
        }
    }
    match status.code() {
        // Unknown: what a broken connection often surfaces as.
        Code::Unavailable
        | Code::Unknown
        | Code::Cancelled
        | Code::Aborted
        | Code::ResourceExhausted => StoreError::Unavailable {
            target: target.to_string(),
            operation,
            message: status.message().to_string(),
        },
        Code::DeadlineExceeded => StoreError::Unavailable {
            target: target.to_string(),
            operation,
            message: "the call timed out".to_string(),
        },
        Code::Unimplemented | Code::Internal | Code::DataLoss => StoreError::Protocol {
            target: target.to_string(),
            operation,
            expected: "Tessera store (tessera://)",
            message: status.message().to_string(),
        },
        _ => StoreError::Refused {
            target: target.to_string(),
            operation,
            message: status.message().to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_survive_the_wire() {
        for e in [
            StoreError::LeaseExpired(LeaseId(42)),
            StoreError::Compacted {
                requested: 3,
                compacted: 9,
            },
            StoreError::InvalidRequest("the key is empty; give a non-empty key".into()),
        ] {
            assert_eq!(status_to_error(error_to_status(e.clone()), "x", "get"), e);
        }
        let unavailable = status_to_error(Status::unavailable("connection refused"), "x", "put");
        assert!(unavailable.is_transient());
    }

    #[test]
    fn transactions_survive_the_wire() {
        let txn = Txn::new()
            .when([
                Compare::value("a", "1"),
                Compare::mod_revision("b", 4),
                Compare::absent("c"),
            ])
            .and_then([
                TxnOp::put_leased("c", "x", LeaseId(9)),
                TxnOp::delete("a"),
                TxnOp::delete_prefix("p/"),
            ])
            .or_else([TxnOp::put("d", "y")]);
        assert_eq!(txn_from_pb(txn_to_pb(txn.clone())).unwrap(), txn);
        let empty_op = pb::TxnRequest {
            success: vec![pb::TxnOp { op: None }],
            ..Default::default()
        };
        assert!(matches!(
            txn_from_pb(empty_op),
            Err(StoreError::InvalidRequest(_))
        ));
    }
}
