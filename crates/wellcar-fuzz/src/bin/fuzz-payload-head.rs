//! Fuzz target `payload-head`: see [`wellcar_fuzz::targets::payload`] and the crate docs for the two modes.

fn main() -> std::process::ExitCode {
    wellcar_fuzz::main(&wellcar_fuzz::targets::payload::HEAD)
}
