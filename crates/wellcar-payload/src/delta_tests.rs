//! Delta payloads end to end over real files: create against a source build, apply with the
//! source slot, resume, and every bad input of issue 18 (wrong source version, source that
//! hashes differently, wrong patch output, truncated delta, extent beyond the slot), each
//! checking the error and the state of the target.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::apply::{ApplyError, ApplyPolicy, InstallReport, Installer, SourceReader};
use crate::create::{create_payload_with, CreateOptions, PayloadSummary};
use crate::format::{FormatError, Operation, PayloadHead};
use crate::round_trip_tests::{policy, resign, CutReader};
use crate::test_fixture::*;

/// v1 (the fixture build, "1.0.0") and v2 ("1.1.0"): one block patched in place, 1 MiB
/// shifted by 512 bytes, 256 KiB moved into what was a hole, 64 KiB of new bytes.
struct Pair {
    fx: Fixture,
    v2: PathBuf,
}

impl Pair {
    fn new() -> Self {
        let fx = Fixture::new("1.0.0");
        let v2 = derived_build(&fx.build, &fx.dir.path().join("v2"), "1.1.0", |data| {
            let old = data.clone();
            let m = MIB as usize;
            data[m + 100..m + 200].fill(0x42);
            data[2 * m..3 * m].copy_from_slice(&old[2 * m + 512..3 * m + 512]);
            data[10 * m..10 * m + 256 * 1024].copy_from_slice(&old[4 * m..4 * m + 256 * 1024]);
            data[12 * m..12 * m + 64 * 1024]
                .copy_from_slice(&wellcar_test_support::build::filler(64 * 1024, 99));
        });
        Self { fx, v2 }
    }

    fn source_usr(&self) -> PathBuf {
        self.fx.build.join("usr.img")
    }

    /// `source` with v1's kernel and initramfs, which the delta copies (they did not change).
    fn with_boot_files(&self, source: SourceReader) -> SourceReader {
        let v1 = wellcar_contract::BuildManifest::read(&self.fx.build).unwrap();
        source.with_boot_files(
            self.fx.build.join(&v1.kernel),
            self.fx.build.join(&v1.initramfs),
        )
    }

    /// v1's slot as the installer reads it.
    fn source(&self) -> SourceReader {
        self.with_boot_files(SourceReader::open(&self.source_usr()).unwrap())
    }

    fn delta(&self) -> PayloadSummary {
        let options = CreateOptions {
            compression_level: 3,
            delta_from: Some(self.fx.build.clone()),
            ..CreateOptions::default()
        };
        create_payload_with(
            &self.v2,
            &self.v2.join("manifest.json"),
            &[&self.fx.key],
            &self.fx.dir.path().join("delta.bin"),
            &options,
        )
        .unwrap()
    }
}

fn install(
    payload: &mut impl Read,
    pair: &Pair,
    policy: &ApplyPolicy,
    target: &TargetPaths,
    source: Option<&Path>,
) -> Result<InstallReport, ApplyError> {
    let source = source
        .map(SourceReader::open)
        .transpose()?
        .map(|s| pair.with_boot_files(s));
    install_from(payload, pair, policy, target, source)
}

/// [`install`] with the source as the installer gets it.
fn install_from(
    payload: &mut impl Read,
    pair: &Pair,
    policy: &ApplyPolicy,
    target: &TargetPaths,
    source: Option<SourceReader>,
) -> Result<InstallReport, ApplyError> {
    let head = PayloadHead::read(payload)?.authenticate(&pair.fx.trusted())?;
    let mut installer = Installer::new_with_source(head, policy, target.open(), source)?;
    installer.write_from(payload)?;
    installer.finish()
}

fn counts(payload: &Path) -> (usize, usize, usize) {
    let info = crate::PayloadInfo::read(&mut File::open(payload).unwrap()).unwrap();
    (
        info.source_copy_operations,
        info.source_patch_operations,
        info.replace_operations,
    )
}

