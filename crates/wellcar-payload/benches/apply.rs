//! Full-payload benchmark on a real 1 GiB /usr image (`cargo bench -p wellcar-payload --bench
//! apply`): payload size and apply throughput per zstd level, with and without long-distance
//! matching, all measured in one run.
//!
//! Builds an EROFS image of a directory of this machine (default `/usr/bin`; set
//! `WELLCAR_BENCH_SOURCE`, e.g. to a copy of the rootfs cache's `usr`) with the builder's
//! `mkfs.erofs` options (`wellcar-image`'s `usr_image.rs`: `-zlz4hc,4 -C65536`, fixed `-T`/`-U`),
//! padded to 1 GiB with Flatcar's verity geometry. Then, for each level of
//! `WELLCAR_BENCH_LEVELS` (default `3,9,19`; the first is the baseline, "today": `wellcar
//! build`'s default `--payload-compression-level 3`):
//! - payload size and create time (the real writer: 4 MiB chunks, one zstd frame each);
//! - apply time (in a child process, best of `WELLCAR_BENCH_ROUNDS`, default 3; the rounds
//!   interleave the levels) and its throughput against the first level's;
//! - the /usr blobs decompressed alone (one thread, from memory: the level-dependent part of
//!   apply without the disk's noise), best of the rounds, against the first level's;
//! - for the levels in `WELLCAR_BENCH_LDM_LEVELS` (default: all): the same 4 MiB chunks
//!   compressed with long-distance matching on, and the payload size that would give.
//!
//! Once, at the first level: a baseline pipeline of standard tools doing decompress + hash +
//! write + fsync (`zstd -dc usr.img.zst | tee target | sha256sum; sync target`) and apply's peak
//! RSS (VmHWM).
//!
//! Needs `mkfs.erofs`, `veritysetup`, `zstd`, `sha256sum`, `tee` and `sync`.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use wellcar_disk::{USR_DATA_BLOCKS, USR_EXTRACT_SIZE, USR_VERITY_HASH_OFFSET};
use wellcar_payload::create::CHUNK_LEN;
use wellcar_payload::format::{Destination, Operation};
use wellcar_payload::{
    create_payload_with, ApplyPolicy, CreateOptions, InstallTargets, TrustedKeys, UsrPartition,
};

const CHILD_FLAG: &str = "--apply-child";

/// `mkfs.erofs` options of `wellcar-image/src/usr_image.rs` (timestamp and UUID fixed there
/// from `SOURCE_DATE_EPOCH`; any fixed values give the same layout).
const MKFS_EROFS_OPTIONS: &[&str] = &[
    "--quiet",
    "-zlz4hc,4",
    "-C65536",
    "-T1700000000",
    "-U5d8f4c59-2a4d-5b2e-9c1a-6c7f00000018",
];

/// One level's results.
struct Row {
    level: i32,
    path: PathBuf,
    size: u64,
    create_secs: f64,
    /// (total, write phase, peak RSS KiB) of each apply run.
    apply_runs: Vec<(f64, f64, u64)>,
    /// Best of `apply_runs`: total, and the write phase alone.
    apply_secs: f64,
    write_secs: f64,
    /// Best time to decompress the /usr blobs alone, in this process, from memory.
    decompress_secs: f64,
    decompressed_bytes: u64,
    usr_blob_bytes: u64,
    ldm_blob_bytes: Option<u64>,
}

