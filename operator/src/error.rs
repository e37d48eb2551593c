//! The operator's errors, each with a metric label (`reconcile_errors_total{reason}`).

use crate::progress::ProgressError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the API server failed.
    #[error("{action} failed: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// The coordination store failed.
    #[error(transparent)]
    Progress(#[from] ProgressError),
    /// A TrainingRun without a namespace (the API server never sends one).
    #[error("the TrainingRun {0} has no namespace")]
    NoNamespace(String),
}

impl Error {
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Error {
        Error::Kube {
            action: action.into(),
            source,
        }
    }

    /// The `reason` label of the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { source, .. } => match source {
                kube::Error::Api(status) if status.code == 409 => "conflict",
                kube::Error::Api(status) if status.code == 404 => "not_found",
                kube::Error::Api(status) if status.code == 403 => "forbidden",
                kube::Error::Api(status) if status.code == 422 => "invalid",
                kube::Error::Api(_) => "api",
                _ => "connection",
            },
            Error::Progress(_) => "store",
            Error::NoNamespace(_) => "invalid",
        }
    }

    /// Whether the error is a 409 Conflict (another writer got there first).
    pub fn is_conflict(&self) -> bool {
        self.metric_label() == "conflict"
    }
}

/// Whether a kube error is the API server's 404.
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}