#[test]
fn a_delta_uses_every_operation_is_small_and_installs_bit_identical() {
    let pair = Pair::new();
    let delta = pair.delta();
    assert_eq!(delta.source_version.as_deref(), Some("1.0.0"));
    let (copies, patches, _) = counts(&delta.path);
    assert!(copies >= 2, "{copies} source_copy operations");
    assert!(patches >= 1, "{patches} source_patch operations");
    let full = pair.fx.payload();
    // The hash area is rebuilt on the host in a delta, and sent in a full payload (which
    // agents that predate `verity_tree` must still install).
    let tree_ops = |path: &Path| {
        crate::PayloadInfo::read(&mut File::open(path).unwrap())
            .unwrap()
            .verity_tree_operations
    };
    assert_eq!(tree_ops(&delta.path), 1);
    assert_eq!(tree_ops(&full.path), 0);
    // Likewise only a delta's manifest is compressed.
    let zstd_manifest = |path: &Path| {
        PayloadHead::read(&mut File::open(path).unwrap())
            .unwrap()
            .header
            .manifest_zstd
    };
    assert!(zstd_manifest(&delta.path));
    assert!(!zstd_manifest(&full.path));
    // The changed /usr bytes are ~1.3 MiB of compressible and 64 KiB of new bytes; the
    // kernel (300 KB) and initramfs (5 MiB) did not change and are copied from the source.
    assert!(
        delta.size < 512 * 1024 && delta.size < full.size,
        "delta {} bytes, full {}",
        delta.size,
        full.size
    );
    let target = pair.fx.target("t", USR_SIZE);
    let report = install(
        &mut File::open(&delta.path).unwrap(),
        &pair,
        &policy(),
        &target,
        Some(&pair.source_usr()),
    )
    .unwrap();
    assert_eq!(report.version, "1.1.0");
    let v2 = wellcar_contract::BuildManifest::read(&pair.v2).unwrap();
    assert_eq!(report.verity_root_hash, v2.verity_root_hash);
    assert_eq!(read(&target.usr), read(&pair.v2.join("usr.img")));
    assert_eq!(read(&target.kernel), read(&pair.v2.join("vmlinuz")));
    let v2_initramfs = pair.v2.join(&v2.initramfs);
    assert_eq!(read(&target.initramfs), read(&v2_initramfs));
    // verify_payload checks signature and blobs and names the source.
    let verified =
        crate::verify_payload(&mut File::open(&delta.path).unwrap(), &pair.fx.trusted()).unwrap();
    assert_eq!(verified.delta_source.as_deref(), Some("1.0.0"));
}

#[test]
fn a_delta_for_another_source_version_is_refused_before_writing() {
    let pair = Pair::new();
    let delta = pair.delta();
    let target = pair.fx.target("t", USR_SIZE);
    let running = ApplyPolicy::new(BOARD, Some("1.0.1".into()));
    let err = install(
        &mut File::open(&delta.path).unwrap(),
        &pair,
        &running,
        &target,
        Some(&pair.source_usr()),
    )
    .unwrap_err();
    assert!(
        matches!(&err, ApplyError::DeltaSourceVersion { delta_source, running } if delta_source == "1.0.0" && running == "1.0.1"),
        "{err}"
    );
    assert!(target.untouched());
}