fn levels(var: &str, default: &[i32]) -> Vec<i32> {
    match std::env::var(var) {
        Ok(list) => list
            .split(',')
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{var}: {l:?} is not a zstd level"))
            })
            .collect(),
        Err(_) => default.to_vec(),
    }
}

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
    let levels_run = levels("WELLCAR_BENCH_LEVELS", &[3, 9, 19]);
    assert!(!levels_run.is_empty(), "WELLCAR_BENCH_LEVELS is empty");
    let ldm_levels = levels("WELLCAR_BENCH_LDM_LEVELS", &levels_run);
    let rounds: usize = std::env::var("WELLCAR_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let source = std::env::var("WELLCAR_BENCH_SOURCE").unwrap_or_else(|_| "/usr/bin".into());
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let build = dir.join("out");
    std::fs::create_dir(&build).unwrap();

    eprintln!("building a 1 GiB /usr image from {source} ...");
    let usr = build.join("usr.img");
    run(Command::new("mkfs.erofs")
        .args(MKFS_EROFS_OPTIONS)
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
    let trusted = TrustedKeys::from_paths(&[dir.join("update-key.pub")]).unwrap();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);

    let mut rows: Vec<Row> = Vec::new();
    for &level in &levels_run {
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
            &dir.join(format!("full-{level}.bin")),
            &options,
        )
        .unwrap();
        let create_secs = started.elapsed().as_secs_f64();
        let operations = {
            let mut f = std::fs::File::open(&summary.path).unwrap();
            wellcar_payload::PayloadHead::read(&mut f)
                .unwrap()
                .authenticate(&trusted)
                .unwrap()
                .manifest()
                .operations
                .clone()
        };
        let usr_blob_bytes = operations
            .iter()
            .filter_map(|op| match op {
                Operation::Replace(r) if r.dst == Destination::Usr => Some(r.data_length),
                _ => None,
            })
            .sum();
        let ldm_blob_bytes = ldm_levels.contains(&level).then(|| {
            eprintln!("the same chunks with long-distance matching (zstd level {level}) ...");
            ldm_chunk_bytes(&usr, &operations, level, options.threads)
        });
        let row = Row {
            level,
            path: summary.path,
            size: summary.size,
            create_secs,
            apply_runs: Vec::new(),
            apply_secs: f64::NAN,
            write_secs: f64::NAN,
            decompress_secs: f64::INFINITY,
            decompressed_bytes: 0,
            usr_blob_bytes,
            ldm_blob_bytes,
        };
        eprintln!(
            "level {level}: payload {:.1} MiB, create {create_secs:.1} s, with LDM {:?} MiB",
            mib(row.size),
            row.ldm_blob_bytes
                .map(|l| mib(row.size - row.usr_blob_bytes + l))
        );
        rows.push(row);
    }
    // Apply rounds interleave the levels, so that other load on the machine hits each alike.
    for round in 0..rounds {
        for row in &mut rows {
            std::fs::read(&row.path).unwrap(); // warm the page cache
            eprintln!("apply level {}, round {} ...", row.level, round + 1);
            row.apply_runs.push(apply_in_child(dir, &row.path));
            let (secs, bytes) = decompress_usr_blobs(&row.path, &trusted);
            row.decompress_secs = row.decompress_secs.min(secs);
            row.decompressed_bytes = bytes;
        }
    }
    for row in &mut rows {
        row.apply_secs = best(&row.apply_runs.iter().map(|r| r.0).collect::<Vec<_>>());
        row.write_secs = best(&row.apply_runs.iter().map(|r| r.1).collect::<Vec<_>>());
        eprintln!(
            "level {}: apply {:.2} s (write phase {:.2} s)",
            row.level, row.apply_secs, row.write_secs
        );
        std::fs::remove_file(&row.path).unwrap();
    }
    let baseline_line = baseline_against(dir, &usr, rows[0].level, &rows[0].apply_runs);

    println!(
        "wellcar-payload benchmark: 1 GiB /usr region, EROFS ({}) of {source} ({:.1} MiB filesystem)",
        MKFS_EROFS_OPTIONS[1..3].join(" "),
        mib(fs_size)
    );
    let today = &rows[0];
    println!(
        "| zstd level | payload MiB | payload / EROFS | with LDM MiB | create s | apply s | apply MiB/s of /usr | throughput / level {0} | write phase s | write-phase throughput / level {0} | decompress MiB/s (1 thread) | decompress throughput / level {0} |",
        today.level
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        let ldm = row.ldm_blob_bytes.map_or("-".to_owned(), |l| {
            format!("{:.1}", mib(row.size - row.usr_blob_bytes + l))
        });
        println!(
            "| {} | {:.1} | {:.3} | {ldm} | {:.1} | {:.2} | {:.0} | {:.2} (goal >= 0.8) | {:.2} | {:.2} | {:.0} | {:.2} |",
            row.level,
            mib(row.size),
            row.size as f64 / fs_size as f64,
            row.create_secs,
            row.apply_secs,
            1024.0 / row.apply_secs,
            today.apply_secs / row.apply_secs,
            row.write_secs,
            today.write_secs / row.write_secs,
            mib(row.decompressed_bytes) / row.decompress_secs,
            today.decompress_secs / row.decompress_secs,
        );
    }
    let smallest = rows.iter().map(|r| r.size).min().unwrap();
    println!(
        "smallest payload {:.1} MiB: {:.2}x the goal of 100 MiB",
        mib(smallest),
        mib(smallest) / 100.0
    );
    println!("{baseline_line}");
}

