//! Fuzz target `omaha-request`: see [`wellcar_fuzz::targets::omaha`] and the crate docs for the two modes.

fn main() -> std::process::ExitCode {
    wellcar_fuzz::main(&wellcar_fuzz::targets::omaha::REQUEST)
}
