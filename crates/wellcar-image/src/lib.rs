//! The Wellcar image builder: OS definition in, bootable GPT disk image out.
//!
//! Pipeline (each step is a phase, timed and reported as [`BuildEvent`]s; the library prints
//! nothing):
//! 1. `rootfs`: the Debian tree from `mmdebstrap`, cached by content ([`rootfs`]);
//! 2. `reshape`: a private copy becomes a /usr-only OS ([`reshape`]);
//! 3. `initramfs`: the static Rust `/init` plus the boot modules (crate `wellcar-initramfs`);
//! 4. `usr-image`: EROFS + dm-verity slot image ([`usr_image`]);
//! 5. `grub`: BIOS core.img and UEFI BOOTX64.EFI ([`grub`]);
//! 6. `partitions`: ESP, OEM and ROOT filesystem images ([`boot_files`]);
//! 7. `disk`: the GPT image and its qcow2 twin ([`disk`]);
//! 8. `live`, `iso`: the live system's PXE kernel and initramfs, which carries `/usr`, and the
//!    hybrid ISO that boots them ([`live`]);
//! 9. the manifest ([`BuildManifest`], whose schema is `wellcar_contract`'s).
//!
//! Outputs in the output directory: `wellcar.img`, `wellcar.qcow2`, `usr.img`, `vmlinuz`,
//! `initramfs.img`, `wellcar_pxe.vmlinuz`, `wellcar_pxe_image.cpio`, `wellcar_iso_image.iso`, `manifest.json`. Intermediate files stay in `<output>/.work`.

pub mod boot_files;
pub mod definition;
pub mod disk;
pub mod error;
pub mod fixed_groups;
pub mod grub;
pub mod live;
pub mod platform;
pub mod reshape;
pub mod rootfs;
pub mod tools;
pub mod units;
pub mod usr_image;

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use definition::OsDefinition;
pub use error::{BuildError, Result};
pub use rootfs::{PackageStep, RootfsProgress};
pub use wellcar_contract::BuildManifest;

use error::IoContext;
use wellcar_contract::RootHash;
use wellcar_disk::{layout::LAYOUT, USR_DATA_BLOCKS, USR_EXTRACT_SIZE, USR_VERITY_HASH_OFFSET};

/// Wellcar's programs that run on the host OS (built by `scripts/build-guest.sh` into
/// `target/release`), installed into `/usr/bin` of every image.
pub const USR_BINARIES: &[&str] = &[
    "wellcar-update",
    "wellcar-update-agent",
    "locksmithd",
    "update_engine_client",
    "locksmithctl",
    "wellcar-install",
    "flatcar-update",
    "flatcar-reset",
];

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The OS definition file (`os/wellcar.toml`); its `files/` sibling is the overlay.
    pub definition: PathBuf,
    /// Output directory.
    pub output: PathBuf,
    /// Overrides the definition's version.
    pub version: Option<String>,
    /// Timestamps for reproducible output.
    pub source_date_epoch: u64,
    /// The static `/init` binary for the initramfs.
    pub init_binary: PathBuf,
    /// Wellcar's own programs for the running system ([`USR_BINARIES`]), installed into
    /// `/usr/bin` under their file names.
    pub usr_binaries: Vec<PathBuf>,
    /// Key that signs the update payload; `None` uses the development key under the user's
    /// config directory (created on first use).
    pub signing_key: Option<PathBuf>,
    /// Further public keys the image trusts for updates (key rotation).
    pub trusted_keys: Vec<PathBuf>,
    /// zstd level of the payload (1-22); higher is smaller and much slower.
    pub payload_compression_level: i32,
    /// Directories laid over `/usr` after everything else (user customisation): the contents
    /// of each directory are copied into `/usr`, later ones winning.
    pub usr_overlays: Vec<PathBuf>,
    /// Also make a delta payload from this earlier build directory, signed by the same key
    /// (`wellcar_delta_from_<ITS VERSION>.bin`, listed in the manifest's `deltas`).
    pub delta_from: Option<PathBuf>,
}

