use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::*;

fn corpus_dir() -> PathBuf {
    std::env::var_os("WELLCAR_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"))
        .join("ignition/butane")
}

fn translate_ok(text: &str, options: &Options) -> Translated {
    translate(text, options).unwrap_or_else(|e| panic!("translation failed: {e}\n{e:?}"))
}

fn findings(err: ButaneError) -> Vec<Finding> {
    match err {
        ButaneError::Invalid { findings, .. } => findings,
        other => panic!("expected findings, got {other}"),
    }
}

/// `expected` is a subset of `actual` (objects: listed keys; arrays: same length, pairwise).
fn assert_subset(expected: &Value, actual: &Value, path: &str) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                let got = a
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} missing in {actual}"));
                assert_subset(v, got, &format!("{path}.{k}"));
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            assert_eq!(e.len(), a.len(), "{path}: {actual}");
            for (i, (x, y)) in e.iter().zip(a).enumerate() {
                assert_subset(x, y, &format!("{path}.{i}"));
            }
        }
        _ => assert_eq!(expected, actual, "{path}"),
    }
}

#[test]
fn corpus_examples_with_expected_output_match() {
    let dir = corpus_dir();
    for name in [
        "B01-flatcar-1_1-inline-file",
        "B02-flatcar-1_1-luks-discard",
        "B06-fcos-1_1-fs-with-mount-unit",
    ] {
        let text = fs::read_to_string(dir.join(format!("{name}.bu")))
            .unwrap_or_else(|e| panic!("{name}: {e} (set WELLCAR_CORPUS)"));
        let expected: Value = serde_json::from_str(
            &fs::read_to_string(dir.join(format!("{name}.expected.json"))).unwrap(),
        )
        .unwrap();
        let out = translate_ok(&text, &Options::default());
        assert_subset(&expected, &out.config, name);
    }
}

#[test]
fn flatcar_refuses_clevis_at_its_yaml_position() {
    let text =
        fs::read_to_string(corpus_dir().join("B03-flatcar-1_0-clevis-unsupported.bu")).unwrap();
    let f = findings(translate(&text, &Options::default()).unwrap_err());
    let e = f.iter().find(|f| f.is_error()).unwrap();
    assert_eq!(e.yaml_path, "storage.luks.1.clevis");
    assert_eq!(e.message, "clevis is not supported in this spec version");
    assert_eq!(e.pos, Some(Pos { line: 9, column: 7 }));
}

