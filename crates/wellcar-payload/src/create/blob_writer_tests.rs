//! Unit tests of payload creation internals: extent discovery on sparse files.

use super::*;

#[test]
fn extents_report_holes_without_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse");
    let file = File::create(&path).unwrap();
    file.set_len(64 << 20).unwrap();
    file.write_all_at(&[1; 4096], 16 << 20).unwrap();
    file.sync_all().unwrap();
    let file = File::open(&path).unwrap();
    let found = extents(&file, 64 << 20).unwrap();
    // Tiling is exact whatever the file system reports.
    assert_eq!(found.first().unwrap().start, 0);
    assert_eq!(found.last().unwrap().end, 64 << 20);
    for pair in found.windows(2) {
        assert_eq!(pair[0].end, pair[1].start);
    }
    let data: u64 = found
        .iter()
        .filter(|e| e.data)
        .map(|e| e.end - e.start)
        .sum();
    assert!(data >= 4096);
    if found.len() > 1 {
        // Hole reporting works here: most of the file is hole.
        assert!(data < 8 << 20, "{found:?}");
    }
}
