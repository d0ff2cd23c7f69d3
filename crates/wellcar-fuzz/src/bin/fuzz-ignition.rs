//! Fuzz target `ignition`: see [`wellcar_fuzz::targets::ignition`] and the crate docs for the two modes.

fn main() -> std::process::ExitCode {
    wellcar_fuzz::main(&wellcar_fuzz::targets::ignition::CONFIG)
}
