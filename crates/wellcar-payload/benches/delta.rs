//! Delta benchmark (`cargo bench -p wellcar-payload --bench delta`): a delta for a one-binary
//! change against the full payload, `zstd --patch-from` and `bsdiff` of the same pair of
//! images, and delta apply time against full apply time, all measured in one run.
//!
//! Inputs: two EROFS images, `WELLCAR_DELTA_OLD` and `WELLCAR_DELTA_NEW` (e.g. `mkfs.erofs` with
//! the builder's options, [`MKFS_EROFS_OPTIONS`], of a real /usr before and after one binary
//! changed). Without them it makes both from `/usr/bin` (the new one with `bash` changed: 64 bytes flipped and 1 KiB inserted
//! in the middle). `WELLCAR_BENCH_LEVEL` (default 19) is the zstd level of payloads and of
//! `zstd --patch-from`. Each image is padded to whole MiB and verity-formatted after its data
//! (not the 1 GiB slot geometry, to keep the run short; the holes cost nothing either way).
//! Apply times are measured before the slow whole-image `bsdiff`, and printed as soon as known.
//!
//! Kernel and initramfs: `WELLCAR_DELTA_KERNEL` and `WELLCAR_DELTA_INITRAMFS` for both builds,
//! unless `WELLCAR_DELTA_OLD_KERNEL` / `WELLCAR_DELTA_OLD_INITRAMFS` give the old build its own
//! (a kernel update: a changed kernel is sent whole). Defaults: `/usr/bin/bash` and
//! `/usr/bin/ls` as small stand-ins;
//! unchanged, a delta copies both from the source slot, so their size shows only in the full
//! payload).
//!
//! The breakdown line shows where the delta's bytes go (head, /usr data, hash area, kernel and
//! initramfs) and its operations, including how many patches chose the bsdiff codec.
//!
//! `WELLCAR_DELTA_SKIP_WHOLE_IMAGE=1` stops after the delta and apply numbers, without the
//! minutes-long whole-image `zstd --patch-from` and `bsdiff` (e.g. for a kernel update, where
//! the goal is only to report the size).
//!
//! Needs `mkfs.erofs`, `veritysetup`, `zstd`, `bsdiff`, `sha256sum`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use wellcar_payload::format::{Destination, Operation, PatchCodec};
use wellcar_payload::{
    create_payload_with, ApplyPolicy, CreateOptions, InstallTargets, Installer, PayloadHead,
    SourceReader, TrustedKeys, UsrPartition,
};