/// What a build reports while it runs, in order (see [`build_with_progress`]). `Display` gives
/// one line of text per event.
#[derive(Debug, Clone, PartialEq)]
pub enum BuildEvent {
    /// A phase began.
    PhaseStarted {
        /// The phase (`rootfs`, `reshape`, ...).
        name: &'static str,
    },
    /// A phase ended: its duration and what it produced.
    PhaseDone {
        /// The phase.
        name: &'static str,
        /// Its duration (as recorded in the manifest).
        secs: f64,
        /// The files and trees it made.
        outputs: Vec<Output>,
    },
    /// A phase failed after `secs`; the build returns the error.
    PhaseFailed {
        /// The phase.
        name: &'static str,
        /// Time until it failed.
        secs: f64,
    },
    /// Progress of the root filesystem: the cache lookup, mmdebstrap's stages and packages.
    Rootfs(RootfsProgress),
    /// No signing key was given: the development key signs the payload.
    DevSigningKey {
        /// The key file.
        path: PathBuf,
        /// Whether this build created it.
        created: bool,
    },
    /// The /usr image is built.
    UsrImage {
        /// Bytes of files in the /usr tree.
        tree_bytes: u64,
        /// Size of the EROFS image.
        fs_bytes: u64,
        /// The dm-verity root hash.
        root_hash: RootHash,
    },
}

/// A file or tree a phase produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Where it is.
    pub path: PathBuf,
    /// Its disk usage (`du`): a sparse image counts only its data.
    pub bytes: u64,
}

impl std::fmt::Display for BuildEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildEvent::PhaseStarted { name } => write!(f, "==> {name}"),
            BuildEvent::PhaseDone {
                name,
                secs,
                outputs,
            } => {
                write!(f, "{name} done in {secs:.1} s")?;
                for (i, o) in outputs.iter().enumerate() {
                    let file = o.path.file_name().unwrap_or(o.path.as_os_str());
                    let sep = if i == 0 { ":" } else { "," };
                    write!(f, "{sep} {} {}", file.to_string_lossy(), mib(o.bytes))?;
                }
                Ok(())
            }
            BuildEvent::PhaseFailed { name, secs } => write!(f, "{name} failed after {secs:.1} s"),
            BuildEvent::Rootfs(p) => p.fmt(f),
            BuildEvent::DevSigningKey { path, created } => write!(
                f,
                "signing with the development key {} ({}); pass --signing-key for real releases",
                path.display(),
                if *created { "created now" } else { "existing" }
            ),
            BuildEvent::UsrImage {
                tree_bytes,
                fs_bytes,
                root_hash,
            } => write!(
                f,
                "/usr: tree {}, EROFS {}, verity root {root_hash}",
                mib(*tree_bytes),
                mib(*fs_bytes)
            ),
        }
    }
}

/// `bytes` in MiB, one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Runs phases: reports them and records their durations.
struct Phases<'a> {
    done: Vec<(String, f64)>,
    progress: &'a dyn Fn(BuildEvent),
}

impl Phases<'_> {
    /// Runs `f` as phase `name`; on success reports its time and the sizes of the paths
    /// `outputs` picks from its result.
    fn run<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce() -> Result<T>,
        outputs: impl FnOnce(&T) -> Vec<PathBuf>,
    ) -> Result<T> {
        (self.progress)(BuildEvent::PhaseStarted { name });
        let start = Instant::now();
        let out = f();
        let secs = start.elapsed().as_secs_f64();
        self.done.push((name.to_string(), secs));
        let event = match &out {
            Ok(v) => BuildEvent::PhaseDone {
                name,
                secs,
                // The sizes are for people: a failure to measure does not fail the build.
                outputs: disk_usage(outputs(v)).unwrap_or_else(|e| {
                    tracing::warn!("measuring what {name} made: {e}");
                    Vec::new()
                }),
            },
            Err(_) => BuildEvent::PhaseFailed { name, secs },
        };
        (self.progress)(event);
        out
    }
}

/// The disk usage of each path, by `du` (trees are summed, hard links counted once).
fn disk_usage(paths: Vec<PathBuf>) -> Result<Vec<Output>> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let out = tools::run(
        tools::DU
            .command()?
            .args(["--summarize", "--block-size=1", "--"])
            .args(&paths),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let sizes = text.lines().map(|l| {
        l.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    });
    Ok(paths
        .into_iter()
        .zip(sizes)
        .map(|(path, bytes)| Output { path, bytes })
        .collect())
}

/// Builds everything and writes the manifest, reporting nothing.
pub fn build(opts: &BuildOptions) -> Result<BuildManifest> {
    build_with_progress(opts, &|_| {})
}

