//! Payload benchmark on a real 1 GiB /usr image (`cargo bench -p wellcar-payload`).
//!
//! Builds an EROFS image of a directory of this machine (default `/usr/bin`; set
//! `WELLCAR_BENCH_SOURCE`) padded to 1 GiB with Flatcar's verity geometry, then reports:
//! - payload size against the raw image and against `zstd -19` of the same image
//!   (`WELLCAR_BENCH_LEVEL` changes both levels);
//! - apply throughput (in a child process, so its peak RSS is apply's alone) against a baseline
//!   pipeline of standard tools doing decompress + hash + write + fsync:
//!   `zstd -dc usr.img.zst | tee target | sha256sum; sync target`;
//! - apply's peak RSS (VmHWM).
//!
//! Needs `mkfs.erofs`, `veritysetup`, `zstd`, `sha256sum`, `tee` and `sync`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use wellcar_disk::{USR_DATA_BLOCKS, USR_EXTRACT_SIZE, USR_VERITY_HASH_OFFSET};
use wellcar_payload::{
    create_payload_with, ApplyPolicy, CreateOptions, InstallTargets, TrustedKeys, UsrPartition,
};

const CHILD_FLAG: &str = "--apply-child";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == CHILD_FLAG) {
        apply_child(Path::new(&args[pos + 1]));
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench binaries without `--bench`: the 1 GiB run is
        // for `cargo bench` only.
        eprintln!("skipping: run with `cargo bench -p wellcar-payload --bench apply`");
        return;
    }
    let level: i32 = std::env::var("WELLCAR_BENCH_LEVEL")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(19);
    let source = std::env::var("WELLCAR_BENCH_SOURCE").unwrap_or_else(|_| "/usr/bin".into());
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let build = dir.join("out");
    std::fs::create_dir(&build).unwrap();

    eprintln!("building a 1 GiB /usr image from {source} ...");
    let usr = build.join("usr.img");
    run(Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(&usr)
        .arg(&source));
    let fs_size = std::fs::metadata(&usr).unwrap().len();
    assert!(
        fs_size < USR_VERITY_HASH_OFFSET,
        "{source} is too big for the /usr region"
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&usr)
        .unwrap()
        .set_len(USR_EXTRACT_SIZE)
        .unwrap();
    let verity = run(Command::new("veritysetup")
        .arg("format")
        .arg(format!("--data-blocks={USR_DATA_BLOCKS}"))
        .arg(format!("--hash-offset={USR_VERITY_HASH_OFFSET}"))
        .arg(&usr)
        .arg(&usr));
    let field = |name: &str| {
        verity
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .expect("veritysetup output")
    };
    let (root, salt) = (field("Root hash:"), field("Salt:"));
    std::fs::copy("/usr/bin/bash", build.join("vmlinuz")).unwrap();
    std::fs::copy("/usr/bin/ls", build.join("initramfs.img")).unwrap();
    let sha = |name: &str| run(Command::new("sha256sum").arg(build.join(name)))[..64].to_owned();
    let manifest = serde_json::json!({
        "version": "2.0.0", "board": "amd64-usr", "build_id": "bench",
        "verity_root_hash": root, "verity_salt": salt,
        "verity_hash_offset": USR_VERITY_HASH_OFFSET, "verity_data_blocks": USR_DATA_BLOCKS,
        "usr_image": "usr.img", "usr_image_size": USR_EXTRACT_SIZE, "usr_image_sha256": sha("usr.img"),
        "kernel": "vmlinuz", "kernel_sha256": sha("vmlinuz"),
        "initramfs": "initramfs.img", "initramfs_sha256": sha("initramfs.img"),
    });
    std::fs::write(build.join("manifest.json"), manifest.to_string()).unwrap();

    let key = wellcar_payload::keys::new_signing_key().unwrap();
    wellcar_payload::keys::write_keypair(&key, &dir.join("update-key"), false).unwrap();
    let options = CreateOptions {
        compression_level: level,
        ..CreateOptions::default()
    };
    eprintln!(
        "creating the payload (zstd level {level}, {} threads) ...",
        options.threads
    );
    let started = Instant::now();
    let summary = create_payload_with(
        &build,
        &build.join("manifest.json"),
        &[&key],
        &build,
        &options,
    )
    .unwrap();
    let create_secs = started.elapsed().as_secs_f64();

    eprintln!("zstd -{level} of the same image ...");
    let zst = dir.join("usr.img.zst");
    let started = Instant::now();
    run(Command::new("zstd")
        .arg(format!("-{level}"))
        .arg(format!("-T{}", options.threads))
        .arg("-q")
        .arg("-f")
        .arg(&usr)
        .arg("-o")
        .arg(&zst));
    let zstd_secs = started.elapsed().as_secs_f64();
    let zst_size = std::fs::metadata(&zst).unwrap().len();

    // Warm the page cache for both inputs equally.
    for file in [&summary.path, &zst] {
        std::fs::read(file).unwrap();
    }
    let mut apply_runs = Vec::new();
    let mut baseline_runs = Vec::new();
    for round in 0..2 {
        eprintln!("apply vs baseline, round {} ...", round + 1);
        apply_runs.push(apply_in_child(dir, &summary.path));
        baseline_runs.push(baseline(dir, &zst));
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let apply_secs = best(&apply_runs.iter().map(|r| r.0).collect::<Vec<_>>());
    let write_secs = best(&apply_runs.iter().map(|r| r.1).collect::<Vec<_>>());
    let peak_kib = apply_runs.iter().map(|r| r.2).max().unwrap();
    let baseline_secs = best(&baseline_runs);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let gib = mib(USR_EXTRACT_SIZE) / 1024.0;

    println!(
        "wellcar-payload benchmark: 1 GiB /usr region, EROFS of {source} ({:.1} MiB filesystem)",
        mib(fs_size)
    );
    println!("payload size        {:>9.1} MiB  ({:.2}% of raw 1024 MiB; zstd -{level}: {:.1} MiB; payload/zstd = {:.3})",
        mib(summary.size), 100.0 * summary.size as f64 / USR_EXTRACT_SIZE as f64, mib(zst_size), summary.size as f64 / zst_size as f64);
    println!(
        "create              {create_secs:>9.2} s     (zstd -{level} -T{}: {zstd_secs:.2} s)",
        options.threads
    );
    println!("apply (total)       {apply_secs:>9.2} s     {:.0} MiB/s of /usr (incl. full read-back: sha256 + dm-verity)", 1024.0 / apply_secs);
    println!(
        "  write phase       {write_secs:>9.2} s     (verify blobs, decompress, write, fsync)"
    );
    println!("baseline pipeline   {baseline_secs:>9.2} s     zstd -dc | tee target | sha256sum; sync target");
    println!(
        "apply / baseline throughput ratio: {:.2} (goal >= 0.8)",
        baseline_secs / apply_secs
    );
    println!(
        "apply peak RSS      {:>9.1} MiB  (goal < 64 MiB for {gib:.0} GiB)",
        peak_kib as f64 / 1024.0
    );
}

