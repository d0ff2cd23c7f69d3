//! Property tests: [`crate::parse_config`] (and merge/validate behind it) never panics, whatever
//! the bytes. Three generators: raw bytes, arbitrary JSON text, and JSON trees built from
//! Ignition's own key names and version strings so that the decoder and validator are reached.
//! Case counts are printed (run with `--nocapture` to see them).

use proptest::prelude::*;
use serde_json::{Map, Value};

use crate::{merge, parse_config, resolve_references};

const KEYS: &[&str] = &[
    "ignition",
    "version",
    "config",
    "merge",
    "replace",
    "source",
    "compression",
    "verification",
    "hash",
    "httpHeaders",
    "name",
    "value",
    "proxy",
    "httpsProxy",
    "noProxy",
    "storage",
    "files",
    "directories",
    "links",
    "path",
    "mode",
    "overwrite",
    "contents",
    "append",
    "user",
    "group",
    "id",
    "target",
    "hard",
    "disks",
    "device",
    "partitions",
    "number",
    "label",
    "sizeMiB",
    "startMiB",
    "typeGuid",
    "shouldExist",
    "filesystems",
    "format",
    "wipeFilesystem",
    "options",
    "raid",
    "level",
    "devices",
    "spares",
    "luks",
    "clevis",
    "tang",
    "url",
    "thumbprint",
    "advertisement",
    "custom",
    "pin",
    "cex",
    "enabled",
    "systemd",
    "units",
    "dropins",
    "mask",
    "passwd",
    "users",
    "groups",
    "sshAuthorizedKeys",
    "uid",
    "gid",
    "kernelArguments",
    "shouldNotExist",
    "Path",
];
const STRINGS: &[&str] = &[
    "3.0.0",
    "3.1.0",
    "3.2.0",
    "3.3.0",
    "3.4.0",
    "3.5.0",
    "3.6.0",
    "2.2.0",
    "",
    "/",
    "/etc/foo",
    "/a/../b",
    "rel",
    "data:,x",
    "data:;base64,eA==",
    "data:;base64,!",
    "https://e.x/c",
    "s3://b/k?versionId=",
    "arn:aws:s3:::b",
    "gzip",
    "xz",
    "sha512-00",
    "sha256-",
    "[Unit]\n",
    "[Install]\nWantedBy=a.target\n",
    "[Foo",
    "a@.service",
    "a@b.service",
    "x.conf",
    "ext4",
    "none",
    "raid1",
    "linear",
    "01234567-89AB-CDEF-EDCB-A98765432101",
];

fn ignition_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-5i64..5000).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(STRINGS).prop_map(|s| Value::String(s.to_string())),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..7).prop_map(|kv| {
                Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

/// Puts a supported version in place most of the time, so validation is reached.
fn with_version(mut v: Value, version: &str) -> Value {
    if let Value::Object(map) = &mut v {
        let ign = map
            .entry("ignition")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(ign) = ign {
            ign.insert("version".into(), Value::String(version.into()));
        }
    }
    v
}

const CASES: u32 = 4000;

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn raw_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_config(&bytes);
    }

    #[test]
    fn arbitrary_json_text_never_panics(text in "[{}\\[\\]\":,0-9a-z .\\-]{0,200}") {
        let _ = parse_config(text.as_bytes());
    }

    #[test]
    fn ignition_shaped_trees_never_panic(
        a in ignition_json(),
        b in ignition_json(),
        version in prop::sample::select(&STRINGS[..8]),
    ) {
        let a = with_version(a, version);
        let b = with_version(b, "3.6.0");
        let pa = parse_config(a.to_string().as_bytes());
        let pb = parse_config(b.to_string().as_bytes());
        if let (Ok(pa), Ok(pb)) = (pa, pb) {
            let merged = merge(pa.config, pb.config);
            let _ = crate::validate(&merged);
            let _ = resolve_references(merged);
        }
    }
}

#[test]
fn report_fuzz_case_count() {
    println!(
        "parser property tests: 3 generators x {CASES} cases each = {} inputs",
        3 * CASES
    );
}
