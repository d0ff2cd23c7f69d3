//! Boot benchmark (issue 21): Wellcar's first boot (Ignition) and a later boot of the same
//! disk against a plain Debian bookworm disk with the same kernel and packages (GRUB,
//! initramfs-tools), booted in one process, one VM at a time, with the same QEMU settings.
//! Prints every boot, the medians, the ratios Wellcar/Debian next to the goals, memory after
//! boot and Wellcar's critical chain. No timed assertions: the numbers are for reading.
//!
//! `scripts/bench-boot.sh [--runs N]` builds what is needed first; by hand:
//! `cargo bench -p wellcar-vmtests --bench boot -- --runs 1 [--build out]`.

mod banner;
mod debian;
mod probe;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Parser;
use wellcar_image::tools::{self, Tool};
use wellcar_image::{BuildManifest, OsDefinition};
use wellcar_vmtests::{accel, build, workspace, Built, MachineConfig};

use probe::{Boot, Guest};
use report::Series;

/// Wellcar's boot against Debian's, in one run.
#[derive(Debug, Parser)]
struct Args {
    /// Boots of each kind (Wellcar first/later, Debian first/later); medians are printed.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// An existing `wellcar build` output directory, relative to the workspace root (default:
    /// build os/wellcar.toml into target/vmtest/bench).
    #[arg(long)]
    build: Option<PathBuf>,
    /// Print each boot's banner probes and the guest's journal lines about ssh, network and
    /// targets (seconds since QEMU started).
    #[arg(long)]
    verbose: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Host commands the benchmark runs itself (the builders check theirs).
const TOOLS: &[Tool] = &[
    Tool {
        name: "qemu-system-x86_64",
        package: "qemu-system-x86",
    },
    Tool {
        name: "qemu-img",
        package: "qemu-utils",
    },
    Tool {
        name: "ssh",
        package: "openssh-client",
    },
    Tool {
        name: "ssh-keygen",
        package: "openssh-client",
    },
    debian::SGDISK,
    wellcar_image::tools::MMDEBSTRAP,
    wellcar_image::tools::GRUB_MKIMAGE,
];

fn main() -> Result<()> {
    let args = Args::parse();
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    for t in TOOLS {
        t.find()?;
    }
    let cache = debian::cache_dir();
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let key = ssh_key(&cache)?;
    let public = std::fs::read_to_string(key.with_extension("pub"))?;

    let built = match &args.build {
        Some(dir) => {
            // `cargo bench` runs in tests/: relative paths are the workspace root's.
            let dir = workspace().join(dir);
            Built {
                manifest: BuildManifest::read(&dir)
                    .with_context(|| format!("reading the build in {}", dir.display()))?,
                dir,
            }
        }
        None => {
            eprintln!("bench: building os/wellcar.toml into target/vmtest/bench");
            build("bench", "1.0.0")
        }
    };
    let wellcar_disk = built.path(&built.manifest.qcow2_image);

    let definition = OsDefinition::load(&workspace().join("os/wellcar.toml"))?;
    let network = workspace().join("os/files/usr/lib/systemd/network/90-wellcar-dhcp.network");
    let grub = wellcar_image::boot_files::grub_cfg();
    let spec = debian::Spec {
        source: &definition.debian,
        network: std::fs::read_to_string(&network)
            .with_context(|| format!("reading {}", network.display()))?,
        authorized_key: public.trim().to_string(),
        console: grub_setting(&grub, "linux_console")
            .unwrap_or_else(|| "console=ttyS0,115200n8".into()),
        disk_size: wellcar_image::disk::image_size(),
    };
    let debian_disk = debian::ensure(&spec)?;

    let accel = accel(&built.path(&built.manifest.kernel));
    let work = tempfile::Builder::new()
        .prefix("wellcar-bench-")
        .tempdir()
        .context("creating a temp dir")?;
    let ignition = work.path().join("config.ign");
    std::fs::write(&ignition, ignition_config(public.trim()))?;
    let canary_port = wellcar_vm::machine::free_port().context("picking the canary port")?;
    let machine = |image: &Path| {
        let mut c = MachineConfig::new(image, accel);
        // Debian ignores the fw_cfg entry; passing it keeps both QEMU command lines the same.
        c.ignition = Some(ignition.clone());
        c.ssh_port = Some(0);
        c.host_forwards = vec![(canary_port, banner::CANARY_GUEST_PORT)];
        c
    };
    let sample = machine(&wellcar_disk);
    println!(
        "bench: {} runs, QEMU {} q35, {} vCPUs, {} MiB, virtio disk, user net (restrict=on) + ssh hostfwd, BIOS",
        args.runs,
        accel.as_str(),
        sample.cpus,
        sample.memory_mib
    );
    println!(
        "bench: Wellcar {} ({})",
        wellcar_disk.display(),
        built.manifest.version
    );
    println!(
        "bench: Debian  {} (kernel cmdline: root=LABEL=debroot ro {} quiet; GRUB timeout {} s; Wellcar's: {} s)",
        debian_disk.display(),
        spec.console,
        debian::GRUB_TIMEOUT,
        grub_setting(&grub, "timeout").unwrap_or_else(|| "?".into()),
    );

    let wellcar = Guest {
        name: "Wellcar",
        user: "core",
        key: key.clone(),
    };
    let debian = Guest {
        name: "Debian",
        user: "root",
        key,
    };
    let mut series = [
        Series {
            name: "Wellcar first",
            boots: Vec::new(),
        },
        Series {
            name: "Wellcar later",
            boots: Vec::new(),
        },
        Series {
            name: "Debian first",
            boots: Vec::new(),
        },
        Series {
            name: "Debian later",
            boots: Vec::new(),
        },
    ];
    let mut chains = Vec::new();
    for run in 1..=args.runs {
        for (i, (guest, disk)) in [(&wellcar, &wellcar_disk), (&debian, &debian_disk)]
            .into_iter()
            .enumerate()
        {
            let chain = run == 1 && guest.name == "Wellcar";
            let extras = probe::Extras {
                chain,
                verbose: args.verbose,
            };
            let dir = work.path().join(format!("{}-{run}", guest.name));
            let (first, later) = boot_twice(&machine(disk), guest, &dir, extras)?;
            let _ = std::fs::remove_dir_all(&dir);
            report::line(run, series[2 * i].name, &first);
            report::line(run, series[2 * i + 1].name, &later);
            for (name, b) in [
                (series[2 * i].name, &first),
                (series[2 * i + 1].name, &later),
            ] {
                report::log(run, name, &b.log);
            }
            if chain {
                chains.push((series[2 * i].name, first.critical_chain.clone()));
                chains.push((series[2 * i + 1].name, later.critical_chain.clone()));
            }
            series[2 * i].boots.push(first);
            series[2 * i + 1].boots.push(later);
        }
    }

    report::summary(&series, args.runs);
    report::processes(&series);
    for (name, chain) in chains {
        report::critical_chain(&format!("{name} (run 1)"), chain.as_deref().unwrap_or("-"));
    }
    Ok(())
}

/// A first boot on a fresh overlay of `cfg.image`, a clean poweroff, and a second boot of the
/// disk the first one left.
fn boot_twice(
    cfg: &MachineConfig,
    guest: &Guest,
    dir: &Path,
    extras: probe::Extras,
) -> Result<(Boot, Boot)> {
    let mut first_cfg = cfg.clone();
    first_cfg.state_dir = Some(probe::state_dir(dir, "first"));
    let (mut vm, first) = probe::boot(&first_cfg, guest, extras)?;
    probe::poweroff(&mut vm, guest)?;
    let mut later_cfg = cfg.clone();
    later_cfg.image = vm.disk();
    later_cfg.state_dir = Some(probe::state_dir(dir, "later"));
    let (_vm, later) = probe::boot(&later_cfg, guest, extras)?;
    Ok((first, later))
}

/// `set NAME=VALUE` (value optionally quoted) in a grub.cfg.
fn grub_setting(cfg: &str, name: &str) -> Option<String> {
    let prefix = format!("set {name}=");
    cfg.lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .map(|v| v.trim().trim_matches('"').to_string())
}

/// The benchmark's ssh key, made once: the Debian disk's cache key includes it.
fn ssh_key(cache: &Path) -> Result<PathBuf> {
    let key = cache.join("id_ed25519");
    if !key.is_file() || !key.with_extension("pub").is_file() {
        let _ = std::fs::remove_file(&key);
        tools::run(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "bench@wellcar", "-f"])
                .arg(&key),
        )?;
    }
    Ok(key)
}

/// Ignition for Wellcar's first boot: the ssh key for `core`.
fn ignition_config(public_key: &str) -> String {
    serde_json::json!({
        "ignition": {"version": "3.4.0"},
        "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": [public_key]}]}
    })
    .to_string()
}
