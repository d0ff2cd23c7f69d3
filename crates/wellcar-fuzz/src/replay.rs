//! Plain mode of the `fuzz-<name>` binaries: run a target over files, without AFL++.
//!
//! Contract: [`replay`] runs the target once per input file (a directory stands for the regular
//! files in it, recursively, in name order, dotfiles skipped), then over `mutations` mutants of
//! those files ([`crate::mutate`], fixed rng seed). A panic is caught and recorded with the
//! input's name (a mutant's bytes are shown escaped, so it can be saved and replayed); a stack
//! overflow or abort ends the process, as it would under AFL++. Reproduce an AFL++ crash with
//! `fuzz-<name> target/fuzz/out/<name>/default/crashes/<file>`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use crate::mutate::Mutants;
use crate::Target;

/// The rng seed of the mutants: fixed, so runs repeat.
const RNG_SEED: u64 = 0x5745_4c4c_4341_5221;

/// Reading the inputs failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A file or directory could not be read.
    #[error("reading fuzz input {path}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Inputs run: files plus mutants.
    pub inputs: usize,
    /// The inputs that panicked.
    pub panicked: Vec<Panicked>,
}

/// One input that panicked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked {
    /// The file name, or `mutant N of FILE: "escaped bytes"`.
    pub input: String,
    /// The panic message.
    pub message: String,
}

/// Arguments of a `fuzz-<name>` binary built without the `afl` feature.
#[derive(Debug, Parser)]
#[command(about = "Replays fuzz inputs through one target (AFL++ builds read stdin instead)")]
struct Args {
    /// Files or directories of inputs; default: the target's seed corpus.
    paths: Vec<PathBuf>,
    /// Also run this many deterministic mutants of the inputs.
    #[arg(long, default_value_t = 0)]
    mutations: usize,
}

/// `fuzz-<name> [--mutations N] [PATH...]`: replays, prints a one-line summary and each
/// panicking input, and fails if any input panicked.
pub fn main(target: &Target) -> ExitCode {
    let args = Args::parse();
    let paths = if args.paths.is_empty() {
        vec![target.corpus_dir()]
    } else {
        args.paths
    };
    match replay(target, &paths, args.mutations) {
        Ok(report) => {
            println!(
                "fuzz-{}: {} inputs, {} panicked",
                target.name,
                report.inputs,
                report.panicked.len()
            );
            for p in &report.panicked {
                println!("  panicked: {}: {}", p.input, p.message);
            }
            if report.panicked.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!(
                "fuzz-{}: {}",
                target.name,
                wellcar_contract::error_chain(&e)
            );
            ExitCode::FAILURE
        }
    }
}

/// Runs `target` over the files under `paths`, then over `mutations` mutants of them.
pub fn replay(target: &Target, paths: &[PathBuf], mutations: usize) -> Result<Report, ReplayError> {
    let files = collect_inputs(paths)?;
    let mut seeds = Vec::with_capacity(files.len());
    let mut report = Report::default();
    for file in &files {
        let bytes = std::fs::read(file).map_err(|source| ReplayError::Read {
            path: file.clone(),
            source,
        })?;
        if let Err(message) = run_catching(target, &bytes) {
            report.panicked.push(Panicked {
                input: file.display().to_string(),
                message,
            });
        }
        report.inputs += 1;
        seeds.push(bytes);
    }
    for (n, (seed, mutant)) in Mutants::new(seeds, RNG_SEED).take(mutations).enumerate() {
        if let Err(message) = run_catching(target, &mutant) {
            let from = files
                .get(seed)
                .map_or_else(|| "the empty input".to_owned(), |f| f.display().to_string());
            report.panicked.push(Panicked {
                input: format!("mutant {n} of {from}: \"{}\"", mutant.escape_ascii()),
                message,
            });
        }
        report.inputs += 1;
    }
    Ok(report)
}

/// Runs the target on one input; `Err` carries the panic message.
fn run_catching(target: &Target, input: &[u8]) -> Result<(), String> {
    let run = target.run;
    std::panic::catch_unwind(|| run(input)).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(a panic without a message)".to_owned())
    })
}

/// The regular files named by `paths`: files as given, directories walked recursively in name
/// order, dotfiles skipped.
pub fn collect_inputs(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ReplayError> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, &mut files)?;
    }
    Ok(files)
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) -> Result<(), ReplayError> {
    let read_err = |source| ReplayError::Read {
        path: path.to_owned(),
        source,
    };
    if !std::fs::metadata(path).map_err(read_err)?.is_dir() {
        files.push(path.to_owned());
        return Ok(());
    }
    let mut entries = std::fs::read_dir(path)
        .and_then(|dir| dir.collect::<Result<Vec<_>, _>>())
        .map_err(read_err)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if !entry.file_name().to_string_lossy().starts_with('.') {
            collect(&entry.path(), files)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panics_on_bang(data: &[u8]) {
        assert!(!data.contains(&b'!'), "found a bang");
    }

    const BANG: Target = Target {
        name: "bang",
        exercises: "a target that panics on '!'",
        run: panics_on_bang,
    };

    #[test]
    fn a_panicking_input_is_reported_by_name_and_the_others_run() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a-fine"), b"hello").unwrap();
        std::fs::write(dir.path().join("b-bad"), b"hi!").unwrap();
        std::fs::write(dir.path().join(".hidden"), b"!").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/c-fine"), b"ok").unwrap();

        let report = replay(&BANG, &[dir.path().to_owned()], 0).unwrap();
        assert_eq!(report.inputs, 3);
        assert_eq!(
            report.panicked,
            vec![Panicked {
                input: dir.path().join("b-bad").display().to_string(),
                message: "found a bang".into(),
            }]
        );
    }

    #[test]
    fn mutants_that_panic_are_reported_with_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("seed"), b"a=b\n").unwrap();
        let report = replay(&BANG, &[dir.path().to_owned()], 2000).unwrap();
        assert_eq!(report.inputs, 2001);
        let mutant = report.panicked.first().expect("some mutant inserts a '!'");
        assert!(
            mutant.input.starts_with("mutant ") && mutant.input.contains('!'),
            "{mutant:?}"
        );
    }

    #[test]
    fn a_missing_input_is_an_error_naming_it() {
        let missing = PathBuf::from("/nonexistent/fuzz-input");
        let err = replay(&BANG, std::slice::from_ref(&missing), 0).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/fuzz-input"), "{err}");
    }
}
