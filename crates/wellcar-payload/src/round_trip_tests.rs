//! End-to-end tests over real files: create, verify, apply, resume, and every bad input of
//! issue 6, each checking the error and the state of the target.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::process::Command;
use std::time::{Duration, Instant};

use ed25519_dalek::Signer;

use crate::apply::{
    apply, verify_payload, ApplyError, ApplyPolicy, Checkpoint, InstallReport, InstallTargets,
    Installer, UsrTarget,
};
use crate::format::{
    encode_signature_block, FormatError, Header, PayloadHead, SignatureEntry, VerifiedHead,
    HEADER_LEN,
};
use crate::keys::{new_signing_key, write_keypair, TrustedKeys};
use crate::test_fixture::*;
use wellcar_test_support::tools;

pub(crate) fn policy() -> ApplyPolicy {
    ApplyPolicy::new(BOARD, Some("1.0.0".into()))
}

/// Applies the payload file at `path` to `targets`, trusting `keys`, under [`policy`].
fn apply_file<T: UsrTarget>(
    path: &std::path::Path,
    keys: &TrustedKeys,
    targets: InstallTargets<T>,
) -> Result<InstallReport, ApplyError> {
    apply(&mut File::open(path).unwrap(), keys, &policy(), targets)
}

/// Opens the payload at `path` and reads its head, authenticated by `keys`; the file is left
/// where the data starts.
fn open_verified(path: &std::path::Path, keys: &TrustedKeys) -> (File, VerifiedHead) {
    let mut file = File::open(path).unwrap();
    let head = PayloadHead::read(&mut file)
        .unwrap()
        .authenticate(keys)
        .unwrap();
    (file, head)
}

/// A reader that yields at most `limit` bytes, then fails like a dropped connection.
pub(crate) struct CutReader<R> {
    pub(crate) inner: R,
    pub(crate) left: u64,
}

impl<R: Read> Read for CutReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection reset",
            ));
        }
        let n = (buf.len() as u64).min(self.left) as usize;
        let got = self.inner.read(&mut buf[..n])?;
        self.left -= got as u64;
        Ok(got)
    }
}

/// A reader that counts the bytes it delivers.
struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

fn flip_bit(path: &std::path::Path, offset: u64) {
    let mut bytes = read(path);
    bytes[offset as usize] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

/// Rewrites a payload's manifest with `edit` and signs it again with `key`.
pub(crate) fn resign(
    payload: &[u8],
    key: &crate::SigningKey,
    edit: impl FnOnce(&mut serde_json::Value),
) -> Vec<u8> {
    let head = PayloadHead::read(&mut &payload[..]).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&head.manifest_json().unwrap()).unwrap();
    edit(&mut manifest);
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let manifest =
        crate::format::encode_manifest_section(&manifest, head.header.manifest_zstd).unwrap();
    let header = Header {
        manifest_len: manifest.len() as u64,
        signature_block_len: 4 + 96,
        manifest_zstd: head.header.manifest_zstd,
    };
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(&manifest);
    let signature = key.sign(&out).to_bytes();
    out.extend_from_slice(&encode_signature_block(&[SignatureEntry {
        public_key: key.verifying_key().to_bytes(),
        signature,
    }]));
    out.extend_from_slice(&payload[head.data_start() as usize..]);
    out
}

