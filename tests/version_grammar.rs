//! One OS version grammar from build to server (no VM is booted).
//!
//! A version string must get the same verdict from every step it passes through: the image
//! build (the OS definition's `os.version` and the `--version` override), the update payload
//! (manifest validation and the running version in the apply policy), the boot state (a fresh
//! image's USR-A) and the update server (publishing a package, reading a client's version).
//! Before `wellcar_contract::OsVersion`, `1.2` passed the build and the payload and then could
//! not be published.

use std::path::Path;

use wellcar_bootstate::BootState;
use wellcar_contract::{OsVersion, RootHash};
use wellcar_image::OsDefinition;
use wellcar_payload::format::{Destination, FileImage, Operation, UsrImage, VerityParams, ZeroOp};
use wellcar_payload::{ApplyError, ApplyPolicy, FormatError, Manifest, Sha256Digest};

const ROOT_HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const BOARD: &str = "amd64-usr";

/// The table: each version and whether it is an OS version.
fn table() -> Vec<(String, bool)> {
    let forty_one = format!("1.0.0+{}", "a".repeat(35));
    assert_eq!(forty_one.len(), 41);
    let forty = format!("1.0.0+{}", "a".repeat(34));
    assert_eq!(forty.len(), 40);
    [
        ("1.0.0", true),
        ("3815.2.0", true),
        ("4799.0.0+nightly-20260821-2100", true),
        ("0.0.0", true),
        (forty.as_str(), true),
        ("1.2", false),
        ("1.2.3.4", false),
        ("v1.2.3", false),
        ("1.0.0-rc1", false),
        ("01.2.3", false),
        ("", false),
        ("1.2.3+", false),
        ("1.2.3 ", false),
        (forty_one.as_str(), false),
    ]
    .into_iter()
    .map(|(v, ok)| (v.to_owned(), ok))
    .collect()
}

/// The build: `OsDefinition::load` of the committed definition with `os.version` replaced.
fn image_definition_accepts(dir: &Path, version: &str) -> bool {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../os/wellcar.toml");
    let text = std::fs::read_to_string(&committed).expect("the committed OS definition");
    let line = text
        .lines()
        .find(|l| l.starts_with("version = "))
        .expect("os/wellcar.toml has a version line");
    let replaced = text.replacen(line, &format!("version = {version:?}"), 1);
    let path = dir.join("wellcar.toml");
    std::fs::write(&path, replaced).expect("writing the definition");
    match OsDefinition::load(&path) {
        Ok(def) => {
            assert_eq!(def.os.version, version);
            true
        }
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains("os.version"),
                "{version:?}: refused for another reason: {e}"
            );
            false
        }
    }
}

/// The build's `--version` override check.
fn image_override_accepts(version: &str) -> bool {
    wellcar_image::definition::check_version(version).is_ok()
}

/// A manifest that is valid apart from its version.
fn manifest(version: &str) -> Manifest {
    Manifest {
        version: version.into(),
        board: BOARD.into(),
        build_id: "version-grammar".into(),
        min_source_version: None,
        source: None,
        usr: UsrImage {
            size: 8192,
            sha256: Sha256Digest([1; 32]),
            verity: VerityParams {
                root_hash: RootHash::from_bytes([2; 32]),
                salt: "aa".into(),
                hash_offset: 4096,
                data_blocks: 1,
            },
        },
        kernel: FileImage {
            size: 10,
            sha256: Sha256Digest([3; 32]),
        },
        initramfs: FileImage {
            size: 10,
            sha256: Sha256Digest([4; 32]),
        },
        data_len: 0,
        operations: vec![
            Operation::Zero(ZeroOp {
                dst: Destination::Usr,
                dst_offset: 0,
                dst_length: 8192,
            }),
            Operation::Zero(ZeroOp {
                dst: Destination::Kernel,
                dst_offset: 0,
                dst_length: 10,
            }),
            Operation::Zero(ZeroOp {
                dst: Destination::Initramfs,
                dst_offset: 0,
                dst_length: 10,
            }),
        ],
    }
}