#[test]
fn a_source_that_hashes_differently_or_is_missing_is_refused_before_writing() {
    let pair = Pair::new();
    let delta = pair.delta();
    // One flipped block deep in the source (what dm-verity would only see on reading it).
    let flipped = pair.fx.dir.path().join("flipped-usr.img");
    std::fs::copy(pair.source_usr(), &flipped).unwrap();
    let mut bytes = read(&flipped);
    bytes[7 * MIB as usize + 5] ^= 1;
    std::fs::write(&flipped, bytes).unwrap();
    let target = pair.fx.target("t", USR_SIZE);
    let err = install(
        &mut File::open(&delta.path).unwrap(),
        &pair,
        &policy(),
        &target,
        Some(&flipped),
    )
    .unwrap_err();
    assert!(
        matches!(&err, ApplyError::SourceRootMismatch { expected, .. } if *expected == pair.fx_root()),
        "{err}"
    );
    assert!(err.to_string().contains("flipped-usr.img"), "{err}");
    assert!(target.untouched());

    let err = install(
        &mut File::open(&delta.path).unwrap(),
        &pair,
        &policy(),
        &target,
        None,
    )
    .unwrap_err();
    assert!(
        matches!(&err, ApplyError::DeltaNeedsSource { source_version } if source_version == "1.0.0"),
        "{err}"
    );
    assert!(target.untouched());

    let short = pair.fx.dir.path().join("short-usr.img");
    std::fs::write(&short, vec![0u8; 4096]).unwrap();
    let err = install(
        &mut File::open(&delta.path).unwrap(),
        &pair,
        &policy(),
        &target,
        Some(&short),
    )
    .unwrap_err();
    assert!(matches!(&err, ApplyError::SourceTooSmall { .. }), "{err}");
    assert!(target.untouched());
}

impl Pair {
    fn fx_root(&self) -> wellcar_contract::RootHash {
        wellcar_contract::BuildManifest::read(&self.fx.build)
            .unwrap()
            .verity_root_hash
    }
}

/// Index of the first operation of `kind` in the delta.
fn first(payload: &Path, kind: &str) -> usize {
    let info = crate::PayloadInfo::read(&mut File::open(payload).unwrap()).unwrap();
    info.manifest
        .operations
        .iter()
        .position(|op| {
            matches!(
                (op, kind),
                (Operation::SourceCopy(_), "source_copy")
                    | (Operation::SourcePatch(_), "source_patch")
                    | (Operation::VerityTree(_), "verity_tree")
            )
        })
        .unwrap()
}

#[test]
fn wrong_hashes_of_patch_output_source_extents_and_patch_blob_are_caught_at_that_operation() {
    let pair = Pair::new();
    let delta = pair.delta();
    let payload = read(&delta.path);
    let patch = first(&delta.path, "source_patch");
    let copy = first(&delta.path, "source_copy");
    let tree = first(&delta.path, "verity_tree");
    let zero_hash = "0".repeat(64);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "verity tree bytes",
            resign(&payload, &pair.fx.key, |m| {
                m["operations"][tree]["dst_sha256"] = zero_hash.clone().into()
            }),
        ),
        (
            "verity tree uuid",
            resign(&payload, &pair.fx.key, |m| {
                m["operations"][tree]["uuid"] = "00000000-0000-0000-0000-000000000001".into()
            }),
        ),
        (
            "verity root",
            resign(&payload, &pair.fx.key, |m| {
                m["usr"]["verity"]["root_hash"] = zero_hash.clone().into()
            }),
        ),
        (
            "patch output",
            resign(&payload, &pair.fx.key, |m| {
                m["operations"][patch]["dst_sha256"] = zero_hash.clone().into()
            }),
        ),
        (
            "patch source",
            resign(&payload, &pair.fx.key, |m| {
                m["operations"][patch]["src_sha256"] = zero_hash.clone().into()
            }),
        ),
        (
            "copy source",
            resign(&payload, &pair.fx.key, |m| {
                m["operations"][copy]["src_sha256"] = zero_hash.clone().into()
            }),
        ),
        (
            "patch blob",
            resign(&payload, &pair.fx.key, |m| {
                m["operations"][patch]["data_sha256"] = zero_hash.clone().into()
            }),
        ),
    ];
    for (what, bytes) in cases {
        let target = pair.fx.target(what, USR_SIZE);
        let err = install(
            &mut &bytes[..],
            &pair,
            &policy(),
            &target,
            Some(&pair.source_usr()),
        )
        .unwrap_err();
        let ok = match what {
            "verity tree bytes" | "verity tree uuid" => {
                matches!(&err, ApplyError::VerityTree { operation, reason }
                    if *operation == tree && reason.contains("hash area has sha256"))
            }
            "verity root" => {
                matches!(&err, ApplyError::VerityTree { operation, reason }
                    if *operation == tree && reason.contains("dm-verity root"))
            }
            "patch output" => {
                matches!(err, ApplyError::PatchOutputMismatch { operation, .. } if operation == patch)
            }
            "patch source" => {
                matches!(err, ApplyError::SourceHashMismatch { operation, .. } if operation == patch)
            }
            "copy source" => {
                matches!(err, ApplyError::SourceHashMismatch { operation, .. } if operation == copy)
            }
            _ => {
                matches!(err, ApplyError::BlobHashMismatch { operation, .. } if operation == patch)
            }
        };
        assert!(ok, "{what}: {err}");
        assert!(target.not_installed(), "{what}");
    }
}