#[test]
fn round_trip_is_bit_identical_and_veritysetup_accepts_it() {
    let fx = Fixture::new("1.2.3");
    let summary = fx.payload();
    assert_eq!(summary.path, fx.build.join("wellcar_update.bin"));
    let payload = read(&summary.path);
    assert_eq!(summary.size, payload.len() as u64);
    // Compressed data, and the holes cost nothing.
    assert!(
        summary.size < USR_SIZE / 2,
        "payload is {} bytes",
        summary.size
    );
    assert!(
        summary.usr_zero_bytes >= 10 * MIB,
        "zero bytes {}",
        summary.usr_zero_bytes
    );
    let sha_line = String::from_utf8(read(&summary.sha256_path)).unwrap();
    assert_eq!(
        sha_line,
        format!(
            "{}  wellcar_update.bin\n",
            crate::Sha256Digest::of(&payload)
        )
    );
    let out = tools::output(
        Command::new("sha256sum")
            .arg("-c")
            .arg(&summary.sha256_path)
            .current_dir(&fx.build),
    );
    assert!(
        out.status.success(),
        "sha256sum -c: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let report = verify_payload(&mut File::open(&summary.path).unwrap(), &fx.trusted()).unwrap();
    assert_eq!(report.version, "1.2.3");
    assert_eq!(report.payload_len, payload.len() as u64);

    // The target is larger than the image (a real partition may be) and holds an old slot.
    let target = fx.target("t", USR_SIZE + 2 * MIB);
    let report = apply_file(&summary.path, &fx.trusted(), target.open()).unwrap();
    assert_eq!(report.version, "1.2.3");
    let written = read(&target.usr);
    assert!(
        written[..USR_SIZE as usize] == fx.usr_image()[..],
        "usr region differs"
    );
    assert!(
        written[USR_SIZE as usize..].iter().all(|&b| b == 0xAA),
        "wrote past the image"
    );
    assert_eq!(read(&target.kernel), read(&fx.build.join("vmlinuz")));
    assert_eq!(
        read(&target.initramfs),
        read(&fx.build.join("initramfs.img"))
    );
    assert!(!crate::apply::partial_path(&target.kernel).exists());

    let out = tools::output(
        Command::new("veritysetup")
            .arg("verify")
            .arg(format!("--hash-offset={HASH_OFFSET}"))
            .arg(format!("--data-blocks={DATA_BLOCKS}"))
            .arg(&target.usr)
            .arg(&target.usr)
            .arg(report.verity_root_hash.to_string()),
    );
    assert!(
        out.status.success(),
        "veritysetup verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn flipped_bit_in_blob_is_caught_at_that_blob_and_nothing_is_installed() {
    let fx = Fixture::new("1.2.3");
    let summary = fx.payload();
    let head = PayloadHead::read(&mut File::open(&summary.path).unwrap()).unwrap();
    // Flip a bit in the third blob's data.
    let manifest = head.manifest_unverified().unwrap();
    let third = manifest
        .operations
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match op {
            crate::format::Operation::Replace(r) => Some((i, r.clone())),
            _ => None,
        })
        .nth(2)
        .unwrap();
    let blob_at = head.data_start() + third.1.data_offset;
    flip_bit(&summary.path, blob_at + 10);

    let err = verify_payload(&mut File::open(&summary.path).unwrap(), &fx.trusted()).unwrap_err();
    assert!(
        matches!(err, ApplyError::BlobHashMismatch { operation, offset, .. } if operation == third.0 && offset == blob_at),
        "{err}"
    );
    let target = fx.target("t", USR_SIZE);
    let err = apply_file(&summary.path, &fx.trusted(), target.open()).unwrap_err();
    assert!(matches!(err, ApplyError::BlobHashMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("operation {}", third.0)),
        "{err}"
    );
    assert!(target.not_installed());
}

#[test]
fn flipped_bits_in_header_manifest_and_signature_are_refused_before_writing() {
    let fx = Fixture::new("1.2.3");
    let summary = fx.payload();
    let pristine = read(&summary.path);
    let head = PayloadHead::read(&mut &pristine[..]).unwrap();
    let manifest_at = HEADER_LEN as u64 + 40;
    let signature_at = HEADER_LEN as u64 + head.header.manifest_len + 4 + 32 + 5;
    let cases: [(u64, &str); 5] = [
        (0, "magic"),
        (8, "format version"),
        (17, "manifest length"),
        (manifest_at, "manifest"),
        (signature_at, "signature"),
    ];
    for (offset, what) in cases {
        std::fs::write(&summary.path, &pristine).unwrap();
        flip_bit(&summary.path, offset);
        let target = fx.target(what, USR_SIZE);
        let err = apply_file(&summary.path, &fx.trusted(), target.open()).unwrap_err();
        let ok = match what {
            "magic" => matches!(err, ApplyError::Format(FormatError::BadMagic { .. })),
            "format version" => matches!(
                err,
                ApplyError::Format(FormatError::UnsupportedFormat { .. })
            ),
            // The length grows by 4096: the signature block is then read from the wrong place.
            "manifest length" => matches!(
                err,
                ApplyError::Format(
                    FormatError::InvalidHeader { .. }
                        | FormatError::InvalidSignatureBlock { .. }
                        | FormatError::BadSignature { .. }
                )
            ),
            _ => matches!(err, ApplyError::Format(FormatError::BadSignature { .. })),
        };
        assert!(ok, "{what}: {err}");
        assert!(target.untouched(), "{what}: target was written");
        assert!(verify_payload(&mut File::open(&summary.path).unwrap(), &fx.trusted()).is_err());
    }
}

#[test]
fn unknown_key_is_refused_and_named() {
    let fx = Fixture::new("1.2.3");
    let summary = fx.payload();
    let stranger = new_signing_key().unwrap();
    let target = fx.target("t", USR_SIZE);
    let err = apply_file(&summary.path, &trusted(&[&stranger]), target.open()).unwrap_err();
    assert!(
        matches!(err, ApplyError::Format(FormatError::UntrustedSigner { .. })),
        "{err}"
    );
    let fingerprint = crate::format::key_fingerprint(fx.key.verifying_key().as_bytes());
    assert!(err.to_string().contains(&fingerprint), "{err}");
    assert!(target.untouched());
}

#[test]
fn key_rotation_any_trusted_key_verifies() {
    let fx = Fixture::new("1.2.3");
    let new_key = new_signing_key().unwrap();
    let both = fx.payload_signed_by(&[&fx.key, &new_key]);
    for keys in [&[&fx.key][..], &[&new_key][..], &[&new_key, &fx.key][..]] {
        let report = verify_payload(&mut File::open(&both.path).unwrap(), &trusted(keys)).unwrap();
        assert_eq!(report.version, "1.2.3");
    }
    // Signed by the new key only; the image trusts a directory with the old and new keys.
    let only_new = fx.payload_signed_by(&[&new_key]);
    let keys_dir = fx.dir.path().join("update-payload-keys");
    std::fs::create_dir(&keys_dir).unwrap();
    write_keypair(&fx.key, &keys_dir.join("old"), false).unwrap();
    write_keypair(&new_key, &keys_dir.join("new"), false).unwrap();
    let dir_keys = TrustedKeys::from_dir(&keys_dir).unwrap();
    let report = verify_payload(&mut File::open(&only_new.path).unwrap(), &dir_keys).unwrap();
    assert!(report.signer.starts_with("new "), "{}", report.signer);
    // Old key alone no longer verifies it.
    let err = verify_payload(&mut File::open(&only_new.path).unwrap(), &fx.trusted()).unwrap_err();
    assert!(
        matches!(err, ApplyError::Format(FormatError::UntrustedSigner { .. })),
        "{err}"
    );
}

#[test]
fn truncated_payloads_report_where_and_install_nothing() {
    let fx = Fixture::new("1.2.3");
    let summary = fx.payload();
    let pristine = read(&summary.path);
    let head = PayloadHead::read(&mut &pristine[..]).unwrap();
    for cut in [
        10,
        HEADER_LEN as u64 + 5,
        head.data_start() + 1000,
        pristine.len() as u64 - 1,
    ] {
        let target = fx.target(&format!("cut{cut}"), USR_SIZE);
        let mut reader = &pristine[..cut as usize];
        let err = apply(&mut reader, &fx.trusted(), &policy(), target.open()).unwrap_err();
        let ok = match err {
            ApplyError::Format(FormatError::Truncated { offset, .. }) => {
                offset == cut && cut < head.data_start()
            }
            ApplyError::Truncated { offset, .. } => offset == cut,
            _ => false,
        };
        assert!(ok, "cut at {cut}: {err}");
        assert!(target.not_installed(), "cut at {cut}");
        if cut < head.data_start() {
            assert!(target.untouched());
        }
    }
    // Trailing junk is refused too.
    let mut longer = pristine.clone();
    longer.push(0);
    let target = fx.target("long", USR_SIZE);
    let err = apply(&mut &longer[..], &fx.trusted(), &policy(), target.open()).unwrap_err();
    assert!(matches!(err, ApplyError::TrailingData { .. }), "{err}");
    assert!(target.not_installed());
}

#[test]
fn wrong_board_old_version_and_small_target_are_refused_before_writing() {
    let fx = Fixture::new("1.2.3");
    let summary = fx.payload();
    let open = || File::open(&summary.path).unwrap();
    let cases: Vec<(&str, ApplyPolicy, u64)> = vec![
        (
            "board",
            ApplyPolicy::new("arm64-usr", Some("1.0.0".into())),
            USR_SIZE,
        ),
        (
            "same version",
            ApplyPolicy::new(BOARD, Some("1.2.3".into())),
            USR_SIZE,
        ),
        (
            "older",
            ApplyPolicy::new(BOARD, Some("2.0.0".into())),
            USR_SIZE,
        ),
        ("small", policy(), USR_SIZE - 4096),
        (
            "running version not an OS version",
            ApplyPolicy::new(BOARD, Some("1.2".into())),
            USR_SIZE,
        ),
    ];
    for (what, policy, size) in cases {
        let target = fx.target(what, size);
        let err = apply(&mut open(), &fx.trusted(), &policy, target.open()).unwrap_err();
        let ok = match what {
            "board" => matches!(err, ApplyError::WrongBoard { .. }),
            "running version not an OS version" => matches!(
                &err,
                ApplyError::InvalidCurrentVersion { version, .. } if version == "1.2"
            ),
            "small" => matches!(err, ApplyError::TargetTooSmall { size: s, .. } if s == size),
            _ => matches!(err, ApplyError::NotNewer { .. }),
        };
        assert!(ok, "{what}: {err}");
        assert!(target.untouched(), "{what}");
    }
    // Forcing installs the same version.
    let mut forced = ApplyPolicy::new(BOARD, Some("1.2.3".into()));
    forced.force = true;
    let target = fx.target("forced", USR_SIZE);
    apply(&mut open(), &fx.trusted(), &forced, target.open()).unwrap();
    assert_eq!(read(&target.usr), fx.usr_image());

    // Minimum source version, signed into the manifest.
    let resigned = resign(&read(&summary.path), &fx.key, |m| {
        m["min_source_version"] = "1.1.0".into()
    });
    let target = fx.target("min", USR_SIZE);
    let err = apply(&mut &resigned[..], &fx.trusted(), &policy(), target.open()).unwrap_err();
    assert!(matches!(err, ApplyError::SourceTooOld { .. }), "{err}");
    assert!(target.untouched());
}

#[test]
fn future_operation_type_is_rejected_cleanly_before_writing() {
    let fx = Fixture::new("1.2.3");
    let summary = fx.payload();
    let resigned = resign(&read(&summary.path), &fx.key, |m| {
        m["operations"][1] = serde_json::json!({
            "type": "source_bsdiff", "dst": "usr", "src_offset": 0, "dst_offset": 0, "dst_length": 4096
        });
    });
    let target = fx.target("t", USR_SIZE);
    let err = apply(&mut &resigned[..], &fx.trusted(), &policy(), target.open()).unwrap_err();
    assert!(
        matches!(&err, ApplyError::Format(FormatError::UnsupportedOperation { index: 1, kind }) if kind == "source_bsdiff"),
        "{err}"
    );
    assert!(target.untouched());
}

#[test]
fn resume_after_cuts_continues_from_the_checkpoint_without_rereading() {
    let fx = Fixture::new("1.2.3");
    let summary = fx.payload();
    let total = summary.size;
    let mut policy = policy();
    policy.sync_interval = 1; // a durable checkpoint after every operation
    let head_len = PayloadHead::read(&mut File::open(&summary.path).unwrap())
        .unwrap()
        .data_start();
    let state = fx.dir.path().join("checkpoint.json");
    let target = fx.target("t", USR_SIZE);

    // Cut the stream at several points; after each cut, "restart the process": drop the
    // installer, reload the checkpoint, re-read the head, fetch the rest from the offset.
    let cuts = [head_len + 100, total / 3, total / 2, total - 5000];
    let mut start = None::<Checkpoint>;
    let mut downloaded = 0u64;
    for (n, cut) in cuts.iter().enumerate() {
        let (mut file, head) = open_verified(&summary.path, &fx.trusted());
        let mut installer = match &start {
            None => Installer::new(head, &policy, target.open()).unwrap(),
            Some(cp) => Installer::resume(head, &policy, target.open(), cp.clone()).unwrap(),
        };
        installer.checkpoint().save(&state).unwrap();
        let from = installer.checkpoint().payload_offset;
        file.seek(SeekFrom::Start(from)).unwrap();
        let mut body = CutReader {
            inner: CountingReader {
                inner: file,
                count: 0,
            },
            left: cut - from,
        };
        let err = installer
            .write_from_with_progress(&mut body, &mut |cp| cp.save(&state).unwrap())
            .unwrap_err();
        assert!(matches!(err, ApplyError::Read { .. }), "cut {n}: {err}");
        downloaded += body.inner.count;
        let saved = Checkpoint::load(&state).unwrap();
        assert_eq!(&saved, installer.checkpoint(), "cut {n}");
        assert!(saved.payload_offset <= *cut, "checkpoint past the cut");
        assert!(
            saved.payload_offset > from || *cut - from < 4 * MIB,
            "no progress kept at cut {n}"
        );
        assert!(target.not_installed());
        drop(installer);
        start = Some(saved);
    }
    let saved = start.unwrap();
    assert!(
        saved.payload_offset > total / 2,
        "last checkpoint {}",
        saved.payload_offset
    );
    let (mut file, head) = open_verified(&summary.path, &fx.trusted());
    let mut installer = Installer::resume(head, &policy, target.open(), saved.clone()).unwrap();
    file.seek(SeekFrom::Start(saved.payload_offset)).unwrap();
    let mut rest = CountingReader {
        inner: file,
        count: 0,
    };
    installer.write_from(&mut rest).unwrap();
    assert_eq!(
        rest.count,
        total - saved.payload_offset,
        "resume re-read earlier bytes"
    );
    downloaded += rest.count;
    // Data bytes were fetched once, except the partial blobs in flight at each cut.
    assert!(
        downloaded < total - head_len + cuts.len() as u64 * 4 * MIB,
        "downloaded {downloaded} of {total}"
    );
    installer.finish().unwrap();
    assert_eq!(read(&target.usr), fx.usr_image());
    assert_eq!(read(&target.kernel), read(&fx.build.join("vmlinuz")));
    assert_eq!(
        read(&target.initramfs),
        read(&fx.build.join("initramfs.img"))
    );
}

#[test]
fn in_process_resume_and_guarded_checkpoints() {
    let fx = Fixture::new("1.2.3");
    let summary = fx.payload();
    let target = fx.target("t", USR_SIZE);
    let (_, head) = open_verified(&summary.path, &fx.trusted());
    let mut installer = Installer::new(head.clone(), &policy(), target.open()).unwrap();
    // Default sync interval: the error path still syncs and keeps completed operations.
    let cut = summary.size / 2;
    let from = installer.checkpoint().payload_offset;
    let mut body = CutReader {
        inner: File::open(&summary.path).unwrap(),
        left: cut,
    };
    body.inner.seek(SeekFrom::Start(from)).unwrap();
    body.left = cut - from;
    assert!(installer.write_from(&mut body).is_err());
    let cp = installer.checkpoint().clone();
    assert!(cp.payload_offset > from);
    assert!(!installer.is_complete());
    let mut rest = File::open(&summary.path).unwrap();
    rest.seek(SeekFrom::Start(cp.payload_offset)).unwrap();
    installer.write_from(&mut rest).unwrap();
    installer.finish().unwrap();
    assert_eq!(read(&target.usr), fx.usr_image());

    // A checkpoint for another payload, or with a forged offset, is refused.
    let other = Fixture::new("1.2.4");
    let other_summary = other.payload_signed_by(&[&fx.key]);
    let (_, other_head) = open_verified(&other_summary.path, &fx.trusted());
    let err = Installer::resume(other_head, &policy(), target.open(), cp.clone()).unwrap_err();
    assert!(
        matches!(err, ApplyError::CheckpointMismatch { .. }),
        "{err}"
    );
    let mut forged = cp;
    forged.payload_offset += 1;
    let err = Installer::resume(head, &policy(), target.open(), forged).unwrap_err();
    assert!(
        matches!(err, ApplyError::CheckpointMismatch { .. }),
        "{err}"
    );
}

#[test]
fn corrupted_target_fails_final_verification() {
    let fx = Fixture::new("1.2.3");
    let summary = fx.payload();
    let target = fx.target("t", USR_SIZE);
    let (mut file, head) = open_verified(&summary.path, &fx.trusted());
    let mut installer = Installer::new(head, &policy(), target.open()).unwrap();
    installer.write_from(&mut file).unwrap();
    // Something else scribbles on the slot between write and finish.
    let usr = std::fs::OpenOptions::new()
        .write(true)
        .open(&target.usr)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&usr, b"X", 5 * MIB).unwrap();
    let err = installer.finish().unwrap_err();
    assert!(
        matches!(err, ApplyError::ImageMismatch { image: "usr", .. }),
        "{err}"
    );
    assert!(target.not_installed());
}

