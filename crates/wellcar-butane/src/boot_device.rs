//! `boot_device` (fcos 1.3.0+): LUKS-encrypt and/or mirror the root disk. Rendered as Butane
//! does: for a mirror, each device gets a fresh table with BIOS/PReP/reserved, ESP/reserved,
//! `boot-N` (384 MiB) and `root-N` partitions, `md-boot` (RAID 1, metadata 1.0, ext4 `boot`) and
//! `md-root` (RAID 1); with LUKS, `root` is opened from `/dev/disk/by-partlabel/root` (or
//! `/dev/md/md-root`) with Clevis (Tang/TPM2) or CEX; the root filesystem is xfs labelled
//! `root`. The rendered storage is the parent and the user's own entries win on the same key.

use serde_json::{json, Map, Value};

use crate::sugar::Ctx;
use crate::variant::Sugar;

const BIOS_TYPE_GUID: &str = "21686148-6449-6E6F-744E-656564454649";
const PREP_TYPE_GUID: &str = "9E1A2D38-C612-4316-AA26-8B49521E5A8B";
const ESP_TYPE_GUID: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const RESERVED_TYPE_GUID: &str = "8DA63339-0007-60C0-C436-083AC8230908";

/// Renders `bootDevice` (if the flavor has it) into `storage`.
pub fn expand(root: &mut Value, ctx: &mut Ctx<'_>) {
    if !ctx.flavor.has(Sugar::BootDevice) {
        return;
    }
    let Some(boot) = root.as_object_mut().and_then(|r| r.remove("bootDevice")) else {
        return;
    };
    let field = "bootDevice";
    let newest = ctx.flavor.has(Sugar::BootDeviceLuksDeviceCex);
    let layout = boot
        .get("layout")
        .and_then(Value::as_str)
        .unwrap_or("x86_64");
    let (bios, esp, prep) = match layout {
        "x86_64" => (true, true, false),
        "aarch64" => (false, true, false),
        "ppc64le" => (false, false, true),
        "s390x-eckd" | "s390x-virt" | "s390x-zfcp" if newest => (false, false, false),
        _ if newest => {
            ctx.error(&format!("{field}.layout"), "layout must be one of: aarch64, ppc64le, s390x-eckd, s390x-virt, s390x-zfcp, x86_64");
            return;
        }
        _ => {
            ctx.error(
                &format!("{field}.layout"),
                "layout must be one of: aarch64, ppc64le, x86_64",
            );
            return;
        }
    };
    let luks = boot.get("luks").cloned().unwrap_or(Value::Null);
    let tang = luks
        .get("tang")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let tpm2 = luks.get("tpm2") == Some(&Value::Bool(true));
    let cex = luks.get("cex").and_then(|c| c.get("enabled")) == Some(&Value::Bool(true));
    let want_luks = tpm2 || !tang.is_empty() || cex;
    let devices: Vec<String> = boot
        .get("mirror")
        .and_then(|m| m.get("devices"))
        .and_then(Value::as_array)
        .map(|d| {
            d.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let want_mirror = !devices.is_empty();
    if !want_luks && !want_mirror {
        return;
    }
    if want_mirror && devices.len() < 2 {
        ctx.error(
            &format!("{field}.mirror.devices"),
            "mirroring requires at least two devices",
        );
        return;
    }
    if want_mirror && layout.starts_with("s390x") {
        ctx.error(
            &format!("{field}.mirror"),
            "mirroring not supported on layouts: s390x-eckd, s390x-zfcp, s390x-virt",
        );
        return;
    }
    let mut rendered = json!({"disks": [], "raid": [], "luks": [], "filesystems": []});
    if want_mirror {
        for (i, device) in devices.iter().enumerate() {
            let n = i + 1;
            let mut partitions = Vec::new();
            partitions.push(if bios {
                json!({"label": format!("bios-{n}"), "sizeMiB": 1, "typeGuid": BIOS_TYPE_GUID})
            } else if prep {
                json!({"label": format!("prep-{n}"), "sizeMiB": 4, "typeGuid": PREP_TYPE_GUID})
            } else {
                json!({"label": format!("reserved-{n}"), "sizeMiB": 1, "typeGuid": RESERVED_TYPE_GUID})
            });
            partitions.push(if esp {
                json!({"label": format!("esp-{n}"), "sizeMiB": 127, "typeGuid": ESP_TYPE_GUID})
            } else {
                json!({"label": format!("reserved-{n}"), "sizeMiB": 1, "typeGuid": RESERVED_TYPE_GUID})
            });
            partitions.push(json!({"label": format!("boot-{n}"), "sizeMiB": 384}));
            partitions.push(json!({"label": format!("root-{n}")}));
            push(
                &mut rendered,
                "disks",
                json!({"device": device, "wipeTable": true, "partitions": partitions}),
            );
            if esp {
                push(
                    &mut rendered,
                    "filesystems",
                    json!({
                    "device": format!("/dev/disk/by-partlabel/esp-{n}"), "format": "vfat",
                    "label": format!("esp-{n}"), "wipeFilesystem": true}),
                );
            }
        }
        let members = |prefix: &str| -> Vec<String> {
            (1..=devices.len())
                .map(|n| format!("/dev/disk/by-partlabel/{prefix}-{n}"))
                .collect()
        };
        push(
            &mut rendered,
            "raid",
            json!({"name": "md-boot", "level": "raid1", "devices": members("boot"), "options": ["--metadata=1.0"]}),
        );
        push(
            &mut rendered,
            "raid",
            json!({"name": "md-root", "level": "raid1", "devices": members("root")}),
        );
        push(
            &mut rendered,
            "filesystems",
            json!({"device": "/dev/md/md-boot", "format": "ext4", "label": "boot", "wipeFilesystem": true}),
        );
    }
    if want_luks {
        let luks_device = luks.get("device").and_then(Value::as_str);
        let device = match (layout, luks_device) {
            ("s390x-eckd" | "s390x-zfcp", None) => {
                ctx.error(
                    &format!("{field}.luks.device"),
                    "device is required for layouts: s390x-eckd, s390x-zfcp",
                );
                return;
            }
            ("s390x-eckd", Some(d)) => format!("{d}2"),
            ("s390x-zfcp", Some(d)) => format!("{d}4"),
            _ if want_mirror => "/dev/md/md-root".to_string(),
            _ => "/dev/disk/by-partlabel/root".to_string(),
        };
        let mut volume =
            json!({"name": "root", "device": device, "label": "luks-root", "wipeVolume": true});
        if let Some(discard) = luks.get("discard") {
            volume["discard"] = discard.clone();
        }
        if cex {
            volume["cex"] = json!({"enabled": true});
        } else {
            let mut clevis = Map::new();
            for key in ["tang", "threshold", "tpm2"] {
                if let Some(v) = luks.get(key) {
                    clevis.insert(key.to_string(), v.clone());
                }
            }
            volume["clevis"] = Value::Object(clevis);
        }
        push(&mut rendered, "luks", volume);
    }
    let root_device = if want_luks {
        "/dev/mapper/root"
    } else {
        "/dev/md/md-root"
    };
    push(
        &mut rendered,
        "filesystems",
        json!({"device": root_device, "format": "xfs", "label": "root", "wipeFilesystem": true}),
    );

    let storage = root
        .as_object_mut()
        .expect("root is an object")
        .entry("storage")
        .or_insert_with(|| json!({}));
    for (section, key) in [
        ("disks", "device"),
        ("raid", "name"),
        ("luks", "name"),
        ("filesystems", "device"),
    ] {
        let generated = rendered[section].as_array().cloned().unwrap_or_default();
        if generated.is_empty() {
            continue;
        }
        let user: Vec<Value> = storage
            .get(section)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut merged = Vec::new();
        let mut used = vec![false; user.len()];
        for mut entry in generated {
            let wanted = entry.get(key).cloned();
            if let Some(i) = user.iter().position(|u| u.get(key) == wanted.as_ref()) {
                used[i] = true;
                if let (Some(e), Some(u)) = (entry.as_object_mut(), user[i].as_object()) {
                    for (k, v) in u {
                        e.insert(k.clone(), v.clone());
                    }
                }
            }
            merged.push(entry);
        }
        let offset = merged.len();
        for (i, u) in user.into_iter().enumerate() {
            if !used[i] {
                let new_index = merged.len();
                ctx.sources.alias(
                    &format!("storage.{section}.{new_index}"),
                    &format!("storage.{section}.{i}"),
                );
                merged.push(u);
            }
        }
        for i in 0..offset {
            ctx.sources.alias(&format!("storage.{section}.{i}"), field);
        }
        storage[section] = Value::Array(merged);
    }
}

fn push(rendered: &mut Value, section: &str, entry: Value) {
    if let Some(list) = rendered[section].as_array_mut() {
        list.push(entry);
    }
}