/// Decompresses every /usr `replace` blob of `payload` once, from memory, on one thread (the
/// level-dependent part of apply, without the disk); returns seconds.
fn decompress_usr_blobs(payload: &Path, trusted: &TrustedKeys) -> (f64, u64) {
    let bytes = std::fs::read(payload).unwrap();
    let head = wellcar_payload::PayloadHead::read(&mut bytes.as_slice())
        .unwrap()
        .authenticate(trusted)
        .unwrap();
    let start = head.data_start() as usize;
    let mut decompressor = zstd::bulk::Decompressor::new().unwrap();
    let mut out = vec![0u8; CHUNK_LEN as usize];
    let started = Instant::now();
    let mut total = 0;
    for op in &head.manifest().operations {
        if let Operation::Replace(r) = op {
            if r.dst == Destination::Usr {
                let blob = &bytes[start + r.data_offset as usize..][..r.data_length as usize];
                let n = decompressor
                    .decompress_to_buffer(blob, &mut out[..r.dst_length as usize])
                    .unwrap();
                assert_eq!(n as u64, r.dst_length, "blob at {}", r.dst_offset);
                total += r.dst_length;
            }
        }
    }
    (started.elapsed().as_secs_f64(), total)
}

/// The /usr replace chunks of `operations` compressed again at `level` with long-distance
/// matching on (window = one chunk, as the writer's frames); returns their total size.
fn ldm_chunk_bytes(usr: &Path, operations: &[Operation], level: i32, threads: usize) -> u64 {
    use zstd::stream::raw::CParameter;
    let file = std::fs::File::open(usr).unwrap();
    let chunks: Vec<(u64, u64)> = operations
        .iter()
        .filter_map(|op| match op {
            Operation::Replace(r) if r.dst == Destination::Usr => {
                Some((r.dst_offset, r.dst_length))
            }
            _ => None,
        })
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let total = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                let mut compressor = zstd::bulk::Compressor::new(level).unwrap();
                compressor
                    .set_parameter(CParameter::EnableLongDistanceMatching(true))
                    .unwrap();
                compressor
                    .set_parameter(CParameter::WindowLog(CHUNK_LEN.trailing_zeros()))
                    .unwrap();
                let mut buf = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(offset, len)) = chunks.get(i) else {
                        break;
                    };
                    buf.resize(len as usize, 0);
                    file.read_exact_at(&mut buf, offset).unwrap();
                    let n = compressor.compress(&buf).unwrap().len() as u64;
                    total.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    total.into_inner()
}

/// `zstd -{level}` of the whole image and the standard-tools pipeline against apply's best run;
/// returns the report lines.
fn baseline_against(dir: &Path, usr: &Path, level: i32, apply_runs: &[(f64, f64, u64)]) -> String {
    let threads = CreateOptions::default().threads;
    eprintln!("zstd -{level} of the same image, baseline pipeline ...");
    let zst = dir.join("usr.img.zst");
    run(Command::new("zstd")
        .arg(format!("-{level}"))
        .arg(format!("-T{threads}"))
        .arg("-q")
        .arg("-f")
        .arg(usr)
        .arg("-o")
        .arg(&zst));
    std::fs::read(&zst).unwrap();
    let baseline_secs = (0..apply_runs.len())
        .map(|_| baseline(dir, &zst))
        .fold(f64::INFINITY, f64::min);
    let zst_size = std::fs::metadata(&zst).unwrap().len();
    let _ = std::fs::remove_file(&zst);
    let apply_secs = apply_runs.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
    let write_secs = apply_runs.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
    let peak_kib = apply_runs.iter().map(|r| r.2).max().unwrap();
    let gib = USR_EXTRACT_SIZE as f64 / (1u64 << 30) as f64;
    format!(
        "level {level}: apply {apply_secs:.2} s (write phase {write_secs:.2} s: verify blobs, decompress, write, fsync; the rest is the read-back: sha256 + dm-verity)\n\
         baseline pipeline   {baseline_secs:.2} s  zstd -dc | tee target | sha256sum; sync target  (whole-image zstd -{level}: {:.1} MiB)\n\
         apply / baseline throughput ratio: {:.2} (goal >= 0.8)\n\
         apply peak RSS      {:.1} MiB  (goal < 64 MiB for {gib:.0} GiB)",
        zst_size as f64 / (1024.0 * 1024.0),
        baseline_secs / apply_secs,
        peak_kib as f64 / 1024.0
    )
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