#[test]
fn create_refuses_a_build_whose_artifacts_do_not_match_its_manifest() {
    let fx = Fixture::new("1.2.3");
    let kernel = fx.build.join("vmlinuz");
    let mut bytes = read(&kernel);
    bytes[7] ^= 1;
    std::fs::write(&kernel, bytes).unwrap();
    let err = crate::create_payload(&fx.build, &fx.manifest, &fx.key, &fx.build).unwrap_err();
    assert!(
        matches!(&err, crate::CreateError::ArtifactMismatch { what: "sha256", path, .. } if path == &kernel),
        "{err}"
    );
    assert!(!fx.build.join("wellcar_update.bin").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&fx.build)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Environment variable that turns [`sigkill_child`] into the apply process of
/// [`resume_after_sigkill_at_several_points`]; its value is the work directory.
const SIGKILL_CHILD_ENV: &str = "WELLCAR_PAYLOAD_SIGKILL_CHILD";

/// Reads slowly, so the parent can kill the process mid-stream.
struct SlowReader<R>(R);

impl<R: Read> Read for SlowReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        std::thread::sleep(std::time::Duration::from_millis(15));
        let n = buf.len().min(64 * 1024);
        self.0.read(&mut buf[..n])
    }
}

/// The child half of the SIGKILL test: applies `work/payload.bin` to `work/t`, resuming from
/// `work/checkpoint.json` when it exists, and records where its download started. Does
/// nothing when run normally.
#[test]
#[ignore = "helper process of resume_after_sigkill_at_several_points"]
fn sigkill_child() {
    let Some(work) = std::env::var_os(SIGKILL_CHILD_ENV).map(std::path::PathBuf::from) else {
        return;
    };
    let key = crate::load_signing_key(&work.join("update-key")).unwrap();
    let target = TargetPaths {
        usr: work.join("t/usr-b"),
        kernel: work.join("t/esp/vmlinuz-b"),
        initramfs: work.join("t/esp/initramfs-b.img"),
    };
    let mut policy = policy();
    policy.sync_interval = 1;
    let state = work.join("checkpoint.json");
    let (mut file, head) = open_verified(&work.join("payload.bin"), &trusted(&[&key]));
    let mut installer = if state.exists() {
        Installer::resume(
            head,
            &policy,
            target.open(),
            Checkpoint::load(&state).unwrap(),
        )
        .unwrap()
    } else {
        Installer::new(head, &policy, target.open()).unwrap()
    };
    let from = installer.checkpoint().payload_offset;
    std::fs::write(work.join(format!("started-at-{from}")), b"").unwrap();
    file.seek(SeekFrom::Start(from)).unwrap();
    installer
        .write_from_with_progress(&mut SlowReader(file), &mut |cp| cp.save(&state).unwrap())
        .unwrap();
    installer.finish().unwrap();
    std::fs::write(work.join("finished"), b"").unwrap();
}

