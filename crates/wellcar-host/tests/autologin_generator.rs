//! The image's `os/files/usr/lib/systemd/system-generators/wellcar-autologin-generator` run by `sh` as systemd would run it (output directory as
//! the first argument), on kernel command lines with Flatcar's and Wellcar's spellings.

use std::path::Path;
use std::process::Command;

fn generate(cmdline: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cmdline");
    std::fs::write(&file, cmdline).unwrap();
    let out = dir.path().join("gen");
    let result =
        Command::new("sh")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(
                "../../os/files/usr/lib/systemd/system-generators/wellcar-autologin-generator",
            ))
            .arg(&out)
            .env("WELLCAR_CMDLINE", &file)
            .output()
            .unwrap();
    assert!(result.status.success(), "{result:?}");
    (dir, String::from_utf8(result.stderr).unwrap())
}

fn dropin(dir: &tempfile::TempDir, unit: &str) -> Option<String> {
    std::fs::read_to_string(
        dir.path()
            .join("gen")
            .join(format!("{unit}.d/10-autologin.conf")),
    )
    .ok()
}

fn units(dir: &tempfile::TempDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("gen"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn bare_flag_logs_in_on_every_console() {
    for word in ["flatcar.autologin", "coreos.autologin", "wellcar.autologin"] {
        let (dir, _) = generate(&format!("root=LABEL=ROOT {word} quiet\n"));
        assert_eq!(
            units(&dir),
            ["getty@.service.d", "serial-getty@.service.d"],
            "{word}"
        );
        assert_eq!(
            dropin(&dir, "serial-getty@.service").unwrap(),
            "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin core --keep-baud %I 115200,38400,9600 $TERM\n"
        );
        assert_eq!(
            dropin(&dir, "getty@.service").unwrap(),
            "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin core --noclear %I $TERM\n"
        );
    }
}

#[test]
fn a_named_tty_gets_only_its_own_getty() {
    let (dir, _) =
        generate("flatcar.autologin=ttyS0 coreos.autologin=tty1 wellcar.autologin=hvc0\n");
    assert_eq!(
        units(&dir),
        [
            "getty@tty1.service.d",
            "serial-getty@hvc0.service.d",
            "serial-getty@ttyS0.service.d"
        ]
    );
    assert!(dropin(&dir, "serial-getty@ttyS0.service")
        .unwrap()
        .contains("--keep-baud %I"));
    assert!(dropin(&dir, "getty@tty1.service")
        .unwrap()
        .contains("--noclear %I"));
}

#[test]
fn no_flag_or_a_bad_tty_writes_nothing() {
    let (dir, _) = generate("root=LABEL=ROOT autologin flatcar.autologinx\n");
    assert!(units(&dir).is_empty());
    let (dir, stderr) = generate("flatcar.autologin=../x flatcar.autologin=\n");
    assert!(units(&dir).is_empty());
    assert!(
        stderr.contains("ignoring flatcar.autologin=../x"),
        "{stderr}"
    );
}
