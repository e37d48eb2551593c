//! Listing and verification on hand-made checkpoint directories (the trainer's tests cover
//! the directories its writer makes).

use tessera_api::checkpoint::checkpoint_dir_name;

use super::*;
use crate::testing::committed;

#[test]
fn listing_orders_newest_first_and_tells_committed_from_not() {
    let root = tempfile::tempdir().unwrap();
    assert!(
        list_checkpoints(&root.path().join("never-created"))
            .unwrap()
            .is_empty()
    );
    committed(root.path(), 10, b"ten");
    committed(root.path(), 30, b"thirty");
    // Uncommitted: no marker, and a partial directory.
    std::fs::create_dir_all(root.path().join(checkpoint_dir_name(20))).unwrap();
    let partial = format!("{}.partial", checkpoint_dir_name(40));
    std::fs::create_dir_all(root.path().join(&partial)).unwrap();
    let listed: Vec<(u64, bool, u64)> = list_checkpoints(root.path())
        .unwrap()
        .iter()
        .map(|c| (c.step, c.committed, c.bytes))
        .collect();
    assert_eq!(
        listed,
        [(40, false, 0), (30, true, 6), (20, false, 0), (10, true, 3)]
    );
}

#[test]
fn verification_checks_the_marker_sizes_and_checksums() {
    let root = tempfile::tempdir().unwrap();
    let dir = committed(root.path(), 10, b"weights");
    let report = verify_checkpoint(&dir);
    assert!(report.is_valid(), "{:?}", report.problems);
    assert_eq!(report.step, Some(10));
    assert_eq!(report.files.len(), 1);

    std::fs::write(dir.join("model.safetensors"), b"weighTs").unwrap();
    let report = verify_checkpoint(&dir);
    assert!(matches!(
        report.problems.as_slice(),
        [InvalidReason::ChecksumMismatch { .. }]
    ));
    std::fs::write(dir.join("model.safetensors"), b"weigh").unwrap();
    assert!(matches!(
        verify_checkpoint(&dir).problems.as_slice(),
        [InvalidReason::Truncated { .. }]
    ));

    let unmarked = root.path().join(checkpoint_dir_name(20));
    std::fs::create_dir_all(&unmarked).unwrap();
    assert_eq!(
        verify_checkpoint(&unmarked).problems,
        [InvalidReason::NoCommitMarker]
    );
    // A manifest for another step than its directory's.
    let moved = root.path().join(checkpoint_dir_name(30));
    std::fs::rename(&dir, &moved).unwrap();
    assert!(matches!(
        verify_checkpoint(&moved).problems.as_slice(),
        [InvalidReason::StepMismatch {
            dir_step: 30,
            manifest_step: 10
        }]
    ));
}