#[test]
fn an_extent_beyond_the_source_slot_a_source_op_in_a_full_payload_or_a_short_verity_tree_is_refused_before_writing(
) {
    let pair = Pair::new();
    let delta = pair.delta();
    let payload = read(&delta.path);
    let copy = first(&delta.path, "source_copy");
    let beyond = resign(&payload, &pair.fx.key, |m| {
        m["operations"][copy]["src_extents"][0]["offset"] = HASH_OFFSET.into()
    });
    let no_source = resign(&payload, &pair.fx.key, |m| {
        m.as_object_mut().unwrap().remove("source");
    });
    let tree = first(&delta.path, "verity_tree");
    let short_tree = resign(&payload, &pair.fx.key, |m| {
        let ops = m["operations"].as_array_mut().unwrap();
        let length = ops[tree]["dst_length"].as_u64().unwrap();
        ops[tree]["dst_length"] = (length - 4096).into();
        ops.insert(
            tree + 1,
            serde_json::json!({"type": "zero", "dst": "usr",
                "dst_offset": HASH_OFFSET + length - 4096, "dst_length": 4096}),
        );
    });
    for (what, bytes, at, needle) in [
        ("beyond", beyond, copy, "beyond the source slot"),
        ("no source", no_source, copy, "names no source"),
        ("short tree", short_tree, tree, "but the hash area of"),
    ] {
        let target = pair.fx.target(what, USR_SIZE);
        let err = install(
            &mut &bytes[..],
            &pair,
            &policy(),
            &target,
            Some(&pair.source_usr()),
        )
        .unwrap_err();
        assert!(
            matches!(&err, ApplyError::Format(FormatError::InvalidManifest { field, reason })
                if field.starts_with(&format!("operations[{at}]")) && reason.contains(needle)),
            "{what}: {err}"
        );
        assert!(target.untouched(), "{what}");
    }
}