/// `mkfs.erofs` options of `wellcar-image/src/usr_image.rs` (timestamp and UUID fixed there
/// from `SOURCE_DATE_EPOCH`; any fixed values give the same layout).
const MKFS_EROFS_OPTIONS: &[&str] = &[
    "--quiet",
    "-zlz4hc,4",
    "-C65536",
    "-T1700000000",
    "-U5d8f4c59-2a4d-5b2e-9c1a-6c7f00000018",
];

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("skipping: run with `cargo bench -p wellcar-payload --bench delta`");
        return;
    }
    let level: i32 = std::env::var("WELLCAR_BENCH_LEVEL")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(19);
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let (old_fs, new_fs) = match (
        std::env::var_os("WELLCAR_DELTA_OLD"),
        std::env::var_os("WELLCAR_DELTA_NEW"),
    ) {
        (Some(old), Some(new)) => (PathBuf::from(old), PathBuf::from(new)),
        _ => synthetic_pair(dir),
    };
    let old = make_build(&dir.join("v1"), &old_fs, "1.0.0", "WELLCAR_DELTA_OLD_");
    let new = make_build(&dir.join("v2"), &new_fs, "1.1.0", "WELLCAR_DELTA_");
    let key = wellcar_payload::keys::new_signing_key().unwrap();
    wellcar_payload::keys::write_keypair(&key, &dir.join("update-key"), false).unwrap();
    let trusted = TrustedKeys::from_paths(&[dir.join("update-key.pub")]).unwrap();

    let options = CreateOptions {
        compression_level: level,
        ..CreateOptions::default()
    };
    eprintln!("full payload (zstd {level}) ...");
    let t = Instant::now();
    let full = create_payload_with(
        &new,
        &new.join("manifest.json"),
        &[&key],
        &dir.join("full.bin"),
        &options,
    )
    .unwrap();
    let full_create = t.elapsed().as_secs_f64();
    eprintln!("delta payload ...");
    let t = Instant::now();
    let delta_options = CreateOptions {
        delta_from: Some(old.clone()),
        ..options.clone()
    };
    let delta = create_payload_with(
        &new,
        &new.join("manifest.json"),
        &[&key],
        &dir.join("delta.bin"),
        &delta_options,
    )
    .unwrap();
    let delta_create = t.elapsed().as_secs_f64();
    let breakdown = delta_breakdown(&delta.path, &trusted);
    eprintln!("{breakdown}");

    let mut full_runs = Vec::new();
    let mut delta_runs = Vec::new();
    for round in 0..2 {
        eprintln!("apply full vs delta, round {} ...", round + 1);
        full_runs.push(apply(dir, &full.path, &trusted, None));
        delta_runs.push(apply(
            dir,
            &delta.path,
            &trusted,
            Some(&old.join("usr.img")),
        ));
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (full_apply, delta_apply) = (best(&full_runs), best(&delta_runs));
    eprintln!(
        "full {} B, delta {} B (delta / full {:.4}); apply full {full_apply:.2} s, delta {delta_apply:.2} s",
        full.size,
        delta.size,
        delta.size as f64 / full.size as f64
    );
    if std::env::var_os("WELLCAR_DELTA_SKIP_WHOLE_IMAGE").is_some() {
        println!(
            "full payload {} B, delta {} B: delta / full {:.4}; apply delta / full time {:.2}",
            full.size,
            delta.size,
            delta.size as f64 / full.size as f64,
            delta_apply / full_apply
        );
        println!("{breakdown}");
        return;
    }
    eprintln!("zstd --patch-from and bsdiff of the whole images ...");
    let patch_from = dir.join("patch-from.zst");
    let t = Instant::now();
    run(Command::new("zstd")
        .args(["-q", "-f", &format!("-{level}"), "--long=31"])
        .arg(format!("--patch-from={}", old_fs.display()))
        .arg(&new_fs)
        .arg("-o")
        .arg(&patch_from));
    let patch_from_secs = t.elapsed().as_secs_f64();
    let patch_from_size = std::fs::metadata(&patch_from).unwrap().len();
    eprintln!(
        "zstd --patch-from {patch_from_size} B ({patch_from_secs:.1} s); delta / patch-from {:.3}",
        delta.size as f64 / patch_from_size as f64
    );
    let bsdiff_out = dir.join("bsdiff.patch");
    let t = Instant::now();
    run(Command::new("bsdiff")
        .arg(&old_fs)
        .arg(&new_fs)
        .arg(&bsdiff_out));
    let bsdiff_secs = t.elapsed().as_secs_f64();
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let kernel_initramfs = size(&new.join("vmlinuz")) + size(&new.join("initramfs.img"));
    println!(
        "wellcar-payload delta benchmark: {} -> {}",
        old_fs.display(),
        new_fs.display()
    );
    println!(
        "EROFS images          {:>9.1} MiB -> {:.1} MiB",
        mib(size(&old_fs)),
        mib(size(&new_fs))
    );
    println!(
        "full payload          {:>9.2} MiB  (create {full_create:.1} s)",
        mib(full.size)
    );
    println!("delta payload         {:>9.2} MiB  (create {delta_create:.1} s; kernel+initramfs stand-ins {:.2} MiB inside)", mib(delta.size), mib(kernel_initramfs));
    println!(
        "zstd --patch-from     {:>9.2} MiB  ({patch_from_secs:.1} s)",
        mib(size(&patch_from))
    );
    println!(
        "bsdiff                {:>9.2} MiB  ({bsdiff_secs:.1} s)",
        mib(size(&bsdiff_out))
    );
    println!(
        "delta / full          {:.4}  (goal <= 0.05)",
        delta.size as f64 / full.size as f64
    );
    println!(
        "delta / patch-from    {:.3}  (goal < 1)",
        delta.size as f64 / size(&patch_from) as f64
    );
    println!(
        "delta / bsdiff        {:.3}  (goal < 1)",
        delta.size as f64 / size(&bsdiff_out) as f64
    );
    println!("{breakdown}");
    println!("apply full {full_apply:.2} s, delta {delta_apply:.2} s (delta includes verifying the source); delta / full time {:.2} (goal <= 1)", delta_apply / full_apply);
}

