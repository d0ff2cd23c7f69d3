//! The GRUB environment block on the ESP ([`wellcar_bootstate::envblock`]): what the agent and
//! `wellcar bootstate` read back after GRUB, a torn write or a corrupted disk changed it.
//!
//! The input is laid out as one 512-byte sector (cut, or padded with `#` as GRUB pads).
//! Beyond "no panic": a block that decodes encodes back to a block that decodes to the same
//! state and generation, and GRUB's in-place tries update ([`envblock::with_tries`]) of a
//! valid block is valid with the new tries.

use wellcar_bootstate::envblock::{self, BLOCK_SIZE};
use wellcar_bootstate::Slot;

use crate::Target;

/// `decode`, `highest_generation_mentioned` and `with_tries` on one sector.
pub const GRUB_ENVBLOCK: Target = Target {
    name: "grub-envblock",
    exercises: "wellcar_bootstate::envblock::decode + encode round trip + with_tries + highest_generation_mentioned",
    run: grub_envblock,
};

fn grub_envblock(data: &[u8]) {
    let mut block = [b'#'; BLOCK_SIZE];
    let n = data.len().min(BLOCK_SIZE);
    block[..n].copy_from_slice(&data[..n]);

    let _ = envblock::highest_generation_mentioned(&block);
    let decoded = envblock::decode(&block);
    for slot in Slot::ALL {
        let tries = data.first().copied().unwrap_or(0) % 16;
        let Some(updated) = envblock::with_tries(&block, slot, tries) else {
            continue;
        };
        if let Ok((state, gen)) = &decoded {
            let (after, after_gen) = envblock::decode(&updated)
                .unwrap_or_else(|e| panic!("with_tries broke a valid block: {e}"));
            assert_eq!(after_gen, *gen);
            assert_eq!(after.slot(slot).tries, tries);
            assert_eq!(
                after.slot(slot.other()).tries,
                state.slot(slot.other()).tries
            );
        }
    }
    if let Ok((state, gen)) = decoded {
        let encoded = envblock::encode(&state, gen);
        let again = envblock::decode(&encoded)
            .unwrap_or_else(|e| panic!("encode wrote a block decode rejects: {e}"));
        assert_eq!(again, (state, gen), "state changed in an encode round trip");
    }
}
