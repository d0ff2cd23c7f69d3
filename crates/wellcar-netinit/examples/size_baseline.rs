//! The baseline for measuring what wellcar-netinit adds to a static /init: the same program
//! shape (read the command line, report, exit) without the crate. See `size_netinit.rs`.

fn main() -> std::process::ExitCode {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let words = cmdline
        .split_whitespace()
        .filter(|w| w.starts_with("ip="))
        .count();
    std::process::ExitCode::from(u8::try_from(words).unwrap_or(u8::MAX))
}