#[test]
fn local_units_keys_and_trees_read_from_the_files_dir() {
    let files = tempfile::tempdir().unwrap();
    let d = files.path();
    fs::write(
        d.join("example.service"),
        "[Service]\nExecStart=/bin/true\n",
    )
    .unwrap();
    fs::write(d.join("example.conf"), "[Service]\nEnvironment=A=1\n").unwrap();
    fs::write(
        d.join("id_rsa.pub"),
        "ssh-rsa AAAA one\n\nssh-ed25519 BBBB two\n",
    )
    .unwrap();
    let text =
        fs::read_to_string(corpus_dir().join("B04-flatcar-1_1-local-units-and-keys.bu")).unwrap();
    let options = Options {
        files_dir: Some(d.to_path_buf()),
        strict: true,
    };
    let out = translate_ok(&text, &options);
    let units = &out.config["systemd"]["units"];
    assert_eq!(units[0]["contents"], "[Service]\nExecStart=/bin/true\n");
    assert_eq!(
        units[1]["dropins"][0]["contents"],
        "[Service]\nEnvironment=A=1\n"
    );
    assert_eq!(
        out.config["passwd"]["users"][0]["sshAuthorizedKeys"],
        json!(["ssh-rsa AAAA one", "ssh-ed25519 BBBB two"])
    );

    // Trees (fcos 1.1.0): files with 0644/0755, symlinks verbatim, overrides keep attributes.
    let tree = d.join("tree");
    fs::create_dir_all(tree.join("directory")).unwrap();
    fs::write(tree.join("file"), "f").unwrap();
    fs::write(tree.join("overridden-file"), "o").unwrap();
    fs::write(tree.join("directory/run.sh"), "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        tree.join("directory/run.sh"),
        fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::os::unix::fs::symlink("../file", tree.join("directory/symlink")).unwrap();
    let text = fs::read_to_string(corpus_dir().join("B05-fcos-1_1-trees.bu")).unwrap();
    let out = translate_ok(&text, &options);
    let files: Vec<(&str, i64)> = out.config["storage"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap(), f["mode"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        files,
        [
            ("/etc/files/overridden-file", 0o600),
            ("/etc/files/directory/run.sh", 0o755),
            ("/etc/files/file", 0o644),
        ]
    );
    assert_eq!(out.config["storage"]["files"][0]["user"]["id"], 500);
    assert_eq!(
        out.config["storage"]["files"][0]["contents"]["source"],
        "data:,o"
    );
    assert_eq!(
        out.config["storage"]["links"],
        json!([{"path": "/etc/files/directory/symlink", "target": "../file"}])
    );
}

#[test]
fn missing_local_file_and_escapes_are_errors_at_their_line() {
    let text = "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /a\n      contents:\n        local: nothere.txt\n";
    let e = findings(translate(text, &Options::default()).unwrap_err());
    assert_eq!(e[0].yaml_path, "storage.files.0.contents.local");
    assert_eq!(e[0].pos, Some(Pos { line: 7, column: 9 }));
    assert!(e[0].message.contains("--files-dir"), "{}", e[0]);

    let files = tempfile::tempdir().unwrap();
    let options = Options {
        files_dir: Some(files.path().to_path_buf()),
        strict: false,
    };
    let e = findings(translate(text, &options).unwrap_err());
    assert!(e[0].message.contains("nothere.txt"), "{}", e[0]);
    assert_eq!(
        e[0].to_string().split(':').take(2).collect::<Vec<_>>(),
        ["7", "9"]
    );

    let escape = text.replace("nothere.txt", "../../etc/passwd");
    let e = findings(translate(&escape, &options).unwrap_err());
    assert_eq!(
        e[0].message,
        "local file path traverses outside the files directory"
    );
}

#[test]
fn unknown_keys_warn_and_fail_with_strict() {
    let text = "variant: flatcar\nversion: 1.1.0\nstorage:\n  files:\n    - path: /a\n      bogus_key: 1\n      wipeTable: true\n";
    let out = translate_ok(text, &Options::default());
    let paths: Vec<(&str, Option<Pos>)> = out
        .warnings
        .iter()
        .map(|w| (w.yaml_path.as_str(), w.pos))
        .collect();
    assert!(
        paths.contains(&(
            "storage.files.0.bogus_key",
            Some(Pos { line: 6, column: 7 })
        )),
        "{paths:?}"
    );
    assert!(
        paths.iter().any(|(p, _)| *p == "storage.files.0.wipeTable"),
        "{paths:?}"
    );
    assert!(
        out.config["storage"]["files"][0].get("bogusKey").is_none(),
        "unknown keys are dropped"
    );

    let strict = Options {
        strict: true,
        ..Options::default()
    };
    let f = findings(translate(text, &strict).unwrap_err());
    assert!(
        f.iter().any(|f| f.to_string()
            == "6:7: warning at $.storage.files.0.bogus_key: unused key bogus_key"),
        "{f:?}"
    );
}

#[test]
fn sugar_missing_from_the_version_is_an_unknown_key() {
    // trees arrived in fcos 1.1.0; contents_local in flatcar 1.1.0.
    let text = "variant: fcos\nversion: 1.0.0\nstorage:\n  trees:\n    - local: x\n";
    let out = translate_ok(text, &Options::default());
    assert_eq!(out.warnings[0].yaml_path, "storage.trees");
    let text = "variant: flatcar\nversion: 1.0.0\nsystemd:\n  units:\n    - name: a.service\n      contents_local: a\n";
    let out = translate_ok(text, &Options::default());
    assert_eq!(out.warnings[0].yaml_path, "systemd.units.0.contents_local");
}

#[test]
fn yaml_errors_carry_line_and_column() {
    let err = translate(
        "variant: flatcar\nversion: 1.0.0\nstorage: [\n",
        &Options::default(),
    )
    .unwrap_err();
    let ButaneError::Syntax { pos, .. } = err else {
        panic!("{err:?}")
    };
    assert!(pos.line >= 3, "{pos}");
    let e = findings(translate("version: 1.0.0\n", &Options::default()).unwrap_err());
    assert_eq!(e[0].message, "error parsing variant; must be specified");
    let e = findings(
        translate(
            "variant: flatcar\nversion: 1.2.0-experimental\n",
            &Options::default(),
        )
        .unwrap_err(),
    );
    assert_eq!(
        (e[0].yaml_path.as_str(), e[0].pos),
        (
            "version",
            Some(Pos {
                line: 2,
                column: 10
            })
        )
    );
}

#[test]
fn ignition_type_errors_point_at_the_yaml() {
    let text = "variant: flatcar\nversion: 1.0.0\nstorage:\n  files:\n    - path: /a\n      mode: \"0644\"\n";
    let e = findings(translate(text, &Options::default()).unwrap_err());
    let err = e.iter().find(|f| f.is_error()).unwrap();
    assert_eq!(err.yaml_path, "storage.files.0.mode");
    assert_eq!(err.pos, Some(Pos { line: 6, column: 7 }));
}

#[test]
fn decimal_mode_warns() {
    let text =
        fs::read_to_string(corpus_dir().join("B08-flatcar-1_1-decimal-mode-warning.bu")).unwrap();
    let out = translate_ok(&text, &Options::default());
    assert!(out
        .warnings
        .iter()
        .any(|w| w.yaml_path == "storage.files.0.mode"
            && w.message
                .starts_with("unreasonable mode would be reasonable if specified in octal")));
    assert!(translate(
        &text,
        &Options {
            strict: true,
            ..Options::default()
        }
    )
    .is_err());
}

#[test]
fn swap_unit_kernel_arguments_and_boot_device() {
    let text = fs::read_to_string(corpus_dir().join("B07-fcos-1_4-swap-unit.bu")).unwrap();
    let out = translate_ok(&text, &Options::default());
    assert_eq!(out.config["ignition"]["version"], "3.3.0");
    let unit = &out.config["systemd"]["units"][0];
    assert_eq!(unit["name"], "dev-disk-by\\x2dpartlabel-swap.swap");
    assert_eq!(
        unit["contents"],
        "# Generated by Butane\n[Swap]\nWhat=/dev/disk/by-partlabel/swap\n\n[Install]\nRequiredBy=swap.target"
    );

    let text = "variant: flatcar\nversion: 1.0.0\nkernel_arguments:\n  should_exist: [quiet]\n  should_not_exist: [debug]\n";
    let out = translate_ok(
        text,
        &Options {
            strict: true,
            ..Options::default()
        },
    );
    assert_eq!(
        out.config["kernelArguments"],
        json!({"shouldExist": ["quiet"], "shouldNotExist": ["debug"]})
    );

    let text = "variant: fcos\nversion: 1.3.0\nboot_device:\n  luks:\n    tpm2: true\n  mirror:\n    devices: [/dev/sda, /dev/sdb]\n";
    let out = translate_ok(
        text,
        &Options {
            strict: true,
            ..Options::default()
        },
    );
    let s = &out.config["storage"];
    assert_eq!(s["disks"].as_array().unwrap().len(), 2);
    assert_eq!(s["disks"][1]["partitions"][3]["label"], "root-2");
    assert_eq!(
        s["raid"][1],
        json!({"name": "md-root", "level": "raid1", "devices": ["/dev/disk/by-partlabel/root-1", "/dev/disk/by-partlabel/root-2"]})
    );
    assert_eq!(s["luks"][0]["device"], "/dev/md/md-root");
    assert_eq!(s["luks"][0]["clevis"], json!({"tpm2": true}));
    assert_eq!(
        s["filesystems"].as_array().unwrap().last().unwrap()["device"],
        "/dev/mapper/root"
    );

    // flatcar has no boot_device.
    let text = "variant: flatcar\nversion: 1.1.0\nboot_device:\n  luks:\n    tpm2: true\n";
    let out = translate_ok(text, &Options::default());
    assert_eq!(out.warnings[0].yaml_path, "boot_device");
}

/// Creates every `local`/`contents_local`/`ssh_authorized_keys_local` file (and tree
/// directory) that an example names, with placeholder contents.
fn stage_local_files(text: &str, dir: &Path) {
    let mut in_trees = false;
    let mut in_key_list = false;
    for line in text.lines() {
        let t = line.trim_start().trim_start_matches("- ");
        if t.starts_with("trees:") {
            in_trees = true;
        } else if !line.starts_with(' ') {
            in_trees = false;
        }
        let value = |prefix: &str| {
            t.strip_prefix(prefix)
                .map(|v| v.trim().trim_matches('"').to_string())
        };
        if let Some(p) = value("ssh_authorized_keys_local:") {
            in_key_list = p.is_empty();
            if !p.is_empty() {
                fs::write(dir.join(&p), "ssh-ed25519 AAAA placeholder\n").unwrap();
            }
            continue;
        }
        if in_key_list {
            if let Some(p) = line.trim_start().strip_prefix("- ") {
                let p = dir.join(p.trim());
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(p, "ssh-ed25519 AAAA placeholder\n").unwrap();
                continue;
            }
            in_key_list = false;
        }
        if let Some(p) = value("local:").or_else(|| value("contents_local:")) {
            let path = dir.join(&p);
            if in_trees {
                fs::create_dir_all(&path).unwrap();
                fs::write(path.join("placeholder"), "x\n").unwrap();
            } else {
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, format!("[Unit]\nDescription=placeholder {p}\n")).unwrap();
            }
        }
    }
}

/// Documentation examples that are themselves wrong: (file, where the error must be, why).
const BROKEN_DOC_EXAMPLES: &[(&str, &str, &str)] = &[
    (
        "os-config_network_overlaybd-artifact-streaming-2.bu",
        "at 13:7",
        "the second files entry is indented deeper than the first: not YAML",
    ),
    (
        "orchestrate_containers_switching-to-unified-cgroups-1.bu",
        "5:11: error at $.storage.filesystems.0.device",
        "uses the old Container Linux Config keys `name`/`mount` (unknown in Butane), so the \
         filesystem has no device",
    ),
];

#[test]
fn flatcar_doc_examples_convert() {
    let validate = "/usr/bin/ignition-validate";
    assert!(
        Path::new(validate).exists(),
        "{validate} is missing: install the Debian package `ignition`"
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/flatcar-docs");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".bu"))
        .collect();
    names.sort();
    let (mut converted, mut validated, mut experimental) = (0, 0, Vec::new());
    let mut failures = Vec::new();
    for name in &names {
        let text = fs::read_to_string(dir.join(name)).unwrap();
        if let Some((_, at, why)) = BROKEN_DOC_EXAMPLES.iter().find(|(n, _, _)| n == name) {
            // Wrong in the documentation itself; Butane refuses them too.
            match translate(&text, &Options::default()) {
                Err(e) if e.to_string().contains(at) => {
                    println!("  {name}: refused as expected ({why}): {e}")
                }
                other => failures.push(format!("{name}: expected an error at {at}: {other:?}")),
            }
            continue;
        }
        let files = tempfile::tempdir().unwrap();
        stage_local_files(&text, files.path());
        let options = Options {
            files_dir: Some(files.path().to_path_buf()),
            strict: false,
        };
        if text.contains("version: 1.2.0-experimental") {
            // Not a stable spec: refused, naming the version line.
            match translate(&text, &options) {
                Err(ButaneError::Invalid { findings, .. })
                    if findings[0].yaml_path == "version" =>
                {
                    experimental.push(name.clone())
                }
                other => failures.push(format!("{name}: experimental spec not refused: {other:?}")),
            }
            continue;
        }
        let out = match translate(&text, &options) {
            Ok(out) => out,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        converted += 1;
        let spec = out.config["ignition"]["version"]
            .as_str()
            .unwrap()
            .to_string();
        if spec.as_str() <= "3.3.0" {
            let file = files.path().join("out.ign");
            fs::write(&file, out.to_json()).unwrap();
            let res = Command::new(validate).arg(&file).output().unwrap();
            if res.status.success() {
                validated += 1;
            } else {
                failures.push(format!(
                    "{name}: ignition-validate refused our output: {}{}",
                    String::from_utf8_lossy(&res.stdout),
                    String::from_utf8_lossy(&res.stderr)
                ));
            }
        }
    }
    println!(
        "flatcar docs: {converted} of {} examples converted, {validated} validated by ignition-validate 2.14 (spec <= 3.3.0), {} experimental refused",
        names.len(),
        experimental.len()
    );
    assert!(
        failures.is_empty(),
        "{} example(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(converted > 100, "only {converted} examples");
}
