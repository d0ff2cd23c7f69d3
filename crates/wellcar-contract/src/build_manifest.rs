//! `manifest.json`: the record `wellcar build` leaves in its output directory, and the contract
//! with everything that consumes a build (`wellcar payload create`, `wellcar server package
//! publish --build`, `wellcar run`, the VM tests and the boot bench).
//!
//! Contract: one JSON object, written by [`BuildManifest::write`] (pretty-printed, one trailing
//! newline, replaced with [`atomic_file`](crate::atomic_file)) and read by
//! [`BuildManifest::read`]. File names in it are relative to the output directory. Keys are
//! only ever added, never renamed or removed; a key added after the first release is
//! `#[serde(default)]` so that older manifests still read, and unknown keys are ignored so that
//! an older reader accepts a newer manifest. The fields a payload is made from (version,
//! board, verity parameters, the /usr image, kernel and initramfs with their sha256s) are
//! required; the rest describe the build for people.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::RootHash;

/// The file name of the build manifest in a build's output directory.
pub const BUILD_MANIFEST_FILE: &str = "manifest.json";

/// One installed Debian package, as `dpkg-query` reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRecord {
    /// Package name.
    pub name: String,
    /// Installed version.
    pub version: String,
}

/// The build manifest (module documentation: the contract).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildManifest {
    /// OS version (`VERSION_ID`), an [`OsVersion`](crate::OsVersion) for every build since the
    /// grammar was fixed; checked where it is used, so an older manifest still reads.
    pub version: String,
    /// Board, Flatcar-style (`amd64-usr`).
    pub board: String,
    /// `BUILD_ID` in os-release.
    #[serde(default)]
    pub build_id: String,
    /// `SOURCE_DATE_EPOCH` the build used.
    #[serde(default)]
    pub source_date_epoch: u64,
    /// dm-verity root hash of the /usr slot image.
    pub verity_root_hash: RootHash,
    /// dm-verity salt (hex).
    pub verity_salt: String,
    /// Byte offset of the hash area (superblock first) inside the USR partition.
    pub verity_hash_offset: u64,
    /// Data blocks (4096 bytes) covered by the tree.
    pub verity_data_blocks: u64,
    /// The /usr slot image.
    pub usr_image: String,
    /// Its size in bytes.
    pub usr_image_size: u64,
    /// Its sha256 (hex).
    pub usr_image_sha256: String,
    /// Size of the EROFS filesystem inside it.
    #[serde(default)]
    pub usr_fs_size: u64,
    /// Apparent size of the uncompressed /usr tree.
    #[serde(default)]
    pub usr_tree_size: u64,
    /// The kernel.
    pub kernel: String,
    /// Kernel release.
    #[serde(default)]
    pub kernel_version: String,
    /// Kernel sha256 (hex).
    pub kernel_sha256: String,
    /// The initramfs.
    pub initramfs: String,
    /// Initramfs sha256 (hex).
    pub initramfs_sha256: String,
    /// Initramfs size in bytes.
    #[serde(default)]
    pub initramfs_size: u64,
    /// Raw disk image.
    #[serde(default)]
    pub disk_image: String,
    /// qcow2 disk image.
    #[serde(default)]
    pub qcow2_image: String,
    /// Signed update payload, when one was written.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub payload: Option<String>,
    /// Installed Debian packages.
    #[serde(default)]
    pub packages: Vec<PackageRecord>,
    /// Root filesystem cache key.
    #[serde(default)]
    pub rootfs_cache_key: String,
    /// Phase name and seconds.
    #[serde(default)]
    pub phases: Vec<(String, f64)>,
    /// Delta payloads made for this build (`wellcar build --delta-from`, `wellcar payload
    /// create --delta-from` into the build directory), one per source version.
    #[serde(default)]
    pub deltas: Vec<DeltaArtifact>,
    /// The live system's kernel for PXE (and the ISO), relative to the build directory.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pxe_kernel: Option<String>,
    /// The live system's initramfs, which carries `/usr` (see [`crate::live`]).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pxe_initramfs: Option<String>,
    /// Its size in bytes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pxe_initramfs_size: Option<u64>,
    /// The kernel command line that boots the live system (`wellcar.live verity.usrhash=…`;
    /// console and platform arguments are the user's).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub live_kernel_args: Option<String>,
    /// The live system's hybrid ISO (BIOS and UEFI, CD or USB stick).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub iso_image: Option<String>,
}

/// One delta payload of a build: it updates a machine running `source_version` to the build's
/// version. `wellcar server package publish --build` uploads it next to the full payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaArtifact {
    /// The OS version the delta applies to (the running version it was made against).
    pub source_version: String,
    /// The delta payload file, relative to the build directory.
    pub file: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its sha256 (hex).
    pub sha256: String,
}

