//! Fuzz targets for every parser that reads bytes from the network, a disk or an operator's
//! file: Omaha requests and responses, the payload header, manifest and signature block,
//! Ignition configs, `update.conf`, the kernel command line and the GRUB environment block.
//!
//! Contract:
//! - A [`Target`] takes arbitrary bytes and must not panic, abort, overflow the stack or hang,
//!   whatever the bytes. Where the owning crate also writes the format, a target checks more
//!   than "no panic": what it parsed, written back out, parses again to the same value.
//! - Each target is a binary `fuzz-<name>` (`src/bin/`). Built with the `afl` feature (only
//!   `scripts/fuzz.sh` does, adding AFL++'s instrumentation and runtime), it is an AFL++
//!   persistent-mode harness. Without it, it replays inputs ([`replay`]): the files and
//!   directories given as arguments, by default the target's seed corpus `corpus/<name>/`, plus
//!   `--mutations N` deterministic mutants of them ([`mutate`]); it exits non-zero when an
//!   input panicked, naming the file. So the binaries build and run on a plain toolchain, and
//!   `cargo test` runs every target over its seeds and a few hundred mutants.
//! - Seeds are small real inputs: Omaha documents from the compatibility corpus, Ignition
//!   configs, payload headers and manifests in the shape `wellcar-payload` writes, update.conf
//!   files, kernel command lines as GRUB passes them, environment blocks as `envblock::encode`
//!   writes them.
//! - A crash AFL++ finds becomes a regression test next to the parser it crashed, in the crate
//!   that owns it.

use std::path::PathBuf;

pub mod mutate;
pub mod replay;
#[cfg(test)]
mod seeds;
pub mod targets;

/// One fuzz target: a parser (or a parse-then-use pipeline) fed arbitrary bytes.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Short name: the binary is `fuzz-<name>`, the seed corpus `corpus/<name>/`.
    pub name: &'static str,
    /// What it exercises, for humans (the fuzz table, the docs).
    pub exercises: &'static str,
    /// Runs the parser on one input; panics on a bug.
    pub run: fn(&[u8]),
}

impl Target {
    /// The directory of this target's seed inputs, in the source tree.
    pub fn corpus_dir(&self) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(self.name)
    }
}

/// Every target, in the order `scripts/fuzz.sh` runs them.
pub const TARGETS: &[Target] = &[
    targets::omaha::REQUEST,
    targets::omaha::RESPONSE,
    targets::payload::HEADER,
    targets::payload::MANIFEST,
    targets::payload::HEAD,
    targets::ignition::CONFIG,
    targets::update_conf::UPDATE_CONF,
    targets::cmdline::KERNEL_CMDLINE,
    targets::envblock::GRUB_ENVBLOCK,
];

/// The `main` of every `fuzz-<name>` binary: an AFL++ persistent-mode loop when built with the
/// `afl` feature, else [`replay::main`].
pub fn main(target: &Target) -> std::process::ExitCode {
    #[cfg(feature = "afl")]
    {
        afl::fuzz(true, target.run);
        std::process::ExitCode::SUCCESS
    }
    #[cfg(not(feature = "afl"))]
    {
        replay::main(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every target has its own binary, its own seeds, and a name the script can use.
    #[test]
    fn every_target_has_a_binary_and_a_small_seed_corpus() {
        let bins = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/bin");
        let mut names: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TARGETS.len(), "target names are unique");
        for target in TARGETS {
            assert!(
                target
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-'),
                "{}: lower-case and dashes only",
                target.name
            );
            let bin = bins.join(format!("fuzz-{}.rs", target.name));
            assert!(bin.is_file(), "{} is missing", bin.display());
            let seeds = replay::collect_inputs(&[target.corpus_dir()]).unwrap();
            assert!(!seeds.is_empty(), "{}: no seeds", target.name);
            for seed in &seeds {
                let len = std::fs::metadata(seed).unwrap().len();
                assert!(len <= 8 * 1024, "{}: seeds stay small", seed.display());
            }
        }
    }

    /// The replay mode every binary falls back to passes over each target's seeds and a few
    /// hundred mutants of them: what `cargo test` can do without AFL++.
    #[test]
    fn every_target_survives_its_seeds_and_their_mutants() {
        for target in TARGETS {
            let report = replay::replay(target, &[target.corpus_dir()], 300).unwrap();
            assert!(
                report.inputs > 300,
                "{}: ran {}",
                target.name,
                report.inputs
            );
            assert!(
                report.panicked.is_empty(),
                "{}: {:#?}",
                target.name,
                report.panicked
            );
        }
    }
}
