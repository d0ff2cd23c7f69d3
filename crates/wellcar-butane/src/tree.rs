//! `storage.trees`: a local directory embedded as files (data URLs; mode 0755 when any execute
//! bit is set, else 0644, unless the config sets one) and links (targets verbatim). Directories
//! themselves are not emitted. An explicit `files`/`links` entry for the same path may set
//! attributes but not contents or a target.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::convert::join;
use crate::resource::{data_url, local_path};
use crate::sugar::Ctx;
use crate::variant::Sugar;

/// Expands `storage.trees` (if the flavor has it) into `storage.files` and `storage.links`.
pub fn expand(root: &mut Value, ctx: &mut Ctx<'_>) {
    if !ctx.flavor.has(Sugar::Trees) {
        return;
    }
    let Some(storage) = root.get_mut("storage").and_then(Value::as_object_mut) else {
        return;
    };
    let Some(trees) = storage.remove("trees") else {
        return;
    };
    let Value::Array(trees) = trees else {
        ctx.error("storage.trees", "trees must be a list");
        return;
    };
    for (i, tree) in trees.iter().enumerate() {
        let tree_path = format!("storage.trees.{i}");
        let Some(local) = tree.get("local").and_then(Value::as_str) else {
            ctx.error(&tree_path, "local is required");
            continue;
        };
        let target = tree.get("path").and_then(Value::as_str).unwrap_or("/");
        let local_field = join(&tree_path, "local");
        let dir = match local_path(ctx.files_dir, local) {
            Ok(dir) => dir,
            Err(e) => {
                ctx.error(&local_field, e.to_string());
                continue;
            }
        };
        if !fs::metadata(&dir).map(|m| m.is_dir()).unwrap_or(false) {
            ctx.error(&local_field, "root of tree must be a directory");
            continue;
        }
        let mut entries = Vec::new();
        if let Err(e) = walk(&dir, "", &mut entries) {
            ctx.error(&local_field, format!("reading {}: {e}", dir.display()));
            continue;
        }
        for (relative, kind) in entries {
            let path = if target.ends_with('/') {
                format!("{target}{relative}")
            } else {
                format!("{target}/{relative}")
            };
            match kind {
                Node::File {
                    contents,
                    executable,
                } => add_file(storage, ctx, &tree_path, &path, &contents, executable),
                Node::Link(link_target) => add_link(storage, ctx, &tree_path, &path, &link_target),
                Node::Other => ctx.error(
                    &local_field,
                    format!("{relative}: trees may only contain files, directories, and symlinks"),
                ),
            }
        }
    }
}

enum Node {
    File { contents: Vec<u8>, executable: bool },
    Link(String),
    Other,
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<(String, Node)>) -> std::io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let full = dir.join(&name);
        let relative = format!("{prefix}{}", name.to_string_lossy());
        let meta = fs::symlink_metadata(&full)?;
        let kind = meta.file_type();
        if kind.is_dir() {
            walk(&full, &format!("{relative}/"), out)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&full)?;
            out.push((relative, Node::Link(target.to_string_lossy().into_owned())));
        } else if kind.is_file() {
            out.push((
                relative,
                Node::File {
                    contents: fs::read(&full)?,
                    executable: meta.permissions().mode() & 0o111 != 0,
                },
            ));
        } else {
            out.push((relative, Node::Other));
        }
    }
    Ok(())
}

/// The index of the entry with `path` in `storage.<section>`.
fn find(storage: &Map<String, Value>, section: &str, path: &str) -> Option<usize> {
    storage
        .get(section)?
        .as_array()?
        .iter()
        .position(|e| e.get("path").and_then(Value::as_str) == Some(path))
}

fn list<'m>(storage: &'m mut Map<String, Value>, section: &str) -> &'m mut Vec<Value> {
    let entry = storage
        .entry(section.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !entry.is_array() {
        *entry = Value::Array(Vec::new());
    }
    entry.as_array_mut().expect("just made an array")
}

fn add_file(
    storage: &mut Map<String, Value>,
    ctx: &mut Ctx<'_>,
    tree_path: &str,
    path: &str,
    contents: &[u8],
    executable: bool,
) {
    let conflict = ["directories", "links"]
        .iter()
        .find_map(|s| find(storage, s, path).map(|i| format!("storage.{s}.{i}")));
    if let Some(conflict) = conflict {
        ctx.error(
            &conflict,
            "matching filesystem node has existing contents or different type",
        );
        return;
    }
    let (url, compression) = data_url(contents, true);
    let mut generated = json!({"source": url});
    if let Some(c) = compression {
        generated["compression"] = Value::String(c.to_string());
    }
    let mode = if executable { 0o755 } else { 0o644 };
    match find(storage, "files", path) {
        Some(i) => {
            let field = format!("storage.files.{i}");
            let entry = &mut list(storage, "files")[i];
            if entry
                .get("contents")
                .and_then(|c| c.get("source"))
                .is_some()
            {
                ctx.error(
                    &field,
                    "matching filesystem node has existing contents or different type",
                );
                return;
            }
            entry["contents"] = generated;
            if entry.get("mode").is_none() {
                entry["mode"] = Value::from(mode);
            }
        }
        None => {
            let files = list(storage, "files");
            ctx.sources
                .alias(&format!("storage.files.{}", files.len()), tree_path);
            files.push(json!({"path": path, "contents": generated, "mode": mode}));
        }
    }
}

fn add_link(
    storage: &mut Map<String, Value>,
    ctx: &mut Ctx<'_>,
    tree_path: &str,
    path: &str,
    target: &str,
) {
    let conflict = ["directories", "files"]
        .iter()
        .find_map(|s| find(storage, s, path).map(|i| format!("storage.{s}.{i}")));
    if let Some(conflict) = conflict {
        ctx.error(
            &conflict,
            "matching filesystem node has existing contents or different type",
        );
        return;
    }
    match find(storage, "links", path) {
        Some(i) => {
            let field = format!("storage.links.{i}");
            let entry = &mut list(storage, "links")[i];
            if entry.get("target").is_some() {
                ctx.error(
                    &field,
                    "matching filesystem node has existing contents or different type",
                );
                return;
            }
            entry["target"] = Value::String(target.to_string());
        }
        None => {
            let links = list(storage, "links");
            ctx.sources
                .alias(&format!("storage.links.{}", links.len()), tree_path);
            links.push(json!({"path": path, "target": target}));
        }
    }
}
