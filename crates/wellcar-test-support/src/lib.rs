//! Fixtures and helpers shared by the tests of more than one crate. **For tests only**: crates
//! take it as a `[dev-dependencies]` entry, never as a normal dependency, and nothing here is
//! part of Wellcar. It is test code: helpers fail the test (panic) with a message that says
//! what went wrong; the few that return an error do so for callers that add their own context.
//!
//! - [`build`]: a small build output directory shaped like `wellcar build`'s, and signed
//!   payloads made from it (the payload and agent tests);
//! - [`dbus`]: a private `dbus-daemon` (a permissive bus, or one with a given policy) for
//!   the D-Bus API tests;
//! - [`file_server`]: a static HTTP file server on loopback (release images, Ignition configs);
//! - [`etcd`]: a private, throw-away etcd with the v2 keys API (optionally TLS with client
//!   certificates), for locksmith's etcd-lock;
//! - [`pg_cluster`]: a private, throw-away PostgreSQL cluster (the server's tests and
//!   benchmark);
//! - [`pki`]: a throw-away CA and server certificate for TLS tests;
//! - [`tools`]: running host tools; a missing one fails the test naming its Debian package;
//! - [`wait`]: waiting on a condition with a deadline, never on a fixed sleep;
//! - [`vm`]: the VM tests' helpers over a booted machine (console tail, autologin wait, a
//!   console command with its exit status).
//!
//! A fixture that only one crate's tests use stays in that crate.

pub mod build;
pub mod dbus;
pub mod etcd;
pub mod file_server;
pub mod pg_cluster;
pub mod pki;
pub mod tools;
pub mod vm;
pub mod wait;

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every workspace manifest that names this crate names it under `[dev-dependencies]`
    /// only.
    #[test]
    fn only_dev_dependencies_name_this_crate() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut manifests = vec![root.join("tests/Cargo.toml")];
        for entry in std::fs::read_dir(root.join("crates")).unwrap() {
            let manifest = entry.unwrap().path().join("Cargo.toml");
            if manifest.is_file() {
                manifests.push(manifest);
            }
        }
        let mut users = Vec::new();
        for manifest in &manifests {
            let doc: toml::Table = std::fs::read_to_string(manifest).unwrap().parse().unwrap();
            for (section, table) in &doc {
                let names_it = table
                    .as_table()
                    .is_some_and(|t| t.contains_key("wellcar-test-support"));
                if names_it {
                    assert_eq!(
                        section,
                        "dev-dependencies",
                        "{} names wellcar-test-support under [{section}]",
                        manifest.display()
                    );
                    users.push(manifest);
                }
            }
        }
        assert!(users.len() >= 4, "{users:?}");
    }
}
