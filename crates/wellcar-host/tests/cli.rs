//! The real `wellcar-update` binary against a real ESP directory and command-line file: the
//! update cycle, refusals (exit status 2, reason on stderr, nothing written) and JSON status.

use std::path::Path;
use std::process::{Command, Output};

use wellcar_bootstate::{store::write_in_place, BootState, Esp, Slot};

const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn cmdline_for(dir: &Path, slot: Slot, hash: &str) -> std::path::PathBuf {
    let p = dir.join(format!("cmdline-{}", slot.letter()));
    std::fs::write(
        &p,
        format!(
            "mount.usr=/dev/mapper/usr verity.usr=PARTUUID={} verity.usrhash={hash} root=LABEL=ROOT\n",
            slot.unique_guid()
        ),
    )
    .unwrap();
    p
}

fn run(esp: &Path, cmdline: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wellcar-update"))
        .arg("--esp")
        .arg(esp)
        .arg("--cmdline")
        .arg(cmdline)
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn refused(o: &Output, reason: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "expected a refusal: {err}");
    assert!(err.contains(reason), "{err:?} does not say {reason:?}");
}

fn status(esp: &Path, cmdline: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(&run(esp, cmdline, &["status", "--json"]))).unwrap()
}

#[test]
fn update_cycle_with_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let esp_dir = dir.path().join("esp");
    let esp = Esp::new(&esp_dir);
    esp.create(&BootState::fresh(H1.parse().unwrap(), "1.0.0").unwrap())
        .unwrap();
    let on_a = cmdline_for(dir.path(), Slot::A, H1);
    let on_b = cmdline_for(dir.path(), Slot::B, H2);

    let st = status(&esp_dir, &on_a);
    assert_eq!(st["booted"], "USR-A");
    assert_eq!(st["next_boot"], "USR-A");
    assert_eq!(st["staged"], serde_json::Value::Null);
    assert_eq!(st["slots"][0]["verity_hash"], H1);

    refused(&run(&esp_dir, &on_a, &["rollback"]), "no verified /usr");
    refused(&run(&esp_dir, &on_a, &["cancel"]), "no staged update");
    refused(
        &run(
            &esp_dir,
            &on_a,
            &["stage", "A", "--root-hash", H2, "--version", "1.1.0"],
        ),
        "USR-A is the booted slot",
    );
    refused(
        &run(
            &esp_dir,
            &on_a,
            &["stage", "B", "--root-hash", "nothex", "--version", "1.1.0"],
        ),
        "64 lower-case hex digits",
    );
    refused(
        &run(
            &esp_dir,
            &on_a,
            &["stage", "B", "--root-hash", H2, "--version", "1.1"],
        ),
        "invalid version",
    );
    assert_eq!(
        status(&esp_dir, &on_a)["generation"],
        1,
        "refusals write nothing"
    );

    ok(&run(
        &esp_dir,
        &on_a,
        &["stage", "B", "--root-hash", H2, "--version", "1.1.0"],
    ));
    let st = status(&esp_dir, &on_a);
    assert_eq!(st["next_boot"], "USR-B");
    assert_eq!(st["staged"]["slot"], "USR-B");
    assert_eq!(st["staged"]["version"], "1.1.0");
    refused(
        &run(&esp_dir, &on_a, &["rollback"]),
        "use `wellcar-update cancel`",
    );

    // cancel, then stage again.
    ok(&run(&esp_dir, &on_a, &["cancel"]));
    let st = status(&esp_dir, &on_a);
    assert_eq!(
        (st["next_boot"].clone(), st["staged"].clone()),
        ("USR-A".into(), serde_json::Value::Null)
    );
    ok(&run(
        &esp_dir,
        &on_a,
        &["stage", "USR-B", "--root-hash", H2, "--version", "1.1.0"],
    ));

    // GRUB picks B and consumes its try; B boots and is marked good.
    let loaded = esp.load().unwrap();
    let (slot, write) = esp.plan_bootloader(&loaded);
    assert_eq!(slot, Some(Slot::B));
    let write = write.unwrap();
    write_in_place(&write.path, &write.new).unwrap();
    let st = status(&esp_dir, &on_b);
    assert_eq!(st["slots"][1]["tries"], 0);
    assert_eq!(st["slots"][1]["successful"], false);
    assert!(ok(&run(&esp_dir, &on_b, &["mark-good"])).contains("USR-B marked good"));
    assert!(ok(&run(&esp_dir, &on_b, &["mark-good"])).contains("already marked good"));
    let human = ok(&run(&esp_dir, &on_b, &["status"]));
    assert!(human.contains("*USR-B 1.1.0"), "{human}");
    let st = status(&esp_dir, &on_b);
    assert_eq!(st["slots"][1]["successful"], true);
    assert_eq!(st["slots"][1]["priority"], 2);

    // Rollback to A, which stays good.
    assert!(
        ok(&run(&esp_dir, &on_b, &["rollback"])).contains("USR-A (version 1.0.0) will boot next")
    );
    assert_eq!(status(&esp_dir, &on_b)["next_boot"], "USR-A");
}

#[test]
fn unknown_booted_slot_and_missing_esp_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("cmdline");
    std::fs::write(&plain, "root=/dev/sda1\n").unwrap();
    let o = run(dir.path(), &plain, &["mark-good"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot tell the booted slot"));
    let o = run(&dir.path().join("nope"), &plain, &["status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope/wellcar/state-0.env"));
}
