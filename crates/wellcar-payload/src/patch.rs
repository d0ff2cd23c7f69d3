//! Binary patches for `source_patch`, in one of two codecs ([`PatchCodec`], the operation's
//! `codec` field):
//! - `zstd` (the default): zstd with the source bytes as a reference prefix, the in-memory form
//!   of `zstd --patch-from`. One frame whose window covers the reference plus the output, so
//!   matches reach anywhere in the source extents. Exact matches only.
//! - `bsdiff`: the bsdiff algorithm (the `bsdiff` crate, a safe-Rust port of mendsley/bsdiff:
//!   control triples, byte-wise differences, extra bytes), compressed as one zstd frame. Its
//!   byte-wise differences are what a shifted or lightly edited compressed block needs, where
//!   zstd finds no exact match.
//!
//! Contract: [`encode`] and [`decode`] take the same reference; `decode` yields exactly the
//! declared length or fails, and never holds more than the reference, the output and (for
//! bsdiff) the decompressed patch, bounded by [`MAX_BSDIFF_PATCH_LEN`]. The writer makes both
//! and keeps the smaller (see `create::delta`); patches are decoded only after their blob's
//! sha256 matched the signed manifest.
//!
//! Measured (the crate's `delta` benchmark, ARCHITECTURE.md): on a rebuilt binary inside a
//! real /usr EROFS image, bsdiff's patches are smaller on the lz4 clusters after an insertion;
//! zstd decodes faster and wins on moved, unchanged runs.

use crate::format::{PatchCodec, MAX_CHUNK_LEN};
use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter};

/// Window log big enough for `reference_len + output_len` (at least 2^20, at most 2^27).
fn window_log(reference_len: usize, output_len: usize) -> u32 {
    let need = (reference_len + output_len).max(1 << 20) as u64;
    (64 - (need - 1).leading_zeros()).clamp(20, 27)
}

/// Largest decompressed bsdiff patch a reader accepts: the output (at most one chunk) plus
/// control triples, which a real patch of one chunk stays far below.
pub const MAX_BSDIFF_PATCH_LEN: usize = 2 * MAX_CHUNK_LEN as usize;

/// Encodes `target` as a `codec` patch against `reference` at zstd `level`.
pub fn encode(
    codec: PatchCodec,
    reference: &[u8],
    target: &[u8],
    level: i32,
) -> Result<Vec<u8>, String> {
    match codec {
        PatchCodec::Zstd => zstd_encode(reference, target, level),
        PatchCodec::Bsdiff => {
            let mut raw = Vec::with_capacity(target.len() / 8);
            bsdiff::diff(reference, target, &mut raw).map_err(|e| e.to_string())?;
            zstd::bulk::compress(&raw, level).map_err(|e| e.to_string())
        }
    }
}

/// Decodes a `codec` patch against `reference` into `output` (cleared first); it must yield
/// exactly `expected_len` bytes.
pub fn decode(
    codec: PatchCodec,
    reference: &[u8],
    patch: &[u8],
    output: &mut Vec<u8>,
    expected_len: usize,
) -> Result<(), String> {
    match codec {
        PatchCodec::Zstd => zstd_decode(reference, patch, output, expected_len),
        PatchCodec::Bsdiff => {
            let raw = zstd::bulk::decompress(patch, MAX_BSDIFF_PATCH_LEN)
                .map_err(|e| format!("bsdiff patch does not decompress: {e}"))?;
            output.clear();
            output.reserve_exact(expected_len);
            bsdiff::patch(reference, &mut raw.as_slice(), output)
                .map_err(|e| format!("bsdiff patch does not apply: {e}"))?;
            if output.len() != expected_len {
                return Err(format!(
                    "decoded {} bytes, expected {expected_len}",
                    output.len()
                ));
            }
            Ok(())
        }
    }
}

fn zstd_encode(reference: &[u8], target: &[u8], level: i32) -> Result<Vec<u8>, String> {
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

fn zstd_decode(
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
        for codec in [PatchCodec::Zstd, PatchCodec::Bsdiff] {
            let patch = encode(codec, &reference, &target, 19).unwrap();
            assert!(
                patch.len() < 4096,
                "{codec:?} patch of a small change is {} bytes",
                patch.len()
            );
            let mut out = Vec::new();
            decode(codec, &reference, &patch, &mut out, target.len()).unwrap();
            assert_eq!(out, target, "{codec:?}");
        }
    }

    #[test]
    fn decoding_against_another_reference_or_to_another_length_fails() {
        let reference = wellcar_test_support::build::filler(1 << 20, 8);
        let mut target = reference.clone();
        target[10..20].fill(9);
        let other = wellcar_test_support::build::filler(1 << 20, 9);
        for codec in [PatchCodec::Zstd, PatchCodec::Bsdiff] {
            let patch = encode(codec, &reference, &target, 3).unwrap();
            let mut out = Vec::new();
            let err = decode(codec, &reference, &patch, &mut out, target.len() - 1).unwrap_err();
            assert!(err.contains("expected"), "{codec:?}: {err}");
            match decode(codec, &other, &patch, &mut out, target.len()) {
                Err(_) => {}
                Ok(()) => assert_ne!(out, target, "{codec:?}: a wrong reference gave the target"),
            }
        }
    }

    /// A bsdiff patch of lz4-like data shifted by an insertion: byte-wise differences, where
    /// zstd finds few exact matches. The writer keeps whichever is smaller; both decode.
    #[test]
    fn bsdiff_and_zstd_patches_of_shifted_data_both_decode_and_garbage_is_refused() {
        let reference = wellcar_test_support::build::filler(1 << 20, 11);
        let mut target: Vec<u8> = reference.iter().map(|b| b.wrapping_add(1)).collect();
        target.splice(500_000..500_000, [7u8; 1000]);
        for codec in [PatchCodec::Zstd, PatchCodec::Bsdiff] {
            let patch = encode(codec, &reference, &target, 19).unwrap();
            let mut out = Vec::new();
            decode(codec, &reference, &patch, &mut out, target.len()).unwrap();
            assert_eq!(out, target, "{codec:?}");
            let err = decode(codec, &reference, b"not a patch", &mut out, target.len());
            assert!(err.is_err(), "{codec:?} decoded garbage");
        }
    }
}