#[test]
fn a_truncated_delta_installs_nothing_and_resumes_from_its_checkpoint() {
    let pair = Pair::new();
    let delta = pair.delta();
    let payload = read(&delta.path);
    // Cut inside the data: the error names where, nothing is installed.
    let target = pair.fx.target("cut", USR_SIZE);
    let cut = &payload[..payload.len() - 1000];
    let err = install(
        &mut &cut[..],
        &pair,
        &policy(),
        &target,
        Some(&pair.source_usr()),
    )
    .unwrap_err();
    assert!(matches!(err, ApplyError::Truncated { .. }), "{err}");
    assert!(target.not_installed());

    // An interrupted stream resumes from the checkpoint with the source verified again.
    let mut small = policy();
    small.sync_interval = 1024 * 1024;
    let target = pair.fx.target("resume", USR_SIZE);
    let mut file = File::open(&delta.path).unwrap();
    let head = PayloadHead::read(&mut file)
        .unwrap()
        .authenticate(&pair.fx.trusted())
        .unwrap();
    let mut installer =
        Installer::new_with_source(head, &small, target.open(), Some(pair.source())).unwrap();
    let mut saved = None;
    let mut body = CutReader {
        inner: file,
        left: (payload.len() as u64 - installer.checkpoint().payload_offset) / 2,
    };
    installer
        .write_from_with_progress(&mut body, &mut |c| saved = Some(c.clone()))
        .unwrap_err();
    drop(installer);
    let checkpoint = saved.expect("a checkpoint before the cut");
    assert!(checkpoint.next_operation > 0);
    let mut file = File::open(&delta.path).unwrap();
    let head = PayloadHead::read(&mut file)
        .unwrap()
        .authenticate(&pair.fx.trusted())
        .unwrap();
    // Resuming with a source that no longer verifies is refused.
    let other = pair.fx.dir.path().join("v2/usr.img");
    let err = Installer::resume_with_source(
        head.clone(),
        &small,
        target.open(),
        checkpoint.clone(),
        Some(pair.with_boot_files(SourceReader::open(&other).unwrap())),
    )
    .unwrap_err();
    assert!(
        matches!(err, ApplyError::SourceRootMismatch { .. }),
        "{err}"
    );
    let mut installer = Installer::resume_with_source(
        head,
        &small,
        target.open(),
        checkpoint.clone(),
        Some(pair.source()),
    )
    .unwrap();
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(checkpoint.payload_offset))
        .unwrap();
    installer.write_from(&mut file).unwrap();
    installer.finish().unwrap();
    assert_eq!(read(&target.usr), read(&pair.v2.join("usr.img")));
}

#[test]
fn a_delta_written_into_the_build_is_listed_in_its_manifest_and_one_elsewhere_is_not() {
    let pair = Pair::new();
    let read = || {
        wellcar_contract::BuildManifest::read(&pair.v2)
            .unwrap()
            .deltas
    };
    // Written outside the build directory: the manifest is untouched.
    pair.delta();
    assert_eq!(read(), Vec::new());
    // Written into the build directory (the CLI's default): listed under its file name.
    let options = CreateOptions {
        compression_level: 3,
        delta_from: Some(pair.fx.build.clone()),
        ..CreateOptions::default()
    };
    let summary = create_payload_with(
        &pair.v2,
        &pair.v2.join("manifest.json"),
        &[&pair.fx.key],
        &pair.v2,
        &options,
    )
    .unwrap();
    let listed = read();
    assert_eq!(
        listed,
        [wellcar_contract::DeltaArtifact {
            source_version: "1.0.0".into(),
            file: "wellcar_delta_from_1.0.0.bin".into(),
            size: summary.size,
            sha256: summary.sha256.to_string(),
        }]
    );
    assert_eq!(
        std::fs::metadata(pair.v2.join(&listed[0].file))
            .unwrap()
            .len(),
        listed[0].size
    );
    // Made again: replaced, not listed twice.
    create_payload_with(
        &pair.v2,
        &pair.v2.join("manifest.json"),
        &[&pair.fx.key],
        &pair.v2,
        &options,
    )
    .unwrap();
    assert_eq!(read().len(), 1);
}