/// Where a delta's bytes go: head (manifest + signatures), blobs for the /usr data region and
/// for the dm-verity hash area after it, kernel + initramfs; and the operation counts.
fn delta_breakdown(payload: &Path, trusted: &TrustedKeys) -> String {
    let mut f = std::fs::File::open(payload).unwrap();
    let head = PayloadHead::read(&mut f)
        .unwrap()
        .authenticate(trusted)
        .unwrap();
    let manifest = head.manifest();
    let hash_offset = manifest.usr.verity.hash_offset;
    let (mut data, mut hash_area, mut files) = (0u64, 0u64, 0u64);
    let (mut copies, mut patches, mut replaces, mut trees) = (0usize, 0usize, 0usize, 0usize);
    let mut bsdiff_patches = 0usize;
    let (mut copied, mut patched) = (0u64, 0u64);
    for op in &manifest.operations {
        let (dst, dst_offset, blob) = match op {
            Operation::Replace(r) => {
                replaces += 1;
                (r.dst, r.dst_offset, r.data_length)
            }
            Operation::SourcePatch(p) => {
                patches += 1;
                bsdiff_patches += usize::from(p.codec == PatchCodec::Bsdiff);
                patched += p.dst_length;
                (p.dst, p.dst_offset, p.data_length)
            }
            Operation::SourceCopy(c) => {
                copies += 1;
                copied += c.dst_length;
                continue;
            }
            Operation::VerityTree(_) => {
                trees += 1;
                continue;
            }
            _ => continue,
        };
        match dst {
            Destination::Usr if dst_offset >= hash_offset => hash_area += blob,
            Destination::Usr => data += blob,
            _ => files += blob,
        }
    }
    let kib = |b: u64| b as f64 / 1024.0;
    format!(
        "delta bytes: head (manifest{} + signatures) {:.1} KiB, /usr data blobs {:.1} KiB, \
         verity hash area blobs {:.1} KiB, kernel + initramfs {:.1} KiB; \
         {copies} source_copy ({:.1} MiB), {patches} source_patch ({:.1} MiB, {bsdiff_patches} of them bsdiff), {replaces} replace, \
         {trees} verity_tree (hash area rebuilt on the host)",
        if head.head().header.manifest_zstd {
            ", zstd"
        } else {
            ""
        },
        kib(head.data_start()),
        kib(data),
        kib(hash_area),
        kib(files),
        copied as f64 / 1048576.0,
        patched as f64 / 1048576.0,
    )
}

/// Applies `payload` to a fresh target; returns seconds (head to verified finish).
fn apply(dir: &Path, payload: &Path, trusted: &TrustedKeys, source: Option<&Path>) -> f64 {
    let target = dir.join("target");
    let _ = std::fs::remove_dir_all(&target);
    std::fs::create_dir_all(&target).unwrap();
    let head_len = {
        let mut f = std::fs::File::open(payload).unwrap();
        PayloadHead::read(&mut f)
            .unwrap()
            .authenticate(trusted)
            .unwrap()
            .manifest()
            .usr
            .size
    };
    let usr = std::fs::File::create(target.join("usr")).unwrap();
    usr.set_len(head_len).unwrap();
    drop(usr);
    let t = Instant::now();
    let mut file =
        std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(payload).unwrap());
    let head = PayloadHead::read(&mut file)
        .unwrap()
        .authenticate(trusted)
        .unwrap();
    let targets = InstallTargets {
        usr: UsrPartition::open(&target.join("usr")).unwrap(),
        kernel: target.join("vmlinuz"),
        initramfs: target.join("initramfs"),
    };
    // The source slot: the old build's /usr image, kernel and initramfs.
    let source = source.map(|usr| {
        let dir = usr.parent().unwrap();
        let old = wellcar_contract::BuildManifest::read(dir).unwrap();
        SourceReader::open(usr)
            .unwrap()
            .with_boot_files(dir.join(&old.kernel), dir.join(&old.initramfs))
    });
    let policy = ApplyPolicy::new("amd64-usr", Some("1.0.0".into()));
    let mut installer = Installer::new_with_source(head, &policy, targets, source).unwrap();
    installer.write_from(&mut file).unwrap();
    installer.finish().unwrap();
    t.elapsed().as_secs_f64()
}