/// Runs apply in a child process; returns (total seconds, write-phase seconds, VmHWM KiB).
fn apply_in_child(dir: &Path, payload: &Path) -> (f64, f64, u64) {
    let target = dir.join("target");
    let _ = std::fs::remove_dir_all(&target);
    std::fs::create_dir_all(target.join("esp")).unwrap();
    // A blank partition-sized file (as a loop device over a fresh slot would be).
    let usr = std::fs::File::create(target.join("usr-b")).unwrap();
    usr.set_len(USR_EXTRACT_SIZE).unwrap();
    drop(usr);
    let out = Command::new(std::env::current_exe().unwrap())
        .arg(CHILD_FLAG)
        .arg(dir)
        .env("WELLCAR_BENCH_PAYLOAD", payload)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "apply child failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let nums: Vec<f64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    (nums[0], nums[1], nums[2] as u64)
}

fn apply_child(dir: &Path) {
    let payload = PathBuf::from(std::env::var_os("WELLCAR_BENCH_PAYLOAD").unwrap());
    let trusted = TrustedKeys::from_paths(&[dir.join("update-key.pub")]).unwrap();
    let target = dir.join("target");
    let policy = ApplyPolicy::new("amd64-usr", Some("1.0.0".into()));
    let started = Instant::now();
    let mut reader =
        std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&payload).unwrap());
    let head = wellcar_payload::PayloadHead::read(&mut reader)
        .unwrap()
        .authenticate(&trusted)
        .unwrap();
    let targets = InstallTargets {
        usr: UsrPartition::open(&target.join("usr-b")).unwrap(),
        kernel: target.join("esp/vmlinuz-b"),
        initramfs: target.join("esp/initramfs-b.img"),
    };
    let mut installer = wellcar_payload::Installer::new(head, &policy, targets).unwrap();
    installer.write_from(&mut reader).unwrap();
    let write_secs = started.elapsed().as_secs_f64();
    installer.finish().unwrap();
    let total = started.elapsed().as_secs_f64();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let mut out = std::io::stdout();
    writeln!(out, "{total} {write_secs} {hwm}").unwrap();
}

/// The baseline: decompress, hash, write, fsync, with standard tools. Returns seconds.
fn baseline(dir: &Path, zst: &Path) -> f64 {
    let target = dir.join("baseline-target");
    let _ = std::fs::remove_file(&target);
    let script = format!(
        "set -e -o pipefail; zstd -dc '{}' | tee '{}' | sha256sum >/dev/null; sync '{}'",
        zst.display(),
        target.display(),
        target.display()
    );
    let started = Instant::now();
    run(Command::new("bash").arg("-c").arg(script));
    let secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&target);
    secs
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
