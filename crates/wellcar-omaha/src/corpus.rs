//! Test-only access to the shared Omaha corpus (`shared/corpus/omaha`: requests and responses
//! captured from Flatcar's update_engine and Nebraska).
//!
//! Contract: `WELLCAR_CORPUS` names the directory holding `omaha/` (and `ignition/`); without it
//! the corpus is looked for beside the checkout, at `<checkout>/../shared/corpus`.

use std::path::PathBuf;

/// The bytes of corpus file `name`; panics naming the path and the override when it is missing.
pub(crate) fn read(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("WELLCAR_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus")
        });
    let path = dir.join("omaha").join(name);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("reading {} (set WELLCAR_CORPUS): {e}", path.display()))
}