/// Builds everything and writes the manifest, handing each [`BuildEvent`] to `progress` as it
/// happens (on the calling thread).
pub fn build_with_progress(
    opts: &BuildOptions,
    progress: &dyn Fn(BuildEvent),
) -> Result<BuildManifest> {
    let def = OsDefinition::load(&opts.definition)?;
    if !opts.init_binary.is_file() {
        return Err(BuildError::InitBinaryMissing {
            path: opts.init_binary.clone(),
        });
    }
    // The definition's own version was checked when it was loaded.
    let version = match &opts.version {
        Some(v) => {
            definition::check_version(v).map_err(BuildError::VersionOverride)?;
            v.clone()
        }
        None => def.os.version.clone(),
    };
    let out = opts.output.clone();
    let work = out.join(".work");
    std::fs::create_dir_all(&work).at("creating", &work)?;
    let sde = opts.source_date_epoch;
    let mut phases = Phases {
        done: Vec::new(),
        progress,
    };

    let cached = phases.run(
        "rootfs",
        || rootfs::ensure(&def.debian, sde, &|p| progress(BuildEvent::Rootfs(p))),
        |c| vec![c.tree.clone()],
    )?;
    let identity = reshape::BuildIdentity {
        version: version.clone(),
        build_id: format!("{sde}"),
    };
    let files = OsDefinition::files_dir(&opts.definition);
    let signing_key = signing_key(opts.signing_key.as_deref(), progress)?;
    let shaped = phases.run(
        "reshape",
        || {
            let shaped = reshape::reshape(&cached.tree, &work, &def, &files, &identity)?;
            reshape::install_usr_binaries(&shaped.root, &opts.usr_binaries)?;
            install_trusted_keys(&shaped.root, &signing_key, &opts.trusted_keys)?;
            for overlay in &opts.usr_overlays {
                reshape::overlay_usr(&shaped.root, overlay)?;
            }
            Ok(shaped)
        },
        |s| vec![s.root.clone()],
    )?;

    let initramfs_path = out.join("initramfs.img");
    let initramfs = phases.run(
        "initramfs",
        || {
            wellcar_initramfs::build_initramfs(&wellcar_initramfs::InitramfsOptions {
                rootfs: cached.tree.clone(),
                kernel_version: shaped.kernel_version.clone(),
                init_binary: opts.init_binary.clone(),
                modules: wellcar_contract::module_list::WANTED
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                output: initramfs_path.clone(),
            })
            .map_err(|source| BuildError::Initramfs {
                path: initramfs_path.clone(),
                source,
            })
        },
        |_| vec![initramfs_path.clone()],
    )?;

    let usr = phases.run(
        "usr-image",
        || usr_image::build(&shaped.root.join("usr"), &work, &out, sde),
        |u| vec![u.path.clone()],
    )?;
    progress(BuildEvent::UsrImage {
        tree_bytes: usr.tree_size,
        fs_bytes: usr.fs_size,
        root_hash: usr.root_hash,
    });
    let kernel_path = out.join("vmlinuz");
    std::fs::copy(&shaped.kernel, &kernel_path).at("copying kernel to", &kernel_path)?;

    let (efi, core) = (work.join("BOOTX64.EFI"), work.join("core.img"));
    phases.run(
        "grub",
        || {
            grub::build_bios_core(&work, &core)?;
            grub::build_efi(&work, &efi)
        },
        |_| vec![core.clone(), efi.clone()],
    )?;

    let size_of = |label: &str| {
        LAYOUT
            .iter()
            .find(|p| p.label == label)
            .map(|p| p.size)
            .unwrap_or(0)
    };
    let (esp, oem, root) = phases.run(
        "partitions",
        || {
            let esp = boot_files::build_esp(
                &boot_files::EspContents {
                    efi_image: &efi,
                    kernel: &kernel_path,
                    initramfs: &initramfs_path,
                    root_hash: usr.root_hash,
                    version: &version,
                },
                &work,
                &work.join("esp.img"),
                size_of("EFI-SYSTEM"),
            )?;
            let oem = boot_files::build_oem(&work, &work.join("oem.img"), size_of("OEM"), "qemu")?;
            let root = boot_files::make_ext4(
                &work.join("root.img"),
                wellcar_disk::layout::ROOT_BUILD_SIZE,
                "ROOT",
                None,
            )?;
            Ok((esp, oem, root))
        },
        |(esp, oem, root)| vec![esp.clone(), oem.clone(), root.clone()],
    )?;

    let raw = out.join("wellcar.img");
    let qcow2 = out.join("wellcar.qcow2");
    phases.run(
        "disk",
        || {
            disk::assemble(
                &disk::DiskContents {
                    esp: &esp,
                    bios_core: &core,
                    usr_a: &usr.path,
                    oem: &oem,
                    root: &root,
                },
                &raw,
            )?;
            disk::to_qcow2(&raw, &qcow2)
        },
        |_| vec![raw.clone(), qcow2.clone()],
    )?;

    let pxe = phases.run(
        "live",
        || {
            live::build_pxe(
                &kernel_path,
                &initramfs_path,
                &usr.path,
                usr.fs_size,
                &out,
                u32::try_from(sde).unwrap_or(u32::MAX),
            )
        },
        |p| vec![p.kernel.clone(), p.initramfs.clone()],
    )?;
    let live_args = live::live_kernel_args(&usr.root_hash);
    let iso = phases.run(
        "iso",
        || live::build_iso(&pxe, &live_args, &work, &out),
        |iso| vec![iso.clone()],
    )?;

    let manifest = BuildManifest {
        version,
        board: def.os.board.clone(),
        build_id: identity.build_id,
        source_date_epoch: sde,
        verity_root_hash: usr.root_hash,
        verity_salt: usr.salt.clone(),
        verity_hash_offset: USR_VERITY_HASH_OFFSET,
        verity_data_blocks: USR_DATA_BLOCKS,
        usr_image: "usr.img".into(),
        usr_image_size: USR_EXTRACT_SIZE,
        usr_image_sha256: usr.sha256.clone(),
        usr_fs_size: usr.fs_size,
        usr_tree_size: usr.tree_size,
        kernel: "vmlinuz".into(),
        kernel_version: shaped.kernel_version.clone(),
        kernel_sha256: usr_image::sha256_file(&kernel_path)?,
        initramfs: "initramfs.img".into(),
        initramfs_sha256: usr_image::sha256_file(&initramfs_path)?,
        initramfs_size: initramfs.size,
        disk_image: "wellcar.img".into(),
        qcow2_image: "wellcar.qcow2".into(),
        payload: Some(wellcar_payload::PAYLOAD_FILE_NAME.into()),
        packages: shaped.packages.clone(),
        rootfs_cache_key: cached.key.clone(),
        phases: phases.done.clone(),
        deltas: Vec::new(),
        pxe_kernel: Some(live::PXE_KERNEL.into()),
        pxe_initramfs: Some(live::PXE_INITRAMFS.into()),
        pxe_initramfs_size: Some(pxe.initramfs_size),
        live_kernel_args: Some(live_args.clone()),
        iso_image: iso.file_name().map(|n| n.to_string_lossy().into_owned()),
    };
    // The payload reads the manifest it describes, so the manifest goes first, then is
    // rewritten with the payload's phase time.
    manifest.write(&out)?;
    let mut manifest = manifest;
    // The full payload, then the delta (if asked for) from the same build and key.
    let create = |delta_from: Option<PathBuf>| {
        let create = wellcar_payload::CreateOptions {
            compression_level: opts.payload_compression_level,
            delta_from,
            ..Default::default()
        };
        wellcar_payload::create_payload_with(
            &out,
            &out.join(wellcar_contract::BUILD_MANIFEST_FILE),
            &[&signing_key],
            &out,
            &create,
        )
        .map_err(Box::new)
    };
    phases.run(
        "payload",
        || {
            create(None).map_err(|source| BuildError::Payload {
                path: out.join(wellcar_payload::PAYLOAD_FILE_NAME),
                source,
            })
        },
        |summary| vec![summary.path.clone()],
    )?;
    if let Some(old) = &opts.delta_from {
        phases.run(
            "delta",
            || {
                create(Some(old.clone())).map_err(|source| BuildError::Delta {
                    from: old.clone(),
                    source,
                })
            },
            |summary| vec![summary.path.clone()],
        )?;
        // Making the delta recorded it in manifest.json.
        manifest.deltas = BuildManifest::read(&out)?.deltas;
    }
    manifest.phases = phases.done.clone();
    manifest.write(&out)?;
    Ok(manifest)
}

