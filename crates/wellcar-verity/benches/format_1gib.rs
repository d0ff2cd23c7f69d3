//! `cargo bench -p wellcar-verity`: our `format` against `veritysetup format` on one 1 GiB
//! image laid out like a Flatcar USR slot (260094 data blocks, hash area at 1065345024).
//!
//! The data region holds 350 MiB of incompressible pseudo-random bytes (a typical /usr) and
//! then zeros: a hole in the file, as a freshly built image has, or written-out zeros (as on a
//! partition) with `WELLCAR_VERITY_BENCH_DENSE=1`. Both tools format the same
//! file with the same salt and uuid, alternately, several rounds; the root hashes must agree.
//! Printed: every run, the best time of each, and the ratio veritysetup / ours. The file is in
//! the page cache for every run after the first, for both tools alike.
//!
//! Environment: `WELLCAR_VERITY_BENCH_DENSE=1` (see above); `WELLCAR_VERITY_BENCH_DIR` (default: the system temp dir) holds the image;
//! `WELLCAR_VERITY_BENCH_ROUNDS` (default 3).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::num::NonZeroUsize;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use wellcar_verity::{format_with_threads, parse_root_hash, VerityParams, BLOCK_SIZE};

const DATA_BLOCKS: u64 = 260_094;
const HASH_OFFSET: u64 = DATA_BLOCKS * BLOCK_SIZE;
const IMAGE_SIZE: u64 = 1 << 30;
const RANDOM_BYTES: u64 = 350 << 20;
const UUID: &str = "0b4f7d1e-2c3a-4e5f-8a9b-1c2d3e4f5a6b";

fn main() {
    let dir = tempfile::Builder::new()
        .prefix("wellcar-verity-bench")
        .tempdir_in(
            std::env::var_os("WELLCAR_VERITY_BENCH_DIR")
                .unwrap_or_else(|| std::env::temp_dir().into()),
        )
        .expect("create the bench directory");
    let rounds: usize = std::env::var("WELLCAR_VERITY_BENCH_ROUNDS")
        .ok()
        .map(|v| {
            v.parse()
                .expect("WELLCAR_VERITY_BENCH_ROUNDS must be a number")
        })
        .unwrap_or(3);
    let image_path = dir.path().join("usr.img");
    let dense = std::env::var_os("WELLCAR_VERITY_BENCH_DENSE").is_some_and(|v| v == "1");
    write_usr_like_image(&image_path, dense);
    let salt: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(101) ^ 0xc3).collect();
    let params = VerityParams {
        data_blocks: DATA_BLOCKS,
        hash_offset: HASH_OFFSET,
        salt: salt.clone(),
        uuid: UUID.parse().unwrap(),
    };
    let all_cpus = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    println!(
        "image: 1 GiB, {} MiB random + zero tail ({}), {DATA_BLOCKS} data blocks, hash offset {HASH_OFFSET}, {} CPUs",
        RANDOM_BYTES >> 20,
        if dense { "written zeros" } else { "hole" },
        all_cpus
    );

    let mut best_veritysetup = Duration::MAX;
    let mut best_ours = Duration::MAX;
    let mut best_ours_one_thread = Duration::MAX;
    for round in 1..=rounds {
        let (elapsed, veritysetup_root) = run_veritysetup(&image_path, &salt);
        best_veritysetup = best_veritysetup.min(elapsed);
        println!(
            "round {round}: veritysetup format     {:>8.1} ms",
            ms(elapsed)
        );

        for (threads, best) in [
            (all_cpus, &mut best_ours),
            (NonZeroUsize::MIN, &mut best_ours_one_thread),
        ] {
            let image = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&image_path)
                .unwrap();
            let started = Instant::now();
            let info = format_with_threads(&image, &params, threads).expect("our format");
            let elapsed = started.elapsed();
            *best = (*best).min(elapsed);
            println!(
                "round {round}: wellcar-verity ({threads} thr) {:>8.1} ms",
                ms(elapsed)
            );
            assert_eq!(
                info.root_hash, veritysetup_root,
                "root hash differs from veritysetup's"
            );
        }
    }
    println!("root hashes equal: yes");
    println!(
        "best veritysetup format:        {:>8.1} ms",
        ms(best_veritysetup)
    );
    println!(
        "best wellcar-verity, {all_cpus} threads: {:>8.1} ms",
        ms(best_ours)
    );
    println!(
        "best wellcar-verity, 1 thread:  {:>8.1} ms",
        ms(best_ours_one_thread)
    );
    println!(
        "ratio veritysetup / wellcar-verity: {:.2}x ({all_cpus} threads), {:.2}x (1 thread)",
        best_veritysetup.as_secs_f64() / best_ours.as_secs_f64(),
        best_veritysetup.as_secs_f64() / best_ours_one_thread.as_secs_f64()
    );
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// 350 MiB of xorshift output, then zeros up to 1 GiB (a hole unless `dense`).
fn write_usr_like_image(path: &Path, dense: bool) {
    let file = File::create(path).expect("create the bench image");
    let mut out = BufWriter::with_capacity(1 << 20, &file);
    let mut state: u64 = 0x853c_49e6_748f_ea9b;
    let mut block = vec![0u8; 1 << 16];
    for _ in 0..RANDOM_BYTES / block.len() as u64 {
        for word in block.chunks_exact_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            word.copy_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        out.write_all(&block).unwrap();
    }
    if dense {
        block.fill(0);
        for _ in 0..(IMAGE_SIZE - RANDOM_BYTES) / block.len() as u64 {
            out.write_all(&block).unwrap();
        }
    }
    out.flush().unwrap();
    drop(out);
    file.set_len(IMAGE_SIZE).unwrap();
    file.sync_all().unwrap();
}

fn run_veritysetup(image: &Path, salt: &[u8]) -> (Duration, wellcar_contract::RootHash) {
    let started = Instant::now();
    let output = Command::new("veritysetup")
        .arg("format")
        .args([
            "--hash=sha256",
            "--data-block-size=4096",
            "--hash-block-size=4096",
        ])
        .arg(format!("--data-blocks={DATA_BLOCKS}"))
        .arg(format!("--hash-offset={HASH_OFFSET}"))
        .arg(format!("--salt={}", hex::encode(salt)))
        .arg(format!("--uuid={UUID}"))
        .arg(image)
        .arg(image)
        .output()
        .expect("run veritysetup (Debian package cryptsetup-bin)");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "veritysetup format failed: {stdout}"
    );
    let root = stdout
        .lines()
        .find_map(|line| line.strip_prefix("Root hash:"))
        .expect("a Root hash: line");
    (elapsed, parse_root_hash(root.trim()).unwrap())
}
