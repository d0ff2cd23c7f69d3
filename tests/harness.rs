//! Shared pieces of the VM tests: building real images (once per test process, or once per
//! `scripts/test.sh` run through `WELLCAR_TEST_BUILD_ID`), locating the workspace, and booting.
//! The helpers over a booted machine (console tail, autologin wait, console commands, running
//! host tools) are in `wellcar_test_support::vm` and `::tools`, a dev-dependency of these tests.
//!
//! These tests need the host tools `scripts/install-deps.sh` installs and the static initramfs
//! `/init` that `scripts/build-guest.sh` builds; when either is missing they fail and say so.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

pub use wellcar_contract::error_chain as chain;
pub use wellcar_image::BuildManifest;
pub use wellcar_vm::{Accel, Firmware, Machine, MachineConfig};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// Where the VM tests keep their builds.
pub fn test_dir() -> PathBuf {
    workspace().join("target/vmtest")
}

/// The static `/init`, built by `scripts/build-guest.sh`.
pub fn init_binary() -> PathBuf {
    let p = workspace().join("target/x86_64-unknown-linux-gnu/initramfs/wellcar-init");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/build-guest.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Wellcar's on-host programs, built by `scripts/build-guest.sh` into `target/release`.
pub fn usr_binaries() -> Vec<PathBuf> {
    wellcar_image::USR_BINARIES
        .iter()
        .map(|n| workspace().join("target/release").join(n))
        .filter(|p| p.is_file())
        .collect()
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct Built {
    /// Output directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: BuildManifest,
}

impl Built {
    /// A file of the build.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Builds the committed OS definition as `version` into `target/vmtest/<name>`.
pub fn build(name: &str, version: &str) -> Built {
    build_with_overlays(name, version, Vec::new())
}

/// Builds the committed OS definition as `version` into `target/vmtest/<name>`, with
/// `usr_overlays` laid over `/usr` (`wellcar build --usr-overlay`).
pub fn build_with_overlays(name: &str, version: &str, usr_overlays: Vec<PathBuf>) -> Built {
    build_with(name, version, usr_overlays, None)
}

/// [`build_with_overlays`], also making a delta payload from the build `delta_from`
/// (`wellcar build --delta-from`), listed in the manifest's `deltas`.
pub fn build_with(
    name: &str,
    version: &str,
    usr_overlays: Vec<PathBuf>,
    delta_from: Option<&Built>,
) -> Built {
    let dir = test_dir().join(name);
    let opts = wellcar_image::BuildOptions {
        definition: workspace().join("os/wellcar.toml"),
        output: dir.clone(),
        version: Some(version.into()),
        source_date_epoch: 1_700_000_000,
        init_binary: init_binary(),
        usr_binaries: usr_binaries(),
        usr_overlays,
        signing_key: None,
        trusted_keys: Vec::new(),
        payload_compression_level: 3,
        delta_from: delta_from.map(|b| b.dir.clone()),
    };
    let manifest = wellcar_image::build_with_progress(&opts, &|e| match e {
        wellcar_image::BuildEvent::Rootfs(wellcar_image::RootfsProgress::Package { .. }) => {}
        e => eprintln!("{e}"),
    })
    .unwrap_or_else(|e| panic!("wellcar build failed: {}", chain(&e)));
    Built { dir, manifest }
}

/// The standard v1 image, built once per test run and shared by every test.
pub fn image_v1() -> Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    BUILT
        .get_or_init(|| {
            let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let dir = test_dir().join("v1");
            let stamp = dir.join(".build-id");
            if let Ok(id) = std::env::var("WELLCAR_TEST_BUILD_ID") {
                if std::fs::read_to_string(&stamp).ok().as_deref() == Some(id.as_str()) {
                    if let Ok(manifest) = BuildManifest::read(&dir) {
                        return Built { dir, manifest };
                    }
                }
                let b = build("v1", "1.0.0");
                std::fs::write(&stamp, id).expect("writing build stamp");
                return b;
            }
            build("v1", "1.0.0")
        })
        .clone()
}

/// The accelerator VM tests use (probed once).
pub fn accel(kernel: &Path) -> Accel {
    static ACCEL: OnceLock<Accel> = OnceLock::new();
    *ACCEL.get_or_init(|| wellcar_vm::choose_accel(kernel))
}

/// Serialises VM boots: two cores do not run two TCG guests well.
pub fn vm_slot() -> std::sync::MutexGuard<'static, ()> {
    static VM: Mutex<()> = Mutex::new(());
    VM.lock().unwrap_or_else(|e| e.into_inner())
}

/// A machine config for `built` with the probed accelerator.
pub fn machine(built: &Built, firmware: Firmware) -> MachineConfig {
    let mut cfg = MachineConfig::new(
        built.path(&built.manifest.qcow2_image),
        accel(&built.path(&built.manifest.kernel)),
    );
    cfg.firmware = firmware;
    cfg
}
