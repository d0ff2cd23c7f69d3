use super::*;

fn keep(entries: &[&str]) -> KeepSet {
    let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
    KeepSet::parse(&keep_regex(&entries).unwrap()).unwrap()
}

/// A ROOT-like tree: configuration, logs, container state, a link pointing out of ROOT.
fn tree() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for d in [
        "etc/ssh",
        "etc/systemd/system",
        "var/log/journal",
        "var/lib/docker/image",
        "home/core/.ssh",
        "usr",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for f in [
        "etc/ssh/ssh_host_ed25519_key",
        "etc/ssh/sshd_config",
        "etc/machine-id",
        "etc/systemd/system/app.service",
        "var/log/journal/system.journal",
        "var/lib/docker/image/layer",
        "home/core/.ssh/authorized_keys",
    ] {
        std::fs::write(root.join(f), f).unwrap();
    }
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("precious"), "x").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("var/lib/link-out")).unwrap();
    (dir, root)
}

#[test]
fn regex_is_flatcars() {
    let entries = [
        "/etc/ssh/ssh_host_.*",
        "/var/log/",
        "^/etc/mypath",
        "/etc/x$",
    ];
    let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        keep_regex(&entries).unwrap(),
        "(/etc/ssh/ssh_host_.*|/var/log/.*|/var/log|^/etc/mypath|/etc/x$|/flatcar-backup|/flatcar-backup/.*|/selective-os-reset)"
    );
    assert_eq!(
        keep_regex(&[]).unwrap(),
        "(/flatcar-backup|/flatcar-backup/.*|/selective-os-reset)"
    );
}

#[test]
fn relative_paths_and_bad_expressions_are_refused_by_name() {
    for bad in ["etc/ssh", "./etc", "var"] {
        let err = keep_regex(&[bad.to_string()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("invalid path to keep, must be an absolute path or a regex for an absolute path: {bad}")
        );
    }
    let err = keep_regex(&["/etc/(unclosed".to_string()]).unwrap_err();
    assert!(matches!(err, ResetError::BadRegex { .. }), "{err}");
}

#[test]
fn selection_matches_whole_paths_and_directory_contents() {
    let k = keep(&["/etc/ssh/ssh_host_.*", "/var/log", "^/etc/systemd"]);
    assert!(k.keeps("/etc/ssh/ssh_host_ed25519_key"));
    assert!(!k.keeps("/etc/ssh/sshd_config"));
    assert!(!k.keeps("/etc/ssh"), "the directory itself is not named");
    assert!(k.keeps("/var/log") && k.keeps("/var/log/journal/system.journal"));
    assert!(!k.keeps("/var/logs"), "whole path, not a prefix");
    assert!(k.keeps("/etc/systemd") && !k.keeps("/etc/systemd/system"));
    assert!(k.keeps("/selective-os-reset") && k.keeps("/flatcar-backup/etc/x"));
}

#[test]
fn reset_keeps_the_named_paths_deletes_the_rest_and_never_leaves_root() {
    let (dir, root) = tree();
    let text = keep_regex(&[
        "/etc/ssh/ssh_host_.*".to_string(),
        "/var/log".to_string(),
        "/etc/machine-id".to_string(),
    ])
    .unwrap();
    std::fs::write(root.join(MARKER), &text).unwrap();
    let preview = plan(&root, &KeepSet::parse(&text).unwrap()).unwrap();
    assert!(
        root.join("etc/ssh/sshd_config").exists(),
        "plan deletes nothing"
    );
    let done = reset(&root).unwrap().expect("a marker");
    assert_eq!(done.deleted, preview.deleted, "plan and reset agree");
    let mut left: Vec<String> = walkdir(&root);
    left.sort();
    assert_eq!(
        left,
        [
            "/etc",
            "/etc/machine-id",
            "/etc/ssh",
            "/etc/ssh/ssh_host_ed25519_key",
            "/var",
            "/var/log",
            "/var/log/journal",
            "/var/log/journal/system.journal",
        ]
    );
    assert!(done.deleted.contains(&"/var/lib/link-out".to_string()));
    assert!(
        dir.path().join("outside/precious").exists(),
        "the link was removed, not what it points to"
    );
    assert!(!root.join(MARKER).exists(), "marker removed last");
    assert!(reset(&root).unwrap().is_none(), "no marker: nothing to do");
}

#[test]
fn a_marker_that_does_not_compile_deletes_nothing() {
    let (_dir, root) = tree();
    std::fs::write(root.join(MARKER), "(/etc").unwrap();
    let err = reset(&root).unwrap_err();
    assert!(matches!(err, ResetError::BadRegex { .. }), "{err}");
    assert!(root.join("etc/ssh/sshd_config").exists());
    assert!(root.join(MARKER).exists());
}

fn walkdir(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            out.push(format!("/{}", p.strip_prefix(root).unwrap().display()));
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out
}