/// The payload: the manifest's `version`, then its `min_source_version`.
fn payload_manifest_accepts(version: &str) -> bool {
    let as_version = manifest(version).validate();
    let mut min = manifest("1.0.0");
    min.min_source_version = Some(version.into());
    let as_min = min.validate();
    let verdict = |r: Result<(), FormatError>, field: &str| match r {
        Ok(()) => true,
        Err(FormatError::InvalidManifest { field: f, .. }) if f == field => false,
        Err(e) => panic!("{version:?}: manifest refused for another reason: {e}"),
    };
    let (v, m) = (
        verdict(as_version, "version"),
        verdict(as_min, "min_source_version"),
    );
    assert_eq!(v, m, "{version:?}: version and min_source_version disagree");
    v
}

/// The payload: the running version in the apply policy.
fn payload_policy_accepts(version: &str) -> bool {
    let newest = manifest("18446744073709551615.0.0");
    match ApplyPolicy::new(BOARD, Some(version.into())).check(&newest) {
        Ok(()) => true,
        Err(ApplyError::InvalidCurrentVersion { version: v, .. }) => {
            assert_eq!(v, version);
            false
        }
        Err(e) => panic!("{version:?}: policy refused for another reason: {e}"),
    }
}

/// The boot state: a fresh image's USR-A records the version.
fn boot_state_accepts(version: &str) -> bool {
    let root_hash: RootHash = ROOT_HASH.parse().expect("a root hash");
    match BootState::fresh(root_hash, version) {
        Ok(state) => {
            assert_eq!(state.a.version, version);
            true
        }
        Err(e) => {
            assert!(
                matches!(e, wellcar_bootstate::Refusal::InvalidVersion(_)),
                "{version:?}: refused for another reason: {e}"
            );
            false
        }
    }
}

/// The server: publishing a package with this version.
fn server_publish_accepts(version: &str) -> bool {
    match wellcar_server::store::validate_package_version(version) {
        Ok(v) => {
            assert_eq!(v.as_str(), version);
            true
        }
        Err(e) => {
            assert!(e.to_string().contains("package version"), "{e}");
            false
        }
    }
}

/// The server: a client reporting this version can be offered an update.
fn server_client_version_accepts(version: &str) -> bool {
    wellcar_server::omaha::parse_version(version).is_some()
}

#[test]
fn every_step_gives_every_version_the_same_verdict() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut checked = 0;
    for (version, expected) in table() {
        let verdicts = [
            ("contract", OsVersion::parse(&version).is_ok()),
            (
                "image definition",
                image_definition_accepts(dir.path(), &version),
            ),
            ("image --version", image_override_accepts(&version)),
            ("payload manifest", payload_manifest_accepts(&version)),
            ("payload policy", payload_policy_accepts(&version)),
            ("boot state", boot_state_accepts(&version)),
            ("server package", server_publish_accepts(&version)),
            ("server client", server_client_version_accepts(&version)),
        ];
        for (step, verdict) in verdicts {
            assert_eq!(
                verdict,
                expected,
                "{step} {} {version:?}",
                if verdict { "accepts" } else { "refuses" }
            );
        }
        checked += 1;
    }
    assert_eq!(checked, table().len());
}

#[test]
fn every_step_orders_versions_numerically() {
    // The payload's "is it newer" check and the server's update offer agree on the order.
    let (older, newer) = ("3815.2.9", "3815.2.10");
    let policy = ApplyPolicy::new(BOARD, Some(older.into()));
    assert!(policy.check(&manifest(newer)).is_ok());
    let policy = ApplyPolicy::new(BOARD, Some(newer.into()));
    assert!(matches!(
        policy.check(&manifest(older)),
        Err(ApplyError::NotNewer { .. })
    ));
    let parse = wellcar_server::omaha::parse_version;
    assert!(parse(newer) > parse(older));
    assert!(OsVersion::parse(newer).unwrap() > OsVersion::parse(older).unwrap());
}