#[test]
fn a_source_window_inside_a_disk_reads_only_its_slot() {
    let pair = Pair::new();
    let delta = pair.delta();
    let usr = read(&pair.source_usr());
    // A "disk": 1 MiB of other bytes, the slot, then more bytes past its end.
    let disk = pair.fx.dir.path().join("disk.img");
    let mut bytes = vec![0x5a; MIB as usize];
    bytes.extend_from_slice(&usr);
    bytes.extend_from_slice(&vec![0xa5; MIB as usize]);
    std::fs::write(&disk, &bytes).unwrap();
    let window = |base: u64, size: u64| {
        SourceReader::window(File::open(&disk).unwrap(), disk.clone(), base, size)
    };
    let head = PayloadHead::read(&mut File::open(&delta.path).unwrap())
        .unwrap()
        .authenticate(&pair.fx.trusted())
        .unwrap();
    let slot = head.manifest().source.clone().unwrap();
    pair.with_boot_files(window(MIB, usr.len() as u64))
        .verify(&slot)
        .unwrap();
    // Off by one block: another root. Cut short: too small, never reading past the window.
    let err = window(MIB + 4096, usr.len() as u64)
        .verify(&slot)
        .unwrap_err();
    assert!(
        matches!(err, ApplyError::SourceRootMismatch { .. }),
        "{err}"
    );
    let err = window(MIB, slot.data_len() - 4096)
        .verify(&slot)
        .unwrap_err();
    assert!(matches!(err, ApplyError::SourceTooSmall { .. }), "{err}");
    let mut out = Vec::new();
    let beyond = [crate::format::SourceExtent {
        offset: usr.len() as u64 - 4096,
        length: 8192,
    }];
    let err = window(MIB, usr.len() as u64)
        .read_extents(crate::format::Destination::Usr, &beyond, &mut out)
        .unwrap_err();
    assert!(matches!(err, ApplyError::SourceRead { .. }), "{err}");
    // Installing through the window gives v2 exactly.
    let target = pair.fx.target("t", USR_SIZE);
    let source = pair.with_boot_files(window(MIB, usr.len() as u64));
    install_from(
        &mut File::open(&delta.path).unwrap(),
        &pair,
        &policy(),
        &target,
        Some(source),
    )
    .unwrap();
    assert_eq!(read(&target.usr), read(&pair.v2.join("usr.img")));
}

#[test]
fn an_unchanged_kernel_and_initramfs_are_copied_from_the_source_checked_whole_first() {
    let pair = Pair::new();
    let delta = pair.delta();
    let head = PayloadHead::read(&mut File::open(&delta.path).unwrap())
        .unwrap()
        .authenticate(&pair.fx.trusted())
        .unwrap();
    let manifest = head.manifest();
    let slot = manifest.source.clone().unwrap();
    assert_eq!(slot.kernel.as_ref(), Some(&manifest.kernel));
    assert_eq!(slot.initramfs.as_ref(), Some(&manifest.initramfs));
    let from_files = manifest
        .operations
        .iter()
        .filter(|op| matches!(op, Operation::SourceCopy(c) if !c.src.is_usr()))
        .count();
    // One per 8 MiB chunk: the 300 KB kernel and the 5 MiB initramfs.
    assert_eq!(from_files, 2, "copies from kernel/initramfs");

    let v1 = wellcar_contract::BuildManifest::read(&pair.fx.build).unwrap();
    let (kernel, initramfs) = (
        pair.fx.build.join(&v1.kernel),
        pair.fx.build.join(&v1.initramfs),
    );
    let refuse = |source: SourceReader, what: &str| {
        let target = pair.fx.target(what, USR_SIZE);
        let mut payload = File::open(&delta.path).unwrap();
        let head = PayloadHead::read(&mut payload)
            .unwrap()
            .authenticate(&pair.fx.trusted())
            .unwrap();
        let err = Installer::new_with_source(head, &policy(), target.open(), Some(source))
            .map(|_| ())
            .unwrap_err();
        assert!(target.untouched(), "{what}: nothing written");
        err
    };
    // No kernel given: refused, naming it.
    let bare = SourceReader::open(&pair.source_usr()).unwrap();
    let err = refuse(bare, "bare");
    assert!(
        matches!(err, ApplyError::DeltaNeedsSourceFile { file: "kernel" }),
        "{err}"
    );
    // Another kernel (one flipped byte): refused before any extent is read.
    let other = pair.fx.dir.path().join("other-vmlinuz");
    let mut bytes = read(&kernel);
    bytes[1000] ^= 1;
    std::fs::write(&other, &bytes).unwrap();
    let source = SourceReader::open(&pair.source_usr())
        .unwrap()
        .with_boot_files(other.clone(), initramfs.clone());
    let err = refuse(source, "other");
    assert!(
        matches!(&err, ApplyError::SourceFileMismatch { file: "kernel", path, .. }
            if path.ends_with("other-vmlinuz")),
        "{err}"
    );
    // With the right ones the delta installs bit for bit: see the first test of this file.
}
