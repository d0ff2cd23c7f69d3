//! `wellcar-update lock …` against a real etcd: locksmithctl's commands and output.

use std::process::Command;

use wellcar_test_support::etcd::Etcd;

fn lock(etcd: &Etcd, cmdline: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wellcar-update"))
        .env_remove("LOCKSMITHCTL_ENDPOINT")
        .env_remove("LOCKSMITHCTL_GROUP")
        .arg("--cmdline")
        .arg(cmdline)
        .args(["lock", "--endpoint", &etcd.url])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn lock_commands_print_as_locksmithctl() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let cmdline = dir.path().join("cmdline");
    std::fs::write(&cmdline, "root=LABEL=ROOT\n").unwrap();
    let ok = |args: &[&str]| {
        let (code, stdout, stderr) = lock(&etcd, &cmdline, args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        stdout
    };
    assert_eq!(ok(&["status"]), "Available: 1\nMax: 1\n");
    assert_eq!(ok(&["set-max", "2"]), "Old-Max: 1\nMax: 2\n");
    assert_eq!(ok(&["lock", "m1"]), "");
    assert_eq!(
        ok(&["--group", "db", "status"]),
        "Available: 1\nMax: 1\n",
        "another group is another semaphore"
    );
    assert_eq!(ok(&["status"]), "Available: 1\nMax: 2\n\nMACHINE ID\nm1\n");
    let (code, _, stderr) = lock(&etcd, &cmdline, &["lock", "m1"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("Error locking: ") && stderr.contains("holder exists"),
        "{stderr}"
    );
    assert_eq!(ok(&["unlock", "m1"]), "");
    assert_eq!(ok(&["status"]), "Available: 2\nMax: 2\n");
}
