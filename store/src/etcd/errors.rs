//! How etcd-client's errors map onto `StoreError`: a missing lease, a malformed request, a
//! refusal, or (anything about the connection) "unavailable, retry".

use etcd_client::Error;
use tonic::Code;

use crate::error::StoreError;
use crate::kv::LeaseId;

/// The `StoreError` for an etcd-client error raised by `operation`; `lease` is the lease the
/// call named, if any, so a "lease not found" answer names it.
pub(super) fn from_etcd(
    e: Error,
    target: &str,
    operation: &'static str,
    lease: Option<LeaseId>,
) -> StoreError {
    let unavailable = |message: String| StoreError::Unavailable {
        target: target.to_string(),
        operation,
        message,
    };
    match e {
        Error::GRpcStatus(status) => {
            let message = status.message().to_string();
            if message.contains("lease not found") {
                return StoreError::LeaseExpired(lease.unwrap_or(LeaseId(0)));
            }
            match status.code() {
                Code::InvalidArgument => StoreError::InvalidRequest(message),
                // A connection failure surfaces as Unknown ("transport error", "service was not
                // ready"); a restarting etcd answers Unavailable or "no leader" errors.
                Code::Unavailable
                | Code::Unknown
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::ResourceExhausted => unavailable(message),
                _ => StoreError::Refused {
                    target: target.to_string(),
                    operation,
                    message,
                },
            }
        }
        Error::LeaseKeepAliveError(message) if message.contains("lease not found") => {
            StoreError::LeaseExpired(lease.unwrap_or(LeaseId(0)))
        }
        Error::InvalidArgs(message) => StoreError::InvalidRequest(message),
        Error::InvalidUri(e) => StoreError::BadEndpoint {
            endpoint: target.to_string(),
            reason: e.to_string(),
        },
        Error::Utf8Error(e) => StoreError::Protocol {
            target: target.to_string(),
            operation,
            expected: "etcd server holding UTF-8 keys",
            message: e.to_string(),
        },
        other => unavailable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_answers_map_to_store_errors() {
        let lost = Error::GRpcStatus(tonic::Status::not_found(
            "etcdserver: requested lease not found",
        ));
        assert_eq!(
            from_etcd(lost, "etcd at x", "put", Some(LeaseId(5))),
            StoreError::LeaseExpired(LeaseId(5))
        );
        let refused = Error::GRpcStatus(tonic::Status::unknown(
            "transport error: tcp connect error: Connection refused",
        ));
        assert!(from_etcd(refused, "etcd at x", "get", None).is_transient());
        let bad = Error::GRpcStatus(tonic::Status::invalid_argument(
            "etcdserver: duplicate key given in txn request",
        ));
        assert!(matches!(
            from_etcd(bad, "etcd at x", "txn", None),
            StoreError::InvalidRequest(_)
        ));
        let denied = Error::GRpcStatus(tonic::Status::permission_denied(
            "etcdserver: permission denied",
        ));
        assert!(!from_etcd(denied, "etcd at x", "get", None).is_transient());
    }
}
