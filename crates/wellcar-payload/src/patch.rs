//! Binary patches for `source_patch`: zstd with the source bytes as a reference prefix, the
//! in-memory form of `zstd --patch-from`.
//!
//! Contract: [`encode`] makes one zstd frame whose window covers the reference plus the
//! output, so matches reach anywhere in the source extents; [`decode`] needs the same
//! reference and yields exactly the declared length or fails. Memory is the reference plus
//! the output (each bounded by the manifest's limits: 16 MiB and 8 MiB).
//!
//! Why zstd and not bsdiff: measured on a real /usr EROFS image (see the crate's
//! `delta` benchmark and ARCHITECTURE.md), zstd's patches of changed extents were as small
//! as or smaller than bsdiff's, zstd decodes at hundreds of MB/s with no extra dependency,
//! and encoding is linear where bsdiff's suffix sort is O(n log n) with 9× the input in memory.

use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter};

/// Window log big enough for `reference_len + output_len` (at least 2^20, at most 2^27).
fn window_log(reference_len: usize, output_len: usize) -> u32 {
    let need = (reference_len + output_len).max(1 << 20) as u64;
    (64 - (need - 1).leading_zeros()).clamp(20, 27)
}

/// Encodes `target` as a patch against `reference` at zstd `level`.
pub fn encode(reference: &[u8], target: &[u8], level: i32) -> Result<Vec<u8>, String> {
    let mut cctx = CCtx::create();
    let code = |e: usize| zstd::zstd_safe::get_error_name(e).to_owned();
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(code)?;
    cctx.set_parameter(CParameter::WindowLog(window_log(
        reference.len(),
        target.len(),
    )))
    .map_err(code)?;
    cctx.set_parameter(CParameter::EnableLongDistanceMatching(true))
        .map_err(code)?;
    cctx.ref_prefix(reference).map_err(code)?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(target.len()));
    cctx.compress2(&mut out, target).map_err(code)?;
    Ok(out)
}

/// Decodes `patch` against `reference` into `output` (cleared first); it must yield exactly
/// `expected_len` bytes.
pub fn decode(
    reference: &[u8],
    patch: &[u8],
    output: &mut Vec<u8>,
    expected_len: usize,
) -> Result<(), String> {
    let mut dctx = DCtx::create();
    let code = |e: usize| zstd::zstd_safe::get_error_name(e).to_owned();
    dctx.set_parameter(DParameter::WindowLogMax(27))
        .map_err(code)?;
    dctx.ref_prefix(reference).map_err(code)?;
    output.clear();
    // One byte of room past the expected length, so a longer output shows as an error
    // (zstd writes into the spare capacity and never grows the vector).
    output.reserve_exact(expected_len + 1);
    let n = dctx.decompress(output, patch).map_err(code)?;
    if n != expected_len {
        return Err(format!("decoded {n} bytes, expected {expected_len}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_round_trips_and_is_small_when_the_target_resembles_the_reference() {
        let reference = wellcar_test_support::build::filler(3 << 20, 7);
        let mut target = reference.clone();
        target[100_000..100_100].fill(0x42);
        target.splice(2_000_000..2_000_000, [1u8; 333]);
        let patch = encode(&reference, &target, 19).unwrap();
        assert!(
            patch.len() < 4096,
            "patch of a small change is {} bytes",
            patch.len()
        );
        let mut out = Vec::new();
        decode(&reference, &patch, &mut out, target.len()).unwrap();
        assert_eq!(out, target);
    }

    #[test]
    fn decoding_against_another_reference_or_to_another_length_fails() {
        let reference = wellcar_test_support::build::filler(1 << 20, 8);
        let mut target = reference.clone();
        target[10..20].fill(9);
        let patch = encode(&reference, &target, 3).unwrap();
        let mut out = Vec::new();
        let err = decode(&reference, &patch, &mut out, target.len() - 1).unwrap_err();
        assert!(!err.is_empty());
        let other = wellcar_test_support::build::filler(1 << 20, 9);
        match decode(&other, &patch, &mut out, target.len()) {
            Err(_) => {}
            Ok(()) => assert_ne!(out, target, "a wrong reference cannot give the target"),
        }
    }
}