#[test]
fn resume_after_sigkill_at_several_points() {
    let fx = Fixture::new("1.2.3");
    let summary = fx.payload();
    let work = fx.dir.path().join("sigkill");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::copy(&summary.path, work.join("payload.bin")).unwrap();
    write_keypair(&fx.key, &work.join("update-key"), false).unwrap();
    let target = fx.target("sigkill/t", USR_SIZE);
    let state = work.join("checkpoint.json");
    let operations = PayloadHead::read(&mut File::open(&summary.path).unwrap())
        .unwrap()
        .manifest_unverified()
        .unwrap()
        .operations
        .len();
    assert!(operations >= 6, "fixture has only {operations} operations");

    let spawn = || {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "round_trip_tests::sigkill_child",
                "--ignored",
                "--test-threads=1",
            ])
            .env(SIGKILL_CHILD_ENV, &work)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut offsets = Vec::new();
    for kill_after in [2, operations / 2, operations - 2] {
        let mut child = spawn();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let done = Checkpoint::load(&state)
                .map(|cp| cp.next_operation)
                .unwrap_or(0);
            if done >= kill_after {
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "child exited before being killed"
            );
            assert!(Instant::now() < deadline, "child made no progress");
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(target.not_installed());
        offsets.push(Checkpoint::load(&state).unwrap().payload_offset);
    }
    let status = spawn().wait().unwrap();
    assert!(
        status.success() && work.join("finished").exists(),
        "final resume failed"
    );
    // Every restart began its download at the previous kill's checkpoint, never at the start.
    let data_start = PayloadHead::read(&mut File::open(&summary.path).unwrap())
        .unwrap()
        .data_start();
    let mut starts: Vec<u64> = std::fs::read_dir(&work)
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_prefix("started-at-")?
                .parse()
                .ok()
        })
        .collect();
    starts.sort_unstable();
    let mut expected: Vec<u64> = std::iter::once(data_start)
        .chain(offsets.iter().copied())
        .collect();
    expected.dedup();
    assert_eq!(starts, expected);
    assert!(offsets.iter().all(|&o| o > data_start));
    assert_eq!(read(&target.usr), fx.usr_image());
    assert_eq!(read(&target.kernel), read(&fx.build.join("vmlinuz")));
    assert_eq!(
        read(&target.initramfs),
        read(&fx.build.join("initramfs.img"))
    );
}

