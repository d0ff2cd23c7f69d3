//! The `locksmithctl` binary against a real etcd: locksmith's output, flags (Go-style single
//! dash too), `LOCKSMITHCTL_*` variables, TLS files, and errors.

use std::process::Command;

use wellcar_test_support::etcd::Etcd;

const VARS: &[&str] = &[
    "LOCKSMITHCTL_ENDPOINT",
    "LOCKSMITHCTL_ETCD_CAFILE",
    "LOCKSMITHCTL_ETCD_CERTFILE",
    "LOCKSMITHCTL_ETCD_KEYFILE",
    "LOCKSMITHCTL_ETCD_USERNAME",
    "LOCKSMITHCTL_ETCD_PASSWORD",
    "LOCKSMITHCTL_GROUP",
    "LOCKSMITHCTL_DEBUG",
];

/// `locksmithctl` with no LOCKSMITHCTL_* variables from the test's environment.
fn ctl() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_locksmithctl"));
    for var in VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs it: (exit code, stdout, stderr).
fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn ok(cmd: &mut Command) -> String {
    let (code, stdout, stderr) = run(cmd);
    assert_eq!(code, 0, "{cmd:?}: {stderr}");
    stdout
}

#[test]
fn commands_print_what_locksmithctl_prints() {
    let etcd = Etcd::start();
    let at = |args: &[&str]| {
        let mut c = ctl();
        c.arg("-endpoint").arg(&etcd.url).args(args);
        c
    };
    assert_eq!(ok(&mut at(&["status"])), "Available: 1\nMax: 1\n");
    assert_eq!(ok(&mut at(&["lock", "m1"])), "");
    assert_eq!(
        ok(&mut at(&["status"])),
        "Available: 0\nMax: 1\n\nMACHINE ID\nm1\n"
    );
    let (code, stdout, stderr) = run(&mut at(&["lock", "m2"]));
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert!(stderr.starts_with("Error locking: "), "{stderr}");
    assert!(stderr.contains("semaphore is at 0"), "{stderr}");

    assert_eq!(ok(&mut at(&["set-max", "3"])), "Old-Max: 1\nMax: 3\n");
    // The default ID is the machine-id.
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::write(
        root.path().join("etc/machine-id"),
        "0f1e2d3c4b5a69788796a5b4c3d2e1f0\n",
    )
    .unwrap();
    assert_eq!(
        ok(&mut at(&["-root", root.path().to_str().unwrap(), "lock"])),
        ""
    );
    assert_eq!(
        ok(&mut at(&["status"])),
        "Available: 1\nMax: 3\n\nMACHINE ID\n0f1e2d3c4b5a69788796a5b4c3d2e1f0\nm1\n"
    );
    assert_eq!(
        ok(&mut at(&[
            "--root",
            root.path().to_str().unwrap(),
            "unlock"
        ])),
        ""
    );
    assert_eq!(ok(&mut at(&["unlock", "m1"])), "");
    let (code, _, stderr) = run(&mut at(&["unlock", "m1"]));
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("Error unlocking: ") && stderr.contains("holder does not exist"),
        "{stderr}"
    );
    assert_eq!(ok(&mut at(&["status"])), "Available: 3\nMax: 3\n");

    // No machine-id: locksmith's message.
    let empty = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(&mut at(&["-root", empty.path().to_str().unwrap(), "lock"]));
    assert_eq!(code, 1);
    assert!(stderr.starts_with("Cannot read machine-id"), "{stderr}");
    // A bad max is refused before anything changes.
    let (code, _, stderr) = run(&mut at(&["set-max", "many"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("many"), "{stderr}");
    assert_eq!(ok(&mut at(&["status"])), "Available: 3\nMax: 3\n");
}

#[test]
fn flags_come_go_style_comma_listed_or_from_the_environment() {
    let etcd = Etcd::start();
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    // `-endpoint=a,b` with a dead first endpoint; `-group=…` with `=`.
    let list = format!("{closed},{}", etcd.url);
    assert_eq!(
        ok(ctl().args([
            &format!("-endpoint={list}"),
            "-group=prod/database",
            "lock",
            "m1"
        ])),
        ""
    );
    // The same group through the environment, the endpoint repeated.
    assert_eq!(
        ok(ctl().env("LOCKSMITHCTL_GROUP", "prod/database").args([
            "-endpoint",
            &closed,
            "--endpoint",
            &etcd.url,
            "status"
        ])),
        "Available: 0\nMax: 1\n\nMACHINE ID\nm1\n"
    );
    // Everything from the environment; the default group is another semaphore.
    assert_eq!(
        ok(ctl().env("LOCKSMITHCTL_ENDPOINT", &list).arg("status")),
        "Available: 1\nMax: 1\n"
    );
    // A flag wins over the environment.
    assert_eq!(
        ok(ctl()
            .env("LOCKSMITHCTL_ENDPOINT", &closed)
            .env("LOCKSMITHCTL_GROUP", "other")
            .args(["-endpoint", &etcd.url, "-group", "prod/database", "status"])),
        "Available: 0\nMax: 1\n\nMACHINE ID\nm1\n"
    );
}

#[test]
fn an_unreachable_etcd_is_named() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let (code, stdout, stderr) = run(ctl().args(["-endpoint", &closed, "status"]));
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert!(
        stderr.starts_with("Error initializing etcd client: no etcd endpoint reachable: "),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{closed}/v2/keys/coreos.com/updateengine/rebootlock/semaphore"
        )),
        "{stderr}"
    );
    let (code, _, stderr) = run(ctl().args(["-endpoint", "127.0.0.1:2379", "status"]));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("\"127.0.0.1:2379\"") && stderr.contains("http://"),
        "{stderr}"
    );
}

#[test]
fn tls_flags_reach_an_etcd_that_requires_client_certificates() {
    let etcd = Etcd::start_tls();
    let tls = etcd.tls.clone().unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    assert_eq!(
        ok(ctl().args([
            "-endpoint",
            &etcd.url,
            "-etcd-cafile",
            &path(&tls.ca_file),
            "-etcd-certfile",
            &path(&tls.client_cert_file),
            "-etcd-keyfile",
            &path(&tls.client_key_file),
            "set-max",
            "2",
        ])),
        "Old-Max: 1\nMax: 2\n"
    );
    assert_eq!(
        ok(ctl()
            .env("LOCKSMITHCTL_ETCD_CAFILE", &tls.ca_file)
            .env("LOCKSMITHCTL_ETCD_CERTFILE", &tls.client_cert_file)
            .env("LOCKSMITHCTL_ETCD_KEYFILE", &tls.client_key_file)
            .args(["-endpoint", &etcd.url, "status"])),
        "Available: 2\nMax: 2\n"
    );
    // A key file that is not a key is named.
    let (code, _, stderr) = run(ctl().args([
        "-endpoint",
        &etcd.url,
        "-etcd-cafile",
        &path(&tls.ca_file),
        "-etcd-certfile",
        &path(&tls.client_cert_file),
        "-etcd-keyfile",
        &path(&tls.ca_file),
        "status",
    ]));
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&path(&tls.ca_file)) && stderr.contains("no PEM private key"),
        "{stderr}"
    );
}
