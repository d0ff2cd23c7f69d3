use super::*;
use clap::Parser as _;

struct Machine {
    _dir: tempfile::TempDir,
    root: PathBuf,
    esp: PathBuf,
    oem: PathBuf,
}

fn machine() -> Machine {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let esp = dir.path().join("boot");
    let oem = dir.path().join("oem");
    for d in ["etc/ssh", "var/log", "home/core"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::create_dir_all(esp.join("flatcar")).unwrap();
    std::fs::create_dir_all(&oem).unwrap();
    std::fs::write(
        root.join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/ssh/ssh_host_ed25519_key"), "k").unwrap();
    std::fs::write(root.join("home/core/notes"), "n").unwrap();
    std::fs::write(root.join("var/log/boot.log"), "l").unwrap();
    std::fs::write(
        oem.join("grub.cfg"),
        "set oem_id=\"qemu\"\nset linux_append=\"wellcar.autologin systemd.machine_id=00ff\"\n",
    )
    .unwrap();
    Machine {
        _dir: dir,
        root,
        esp,
        oem,
    }
}

fn reset(m: &Machine, args: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut argv = vec!["wellcar-update", "reset"];
    argv.extend_from_slice(args);
    let root = m.root.display().to_string();
    let oem = m.oem.display().to_string();
    let id = m.root.join("etc/machine-id").display().to_string();
    argv.extend_from_slice(&["--root", &root, "--oem", &oem, "--machine-id-file", &id]);
    let opts = match crate::Cli::try_parse_from(argv)?.command {
        crate::Command::Reset(opts) => opts,
        other => panic!("{other:?}"),
    };
    let mut lines = Vec::new();
    run(&opts, &m.esp, &mut |l| lines.push(l.0))?;
    Ok(lines)
}

#[test]
fn staging_writes_the_marker_and_the_first_boot_flag_and_the_initramfs_keeps_the_paths() {
    let m = machine();
    let out = reset(&m, &["-M", "-K", "/etc/ssh/ssh_host_.*", "/var/log"]).unwrap();
    assert_eq!(out.last().unwrap(), "Staged OS reset, you can reboot now");
    assert!(m.esp.join("flatcar/first_boot").exists());
    let marker = std::fs::read_to_string(m.root.join("selective-os-reset")).unwrap();
    assert_eq!(
        marker.trim(),
        "(/etc/ssh/ssh_host_.*|/var/log/.*|/var/log|/flatcar-backup|/flatcar-backup/.*|/selective-os-reset)"
    );
    assert_eq!(
        std::fs::read_to_string(m.oem.join("grub.cfg")).unwrap(),
        "set oem_id=\"qemu\"\nset linux_append=\"wellcar.autologin \"\n\
         set linux_append=\"$linux_append systemd.machine_id=0123456789abcdef0123456789abcdef\"\n"
    );
    // The preview lists what the next boot deletes; then the initramfs' side on the same tree.
    let preview = reset(&m, &["-P"]).unwrap();
    assert!(
        preview.contains(&"/home/core/notes".to_string()),
        "{preview:?}"
    );
    assert!(!preview.contains(&"/var/log/boot.log".to_string()));
    let kept = reset(&m, &["-W"]).unwrap();
    assert!(
        kept.contains(&"/etc/ssh/ssh_host_ed25519_key".to_string()),
        "{kept:?}"
    );
    wellcar_init::os_reset::reset(&m.root).unwrap().unwrap();
    assert!(m.root.join("etc/ssh/ssh_host_ed25519_key").exists());
    assert!(m.root.join("var/log/boot.log").exists());
    assert!(!m.root.join("home").exists());
    assert!(
        !m.root.join("etc/machine-id").exists(),
        "kept through the kernel argument"
    );
}

#[test]
fn stop_removes_the_marker_and_the_flag() {
    let m = machine();
    reset(&m, &[]).unwrap();
    let out = reset(&m, &["-S"]).unwrap();
    assert_eq!(
        out[0],
        "INFO: An OS reset was staged already from a previous run."
    );
    assert!(!m.esp.join("flatcar/first_boot").exists());
    assert!(!m.root.join("selective-os-reset").exists());
    assert!(m.root.join("home/core/notes").exists(), "nothing deleted");
}

#[test]
fn ignition_file_and_url_replace_each_other_in_oem() {
    let m = machine();
    let ign = m.root.join("new.ign");
    std::fs::write(&ign, "{\"ignition\":{\"version\":\"3.4.0\"}}").unwrap();
    reset(&m, &["-U", "http://10.0.2.2/config.ign"]).unwrap();
    let grub = std::fs::read_to_string(m.oem.join("grub.cfg")).unwrap();
    assert!(
        grub.ends_with(
            "set linux_append=\"$linux_append ignition.config.url=http://10.0.2.2/config.ign\"\n"
        ),
        "{grub}"
    );
    assert!(
        !grub.contains("systemd.machine_id"),
        "no -M: the old machine id argument is dropped"
    );
    reset(&m, &["-F", ign.to_str().unwrap()]).unwrap();
    assert_eq!(
        std::fs::read(m.oem.join("config.ign")).unwrap(),
        std::fs::read(&ign).unwrap()
    );
    let grub = std::fs::read_to_string(m.oem.join("grub.cfg")).unwrap();
    assert!(!grub.contains("ignition.config.url"), "{grub}");
}

#[test]
fn bad_arguments_are_refused_as_flatcar_does() {
    let m = machine();
    let err = reset(&m, &["/var/log"]).unwrap_err();
    assert_eq!(err.to_string(), "Found unused arguments: /var/log");
    let err = reset(&m, &["-K"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "No paths to keep specified for --keep-paths argument"
    );
    let err = reset(&m, &["-K", "var/log"]).unwrap_err();
    assert!(err.to_string().starts_with("invalid path to keep"), "{err}");
    assert!(reset(&m, &["-S", "-P"]).is_err(), "one exclusive action");
    assert!(reset(&m, &["-B"])
        .unwrap_err()
        .to_string()
        .contains("--preview-delete"));
    assert!(
        !m.root.join("selective-os-reset").exists(),
        "nothing staged"
    );
    assert!(!m.esp.join("flatcar/first_boot").exists());
}
