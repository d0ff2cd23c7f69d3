//! Image build benchmark (not a test): builds the committed OS definition twice into
//! `target/bench-image` (the first run warms the root filesystem cache if needed) and prints the
//! warm build's phases, its total against the 60 s goal, and the /usr sizes.
//!
//! Needs the host tools from `scripts/install-deps.sh` and the initramfs `/init` from
//! `scripts/build-guest.sh`. Run: `cargo bench -p wellcar-image --bench build`.

use std::path::Path;
use std::time::Instant;

use wellcar_image::BuildEvent;

fn main() {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let init = ws.join("target/x86_64-unknown-linux-gnu/initramfs/wellcar-init");
    assert!(
        init.is_file(),
        "{} missing: run scripts/build-guest.sh",
        init.display()
    );
    let opts = wellcar_image::BuildOptions {
        definition: ws.join("os/wellcar.toml"),
        output: ws.join("target/bench-image"),
        version: Some("0.0.1".into()),
        source_date_epoch: 1_700_000_000,
        init_binary: init,
        usr_binaries: Vec::new(),
        usr_overlays: Vec::new(),
        signing_key: None,
        trusted_keys: Vec::new(),
        payload_compression_level: 3,
        delta_from: None,
    };
    let first = Instant::now();
    let progress = |e: BuildEvent| {
        if let BuildEvent::PhaseStarted { .. } | BuildEvent::PhaseDone { .. } = e {
            eprintln!("{e}");
        }
    };
    wellcar_image::build_with_progress(&opts, &progress).expect("first build");
    let first = first.elapsed().as_secs_f64();
    let warm = Instant::now();
    let m = wellcar_image::build_with_progress(&opts, &progress).expect("warm build");
    let warm = warm.elapsed().as_secs_f64();

    println!("\nwellcar build, warm root filesystem cache (first run {first:.1} s):");
    for (phase, secs) in &m.phases {
        println!("  {phase:<12} {secs:>6.1} s");
    }
    println!(
        "  {:<12} {warm:>6.1} s  (goal 60 s: {:.2} of it)",
        "total",
        warm / 60.0
    );
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "/usr: tree {:.0} MiB -> EROFS {:.0} MiB ({:.1} %); initramfs {:.1} MiB; payload {:.0} MiB",
        mib(m.usr_tree_size),
        mib(m.usr_fs_size),
        100.0 * m.usr_fs_size as f64 / m.usr_tree_size as f64,
        mib(m.initramfs_size),
        mib(std::fs::metadata(opts.output.join("wellcar_update.bin"))
            .map(|x| x.len())
            .unwrap_or(0)),
    );
}
