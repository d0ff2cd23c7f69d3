//! Running a host program so that its failure says what failed: the one runner every library
//! uses for `mkfs`, `qemu-img`, `blkid`, `systemctl reboot` and the like.
//!
//! Contract of [`run`]: the program runs with stdin closed and its stdout and stderr captured.
//! A zero exit gives its [`Output`]. Otherwise the error is [`CommandError::Failed`], naming
//! the program and its arguments, carrying the exit status and the tail of stderr (the last
//! [`STDERR_TAIL_LINES`] lines, at most [`STDERR_TAIL_BYTES`] bytes, invalid UTF-8 replaced),
//! where programs say why. A program that cannot be started (not installed, not executable)
//! is [`CommandError::Spawn`], naming it. Callers wrap the error in their own error type,
//! naming the device or file the command was for.
//!
//! Runners that stream a program's output themselves build the same errors with
//! [`CommandError::spawn`] and [`CommandError::failed`].

use std::process::{Command, ExitStatus, Output};

/// Lines of stderr a [`CommandError::Failed`] keeps.
pub const STDERR_TAIL_LINES: usize = 20;
/// Bytes of stderr a [`CommandError::Failed`] keeps at most (a program printing one endless
/// line does not make an endless error).
pub const STDERR_TAIL_BYTES: usize = 4096;

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started.
    #[error("cannot run `{program}`")]
    Spawn {
        /// The program as given to the command.
        program: String,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error(
        "`{}` failed ({status}){}",
        command_line(program, args),
        stderr_suffix(stderr)
    )]
    Failed {
        /// The program as given to the command.
        program: String,
        /// Its arguments.
        args: Vec<String>,
        /// How it ended.
        status: ExitStatus,
        /// The tail of its standard error, trimmed.
        stderr: String,
    },
}

impl CommandError {
    /// The error of `cmd` not starting.
    pub fn spawn(cmd: &Command, source: std::io::Error) -> Self {
        CommandError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        }
    }

    /// The error of `cmd` ending with `status`, having written `stderr` (only its tail is kept).
    pub fn failed(cmd: &Command, status: ExitStatus, stderr: &[u8]) -> Self {
        CommandError::Failed {
            program: cmd.get_program().to_string_lossy().into_owned(),
            args: cmd
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            status,
            stderr: tail(&String::from_utf8_lossy(stderr)),
        }
    }

    /// The exit status, if the program ran.
    pub fn status(&self) -> Option<ExitStatus> {
        match self {
            CommandError::Spawn { .. } => None,
            CommandError::Failed { status, .. } => Some(*status),
        }
    }
}

/// Runs `cmd` (stdin closed, output captured) and returns its output if it exited with 0.
pub fn run(cmd: &mut Command) -> Result<Output, CommandError> {
    let out = cmd.output().map_err(|e| CommandError::spawn(cmd, e))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(CommandError::failed(cmd, out.status, &out.stderr))
    }
}

/// The last [`STDERR_TAIL_LINES`] lines of `text`, at most [`STDERR_TAIL_BYTES`] bytes of them,
/// trimmed.
fn tail(text: &str) -> String {
    let text = text.trim_end();
    let mut start = 0;
    for (lines, (i, _)) in text.rmatch_indices('\n').enumerate() {
        if lines + 1 == STDERR_TAIL_LINES {
            start = i + 1;
            break;
        }
    }
    if text.len() - start > STDERR_TAIL_BYTES {
        start = text.len() - STDERR_TAIL_BYTES;
        while !text.is_char_boundary(start) {
            start += 1;
        }
    }
    text[start..].trim_start().to_owned()
}

/// `program arg...`, arguments with blanks or quotes single-quoted (for reading, not a shell).
fn command_line(program: &str, args: &[String]) -> String {
    let mut line = program.to_owned();
    for arg in args {
        line.push(' ');
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || "'\"".contains(c)) {
            line.push('\'');
            line.push_str(&arg.replace('\'', r"'\''"));
            line.push('\'');
        } else {
            line.push_str(arg);
        }
    }
    line
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        " with nothing on stderr".to_owned()
    } else {
        format!(": {stderr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_succeeds_with_its_output() {
        let out = run(Command::new("sh").args(["-c", "echo hello"])).unwrap();
        assert_eq!(out.stdout, b"hello\n");
        assert!(run(&mut Command::new("true")).unwrap().status.success());
    }

    #[test]
    fn a_failing_command_names_program_args_status_and_stderr() {
        let err =
            run(Command::new("sh").args(["-c", "echo out; echo boom >&2; exit 3"])).unwrap_err();
        let CommandError::Failed {
            program,
            args,
            status,
            stderr,
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(program, "sh");
        assert_eq!(args, &["-c", "echo out; echo boom >&2; exit 3"]);
        assert_eq!(status.code(), Some(3));
        assert_eq!(stderr, "boom");
        assert_eq!(err.status().and_then(|s| s.code()), Some(3));
        assert_eq!(
            err.to_string(),
            "`sh -c 'echo out; echo boom >&2; exit 3'` failed (exit status: 3): boom"
        );
        let quiet = run(&mut Command::new("false")).unwrap_err();
        assert_eq!(
            quiet.to_string(),
            "`false` failed (exit status: 1) with nothing on stderr"
        );
    }

    #[test]
    fn a_missing_program_is_a_spawn_error_naming_it() {
        let err = run(Command::new("wellcar-no-such-program").arg("x")).unwrap_err();
        assert!(
            matches!(&err, CommandError::Spawn { program, source }
                if program == "wellcar-no-such-program"
                    && source.kind() == std::io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "cannot run `wellcar-no-such-program`");
        assert!(err.status().is_none());
    }

    #[test]
    fn only_the_tail_of_stderr_is_kept() {
        let script = "for i in $(seq 1 30); do echo line$i >&2; done; exit 4";
        let err = run(Command::new("sh").args(["-c", script])).unwrap_err();
        let CommandError::Failed { stderr, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(stderr.starts_with("line11\nline12"), "{stderr}");
        assert!(stderr.ends_with("line30"), "{stderr}");
        assert_eq!(stderr.lines().count(), STDERR_TAIL_LINES);

        let long = format!(
            "{}é{}",
            "a".repeat(10_000),
            "b".repeat(STDERR_TAIL_BYTES - 1)
        );
        let kept = tail(&long);
        assert_eq!(
            kept,
            "b".repeat(STDERR_TAIL_BYTES - 1),
            "cut at a char boundary"
        );
        assert_eq!(tail("  one\ntwo\n\n"), "one\ntwo");
    }
}