impl BuildManifest {
    /// Records `delta`, replacing an earlier delta from the same source version.
    pub fn record_delta(&mut self, delta: DeltaArtifact) {
        self.deltas
            .retain(|d| d.source_version != delta.source_version);
        self.deltas.push(delta);
    }
}

/// Why a build manifest could not be read or written; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum BuildManifestError {
    /// The file could not be read.
    #[error("reading the build manifest {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is not a build manifest: not JSON, a required key missing, or a value of the
    /// wrong shape (the JSON error names the key, line and column).
    #[error("{path} is not a valid build manifest")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The file could not be written.
    #[error("writing the build manifest {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

impl BuildManifest {
    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self, BuildManifestError> {
        Self::read_file(&dir.join(BUILD_MANIFEST_FILE))
    }

    /// Reads a build manifest from `path`.
    pub fn read_file(path: &Path) -> Result<Self, BuildManifestError> {
        let bytes = std::fs::read(path).map_err(|source| BuildManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| BuildManifestError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes `dir/manifest.json`, replacing it atomically.
    pub fn write(&self, dir: &Path) -> Result<(), BuildManifestError> {
        let path = dir.join(BUILD_MANIFEST_FILE);
        let mut text = serde_json::to_string_pretty(self).expect("a build manifest serializes");
        text.push('\n');
        crate::atomic_file::write(&path, text.as_bytes(), 0o644)
            .map_err(|source| BuildManifestError::Write { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys a payload is made from: what the oldest manifests carried.
    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "version": "1.0.0", "board": "amd64-usr",
            "verity_root_hash": "ab".repeat(32), "verity_salt": "00",
            "verity_hash_offset": 4096, "verity_data_blocks": 1,
            "usr_image": "usr.img", "usr_image_size": 8192, "usr_image_sha256": "cd".repeat(32),
            "kernel": "vmlinuz", "kernel_sha256": "ef".repeat(32),
            "initramfs": "initramfs.img", "initramfs_sha256": "01".repeat(32)
        })
    }

    #[test]
    fn round_trips_and_reads_older_and_newer_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(BUILD_MANIFEST_FILE);
        let mut json = minimal();
        // A key from a newer build is ignored.
        json["added_later"] = serde_json::json!(true);
        std::fs::write(&path, json.to_string()).unwrap();
        let mut manifest = BuildManifest::read(dir.path()).unwrap();
        assert_eq!(manifest.verity_root_hash.to_string(), "ab".repeat(32));
        assert_eq!(
            (manifest.payload.as_deref(), manifest.packages.len()),
            (None, 0)
        );

        manifest.payload = Some("wellcar_update.bin".into());
        manifest.packages.push(PackageRecord {
            name: "systemd".into(),
            version: "252.38-1~deb12u1".into(),
        });
        manifest.phases.push(("rootfs".into(), 65.5));
        assert!(manifest.deltas.is_empty());
        let delta = |v: &str, size| DeltaArtifact {
            source_version: v.into(),
            file: format!("wellcar_delta_from_{v}.bin"),
            size,
            sha256: "12".repeat(32),
        };
        manifest.record_delta(delta("0.9.0", 10));
        manifest.record_delta(delta("1.0.0", 20));
        manifest.record_delta(delta("0.9.0", 30));
        assert_eq!(manifest.deltas, [delta("1.0.0", 20), delta("0.9.0", 30)]);
        manifest.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("}\n"), "{text}");
        assert!(text.contains("\"verity_root_hash\": \"abab"), "{text}");
        assert!(text.contains("\"source_version\": \"1.0.0\""), "{text}");
        assert_eq!(BuildManifest::read(dir.path()).unwrap(), manifest);
    }

    #[test]
    fn a_missing_required_key_or_bad_root_hash_names_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(BUILD_MANIFEST_FILE);
        let mut json = minimal();
        json.as_object_mut().unwrap().remove("kernel_sha256");
        std::fs::write(&path, json.to_string()).unwrap();
        let err = BuildManifest::read(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        let BuildManifestError::Parse { source, .. } = &err else {
            panic!("{err:?}")
        };
        assert!(source.to_string().contains("kernel_sha256"), "{source}");

        let mut json = minimal();
        json["verity_root_hash"] = serde_json::json!("AB".repeat(32));
        std::fs::write(&path, json.to_string()).unwrap();
        let err = BuildManifest::read(dir.path()).unwrap_err();
        assert!(
            matches!(&err, BuildManifestError::Parse { source, .. }
                if source.to_string().contains("root hash")),
            "{err:?}"
        );

        let err = BuildManifest::read(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, BuildManifestError::Read { .. }), "{err:?}");
    }
}
