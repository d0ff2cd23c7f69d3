//! `update_engine_client`'s command line, parsed the way gflags (which Flatcar's client uses)
//! parses it, so scripts get the same answers:
//! - a flag is `-name` or `--name`, a boolean may be `-name=true|false|t|f|yes|no|y|n|1|0`
//!   (any case) or `-noname`; a value flag takes `-name=V` or `-name V`; `--` ends the flags;
//!   other arguments are left alone;
//! - an unknown flag: `ERROR: unknown command line flag 'NAME'`, exit 1; a bad boolean:
//!   `ERROR: illegal value 'V' specified for bool flag 'NAME'`, exit 1;
//! - `-help`/`-helpfull`/`-helpshort` print the flags and exit 1, `-version` prints the
//!   program name and exits 0 (gflags' built-ins);
//! - glog's own flags (`-v`, `-logtostderr`, …) are accepted and have no effect.

/// The five actions, as Flatcar's client defines them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Actions {
    /// `-check_for_update`: initiate a check.
    pub check_for_update: bool,
    /// `-status`: print the status.
    pub status: bool,
    /// `-reset_status`: set the status to idle.
    pub reset_status: bool,
    /// `-update`: check, then wait until idle or updated.
    pub update: bool,
    /// `-watch_for_updates`: print status updates as they come.
    pub watch_for_updates: bool,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Run the actions.
    Run(Actions),
    /// Print this to stdout and exit with this code (help, version).
    Exit(String, u8),
    /// Print this to stderr and exit 1 (gflags' parse errors).
    Error(String),
}

const BOOLS: [(&str, &str); 5] = [
    ("check_for_update", "Initiate check for updates."),
    ("status", "Print the status to stdout."),
    ("reset_status", "Sets the status in update_engine to idle."),
    (
        "update",
        "Forces an update and waits for its completion. Exit status is 0 if the update succeeded, and 1 otherwise.",
    ),
    (
        "watch_for_updates",
        "Listen for status updates and print them to the screen.",
    ),
];

/// glog's flags that take no value.
const GLOG_BOOLS: [&str; 4] = [
    "logtostderr",
    "alsologtostderr",
    "colorlogtostderr",
    "log_prefix",
];
/// glog's flags that take a value.
const GLOG_VALUES: [&str; 6] = [
    "v",
    "vmodule",
    "minloglevel",
    "stderrthreshold",
    "log_dir",
    "logbuflevel",
];

fn parse_bool(name: &str, value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" => Ok(true),
        "false" | "f" | "no" | "n" | "0" => Ok(false),
        _ => Err(format!(
            "ERROR: illegal value '{value}' specified for bool flag '{name}'\n"
        )),
    }
}

fn help(program: &str) -> String {
    let mut out = format!("{program}: Warning: SetUsageMessage() never called\n\n  Flags from update_engine_client:\n");
    for (name, text) in BOOLS {
        out.push_str(&format!("    -{name} ({text}) type: bool default: false\n"));
    }
    out
}

/// Parses the arguments after the program name.
pub fn parse(program: &str, args: &[String]) -> Parsed {
    let mut actions = Actions::default();
    let mut errors = String::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            break;
        }
        let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            continue;
        };
        if body.is_empty() {
            continue;
        }
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let (name, negated) = match name.strip_prefix("no") {
            Some(rest) if value.is_none() && is_bool(rest) => (rest, true),
            _ => (name, false),
        };
        match name {
            "help" | "helpfull" | "helpshort" => return Parsed::Exit(help(program), 1),
            "version" => return Parsed::Exit(format!("{program}\n"), 0),
            _ => {}
        }
        if GLOG_VALUES.contains(&name) {
            if value.is_none() {
                i += 1;
            }
            continue;
        }
        if !is_bool(name) {
            errors.push_str(&format!("ERROR: unknown command line flag '{name}'\n"));
            continue;
        }
        let on = match value {
            None => !negated,
            Some(v) => match parse_bool(name, v) {
                Ok(b) => b,
                Err(e) => {
                    errors.push_str(&e);
                    continue;
                }
            },
        };
        let slot = match name {
            "check_for_update" => &mut actions.check_for_update,
            "status" => &mut actions.status,
            "reset_status" => &mut actions.reset_status,
            "update" => &mut actions.update,
            "watch_for_updates" => &mut actions.watch_for_updates,
            _ => continue, // glog's booleans
        };
        *slot = on;
    }
    if errors.is_empty() {
        Parsed::Run(actions)
    } else {
        Parsed::Error(errors)
    }
}

fn is_bool(name: &str) -> bool {
    BOOLS.iter().any(|(n, _)| *n == name) || GLOG_BOOLS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Parsed {
        parse(
            "update_engine_client",
            &args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn accepts_gflags_spellings() {
        let Parsed::Run(a) = p(&[
            "--status",
            "-update=true",
            "-nocheck_for_update",
            "-v",
            "2",
            "x",
        ]) else {
            panic!()
        };
        assert!(a.status && a.update && !a.check_for_update);
        let Parsed::Run(a) = p(&["-status=no", "-reset_status=Y", "--", "-update"]) else {
            panic!()
        };
        assert!(!a.status && a.reset_status && !a.update);
    }

    #[test]
    fn answers_bad_flags_as_gflags_does() {
        assert_eq!(
            p(&["-frobnicate", "-status"]),
            Parsed::Error("ERROR: unknown command line flag 'frobnicate'\n".into())
        );
        assert_eq!(
            p(&["-status=maybe"]),
            Parsed::Error("ERROR: illegal value 'maybe' specified for bool flag 'status'\n".into())
        );
        let Parsed::Exit(text, 1) = p(&["-help"]) else {
            panic!()
        };
        assert!(
            text.contains("-watch_for_updates (Listen for status updates"),
            "{text}"
        );
        assert_eq!(
            p(&["--version"]),
            Parsed::Exit("update_engine_client\n".into(), 0)
        );
    }
}
