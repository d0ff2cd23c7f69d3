//! Fuzz target `kernel-cmdline`: see [`wellcar_fuzz::targets::cmdline`] and the crate docs for the two modes.

fn main() -> std::process::ExitCode {
    wellcar_fuzz::main(&wellcar_fuzz::targets::cmdline::KERNEL_CMDLINE)
}