/// EROFS images of /usr/bin and of a copy with `bash` changed.
fn synthetic_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let tree = dir.join("tree");
    run(Command::new("cp").arg("-a").arg("/usr/bin").arg(&tree));
    let bash = tree.join("bash");
    let mut bytes = std::fs::read(&bash).unwrap();
    for i in 0..64 {
        let at = (i * 7919 * 131) % bytes.len();
        bytes[at] ^= 0x5a;
    }
    let middle = bytes.len() / 2;
    bytes.splice(middle..middle, (0..1024).map(|i| (i * 37 % 251) as u8));
    std::fs::remove_file(&bash).unwrap();
    std::fs::write(&bash, bytes).unwrap();
    let (old, new) = (dir.join("old.erofs"), dir.join("new.erofs"));
    for (out, src) in [(&old, Path::new("/usr/bin")), (&new, tree.as_path())] {
        run(Command::new("mkfs.erofs")
            .args(MKFS_EROFS_OPTIONS)
            .arg(out)
            .arg(src));
    }
    (old, new)
}

/// A build directory of `version` around the EROFS image `fs`.
/// A build directory for the EROFS image `fs`; its kernel and initramfs come from
/// `<env_prefix>KERNEL` / `<env_prefix>INITRAMFS`, else `WELLCAR_DELTA_KERNEL` /
/// `WELLCAR_DELTA_INITRAMFS`, else the stand-ins.
fn make_build(build: &Path, fs: &Path, version: &str, env_prefix: &str) -> PathBuf {
    std::fs::create_dir_all(build).unwrap();
    let usr = build.join("usr.img");
    std::fs::copy(fs, &usr).unwrap();
    let data_len = std::fs::metadata(&usr).unwrap().len().div_ceil(1 << 20) << 20;
    let data_blocks = data_len / 4096;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&usr)
        .unwrap()
        .set_len(data_len)
        .unwrap();
    let verity = run(Command::new("veritysetup")
        .arg("format")
        .arg("--salt=5ea1ab1e")
        .arg(format!("--data-blocks={data_blocks}"))
        .arg(format!("--hash-offset={data_len}"))
        .arg(&usr)
        .arg(&usr));
    let root = verity
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|v| v.trim().to_owned())
        .expect("veritysetup output");
    let file = |name: &str, stand_in: &str| {
        std::env::var_os(format!("{env_prefix}{name}"))
            .or_else(|| std::env::var_os(format!("WELLCAR_DELTA_{name}")))
            .unwrap_or(stand_in.into())
    };
    std::fs::copy(file("KERNEL", "/usr/bin/bash"), build.join("vmlinuz")).unwrap();
    std::fs::copy(
        file("INITRAMFS", "/usr/bin/ls"),
        build.join("initramfs.img"),
    )
    .unwrap();
    let sha = |name: &str| run(Command::new("sha256sum").arg(build.join(name)))[..64].to_owned();
    let manifest = serde_json::json!({
        "version": version, "board": "amd64-usr", "build_id": "bench",
        "verity_root_hash": root, "verity_salt": "5ea1ab1e",
        "verity_hash_offset": data_len, "verity_data_blocks": data_blocks,
        "usr_image": "usr.img", "usr_image_size": std::fs::metadata(&usr).unwrap().len(),
        "usr_image_sha256": sha("usr.img"),
        "kernel": "vmlinuz", "kernel_sha256": sha("vmlinuz"),
        "initramfs": "initramfs.img", "initramfs_sha256": sha("initramfs.img"),
    });
    std::fs::write(build.join("manifest.json"), manifest.to_string()).unwrap();
    build.to_owned()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
