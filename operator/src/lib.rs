//! The TrainingRun controller (owned by the operator work): gang admission, worker pods and
//! the headless service, restarts on pod or node loss, suspend, and status.
//!
//! Reconcile is a pure plan from (TrainingRun, observed pods and nodes, store progress) to
//! actions and a new status, and a thin executor that applies it.
#![forbid(unsafe_code)]