/// The key that signs the payload: the given one, else the development key (reported).
fn signing_key(
    path: Option<&Path>,
    progress: &dyn Fn(BuildEvent),
) -> Result<wellcar_payload::SigningKey> {
    match path {
        Some(p) => wellcar_payload::load_signing_key(p).map_err(BuildError::SigningKey),
        None => {
            let (key, path, created) =
                wellcar_payload::dev_signing_key().map_err(BuildError::SigningKey)?;
            progress(BuildEvent::DevSigningKey { path, created });
            Ok(key)
        }
    }
}

/// Writes the signing key's public half and any extra trusted keys into
/// `/usr/share/wellcar/update-payload-keys/`, where the update agent looks.
fn install_trusted_keys(
    root: &Path,
    signing: &wellcar_payload::SigningKey,
    extra: &[PathBuf],
) -> Result<()> {
    let dir = root.join(wellcar_payload::SYSTEM_TRUSTED_KEYS_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(&dir).at("creating", &dir)?;
    let public = signing.verifying_key();
    let name = format!(
        "{}.pub",
        wellcar_payload::format::key_fingerprint(public.as_bytes())
    );
    std::fs::write(
        dir.join(&name),
        wellcar_payload::keys::public_key_pem(&public),
    )
    .at("writing", dir.join(&name))?;
    for key in extra {
        let loaded =
            wellcar_payload::load_verifying_key(key).map_err(|source| BuildError::TrustedKey {
                path: key.clone(),
                source,
            })?;
        let name = format!(
            "{}.pub",
            wellcar_payload::format::key_fingerprint(loaded.as_bytes())
        );
        std::fs::write(
            dir.join(&name),
            wellcar_payload::keys::public_key_pem(&loaded),
        )
        .at("writing", dir.join(&name))?;
    }
    Ok(())
}

/// Default SOURCE_DATE_EPOCH: the environment's, else the last commit of the definition's
/// repository, else 0.
pub fn default_source_date_epoch(definition: &Path) -> u64 {
    if let Some(v) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return v;
    }
    let dir = definition.parent().unwrap_or(Path::new("."));
    std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["log", "-1", "--format=%ct"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[test]
    fn an_unreadable_trusted_key_is_named_with_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        let signing = wellcar_payload::SigningKey::from_bytes(&[3; 32]);
        let missing = dir.path().join("rotated.pub");
        let err =
            install_trusted_keys(dir.path(), &signing, std::slice::from_ref(&missing)).unwrap_err();
        assert!(
            matches!(&err, BuildError::TrustedKey { path, source: wellcar_payload::KeyError::Read { .. } }
                if *path == missing),
            "{err:?}"
        );
        assert!(
            wellcar_contract::error_chain(&err)
                .starts_with(&format!("the trusted key {}: ", missing.display())),
            "{}",
            wellcar_contract::error_chain(&err)
        );
    }

    #[test]
    fn phases_report_start_end_and_the_disk_usage_of_what_they_made() {
        let dir = tempfile::tempdir().unwrap();
        let (tree, sparse) = (dir.path().join("tree"), dir.path().join("sparse.img"));
        let events = RefCell::new(Vec::new());
        let log = |e| events.borrow_mut().push(e);
        let mut phases = Phases {
            done: Vec::new(),
            progress: &log,
        };
        let make = || {
            std::fs::create_dir(&tree).unwrap();
            std::fs::write(tree.join("data"), vec![1_u8; 1 << 20]).unwrap();
            std::fs::File::create(&sparse)
                .unwrap()
                .set_len(1 << 30)
                .unwrap();
            Ok(())
        };
        phases
            .run("make", make, |_| vec![tree.clone(), sparse.clone()])
            .unwrap();
        let fail = || -> Result<()> {
            Err(BuildError::UsrTooLarge {
                fs_size: 2,
                capacity: 1,
            })
        };
        phases.run("fail", fail, |_| Vec::new()).unwrap_err();

        let events = events.take();
        assert_eq!(events.len(), 4, "{events:#?}");
        assert_eq!(events[0], BuildEvent::PhaseStarted { name: "make" });
        let BuildEvent::PhaseDone { name, outputs, .. } = &events[1] else {
            panic!("{:?}", events[1]);
        };
        assert_eq!(*name, "make");
        assert_eq!(outputs[0].path, tree);
        assert!(outputs[0].bytes >= 1 << 20, "{outputs:?}");
        // A sparse image counts its data, not its length.
        assert!(outputs[1].bytes < 1 << 20, "{outputs:?}");
        assert!(matches!(
            events[3],
            BuildEvent::PhaseFailed { name: "fail", .. }
        ));
        let names: Vec<&str> = phases.done.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["make", "fail"]);
    }
}