/// Detaches a loop device when dropped, even if the test panics.
struct LoopDevice(std::path::PathBuf);

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// Applies to a real block device (a loop device over a file full of old data): capacity
/// comes from the device, zero runs use the kernel's zero-out. Skipped, with a message, where
/// the kernel refuses a loop device (not root, no /dev/loop-control); a missing `losetup`
/// fails, naming its package.
#[test]
fn apply_to_a_loop_block_device() {
    let fx = Fixture::new("1.2.3");
    let summary = fx.payload();
    let target = fx.target("loop", USR_SIZE + MIB);
    let attached = tools::output(
        Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&target.usr),
    );
    if !attached.status.success() {
        eprintln!(
            "cannot attach a loop device here ({}); skipping the block device test",
            String::from_utf8_lossy(&attached.stderr).trim()
        );
        return;
    }
    let device = LoopDevice(String::from_utf8_lossy(&attached.stdout).trim().into());
    let partition = crate::UsrPartition::open(&device.0).unwrap();
    let targets = crate::InstallTargets {
        usr: partition,
        kernel: target.kernel.clone(),
        initramfs: target.initramfs.clone(),
    };
    apply_file(&summary.path, &fx.trusted(), targets).unwrap();
    let mut on_device = vec![0u8; USR_SIZE as usize];
    File::open(&device.0)
        .unwrap()
        .read_exact(&mut on_device)
        .unwrap();
    assert!(on_device == fx.usr_image(), "device content differs");
    drop(device);
    let backing = read(&target.usr);
    assert!(backing[..USR_SIZE as usize] == fx.usr_image()[..]);
    assert!(backing[USR_SIZE as usize..].iter().all(|&b| b == 0xAA));

    // A device smaller than the image is refused before anything is written.
    let small = fx.target("small-loop", USR_SIZE - MIB);
    let out = tools::run(
        Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&small.usr),
    );
    let device = LoopDevice(String::from_utf8_lossy(&out.stdout).trim().into());
    let targets = crate::InstallTargets {
        usr: crate::UsrPartition::open(&device.0).unwrap(),
        kernel: small.kernel.clone(),
        initramfs: small.initramfs.clone(),
    };
    let err = apply_file(&summary.path, &fx.trusted(), targets).unwrap_err();
    assert!(
        matches!(err, ApplyError::TargetTooSmall { size, .. } if size == USR_SIZE - MIB),
        "{err}"
    );
    drop(device);
    assert!(small.untouched());
}

#[test]
fn a_build_or_minimum_version_that_is_not_an_os_version_makes_no_payload() {
    use crate::create::{create_payload_with, CreateOptions};
    let options = CreateOptions {
        compression_level: 3,
        ..CreateOptions::default()
    };
    let fx = Fixture::new("1.2");
    let out = fx.dir.path().join("bad-version.bin");
    let err = create_payload_with(&fx.build, &fx.manifest, &[&fx.key], &out, &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("field version") && err.contains("\"1.2\""),
        "{err}"
    );
    assert!(!out.exists(), "nothing written");

    let fx = Fixture::new("1.2.3");
    let out = fx.dir.path().join("bad-min.bin");
    let bad_min = CreateOptions {
        min_source_version: Some("v1.0.0".into()),
        ..options
    };
    let err = create_payload_with(&fx.build, &fx.manifest, &[&fx.key], &out, &bad_min)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("min_source_version: ") && err.contains("\"v1.0.0\""),
        "{err}"
    );
    assert!(!out.exists(), "nothing written");
}
