//! The `grub.cfg` functions that implement the selection on stock GRUB 2.06 (BIOS and UEFI):
//! only `load_env`, `save_env`, `test` (string equality and `-gt`), `set`/`unset` and functions.
//! GRUB has no arithmetic, so decrementing tries is a lookup table, and tries are one hex digit
//! so that `save_env` rewrites one byte in place ([`crate::envblock`]).
//!
//! Functions defined (the caller's grub.cfg must have `$root` on the ESP and `$linux_cmdline`):
//! - `wellcar_select`: loads the current copy (valid = `wc_gen == wc_seal`, higher `wc_gen`
//!   wins, ties copy 0) and sets `wc_slot` to `a`, `b` or "" (nothing bootable / no valid copy).
//! - `wellcar_consume_try SLOT`: decrements SLOT's tries (if any) in the current copy. If GRUB
//!   cannot write, it refuses to boot an untried slot and falls back to the other, good slot.
//! - `wellcar_boot SLOT`: `linux`/`initrd` of SLOT with its PARTUUID and verity root hash.

use std::fmt::Write;

use wellcar_contract::esp;
use wellcar_disk::Slot;

/// The grub.cfg functions (see the module docs).
pub fn functions() -> String {
    let vars = crate::envblock::GRUB_VARIABLES.join(" ");
    let state = esp::state_file("$1");
    let mut s = String::new();
    let _ = write!(
        s,
        r#"# Boot-state selection (crate wellcar-bootstate): Flatcar gptprio semantics on stock GRUB.
# $1: copy 0 or 1. Sets wc_valid=1 when the copy was written completely.
function wellcar_load_state {{
  unset wc_gen
  unset wc_seal
  unset a_prio
  unset a_tries
  unset a_ok
  unset a_hash
  unset b_prio
  unset b_tries
  unset b_ok
  unset b_hash
  set wc_valid=0
  load_env --file "($root)/{state}" {vars}
  if [ -n "$wc_gen" ]; then
    if [ "$wc_gen" = "$wc_seal" ]; then set wc_valid=1; fi
  fi
}}

function wellcar_select {{
  wellcar_load_state 1
  set wc_valid1="$wc_valid"
  set wc_gen1="$wc_gen"
  wellcar_load_state 0
  set wc_copy=0
  if [ "$wc_valid" = 1 ]; then
    if [ "$wc_valid1" = 1 ]; then
      if [ "$wc_gen1" -gt "$wc_gen" ]; then set wc_copy=1; fi
    fi
  elif [ "$wc_valid1" = 1 ]; then
    set wc_copy=1
  fi
  if [ "$wc_copy" = 1 ]; then wellcar_load_state 1; fi
  set wc_slot=""
  if [ "$wc_valid" = 1 ]; then
    set wc_best=0
    set wc_eligible=0
    if [ "$a_tries" != 0 ]; then set wc_eligible=1; fi
    if [ "$a_ok" = 1 ]; then set wc_eligible=1; fi
    if [ "$wc_eligible" = 1 ]; then
      if [ "$a_prio" -gt 0 ]; then set wc_slot=a; set wc_best="$a_prio"; fi
    fi
    set wc_eligible=0
    if [ "$b_tries" != 0 ]; then set wc_eligible=1; fi
    if [ "$b_ok" = 1 ]; then set wc_eligible=1; fi
    if [ "$wc_eligible" = 1 ]; then
      if [ "$b_prio" -gt "$wc_best" ]; then set wc_slot=b; fi
    fi
  fi
}}

# $1: slot letter. Tries are one hex digit; no arithmetic in GRUB, so a lookup.
function wellcar_consume_try {{
  if [ "$1" = a ]; then set wc_tries="$a_tries"; set wc_other=b; set wc_other_ok="$b_ok"
  else set wc_tries="$b_tries"; set wc_other=a; set wc_other_ok="$a_ok"; fi
  set wc_less=""
"#
    );
    for t in 1..=15u8 {
        let _ = writeln!(
            s,
            "  if [ \"$wc_tries\" = {:x} ]; then set wc_less={:x}; fi",
            t,
            t - 1
        );
    }
    let _ = write!(
        s,
        r#"  if [ -n "$wc_less" ]; then
    set wc_saved=0
    if [ "$1" = a ]; then
      set a_tries="$wc_less"
      if save_env --file "($root)/{current}" a_tries; then set wc_saved=1; fi
    else
      set b_tries="$wc_less"
      if save_env --file "($root)/{current}" b_tries; then set wc_saved=1; fi
    fi
    if [ "$wc_saved" = 0 ]; then
      echo "Wellcar: cannot record the boot attempt of USR-$1 on the ESP"
      if [ "$wc_other_ok" = 1 ]; then
        echo "Wellcar: booting the known-good USR-$wc_other instead"
        set wc_slot="$wc_other"
      fi
    fi
  fi
}}

# $1: slot letter. Uses the hashes loaded by wellcar_select.
function wellcar_boot {{
"#,
        current = esp::state_file("$wc_copy"),
    );
    let _ = writeln!(
        s,
        "  if [ \"$1\" = a ]; then set wc_hash=\"$a_hash\"; set wc_guid={}\n  else set wc_hash=\"$b_hash\"; set wc_guid={}; fi",
        Slot::A.unique_guid(),
        Slot::B.unique_guid()
    );
    let _ = write!(
        s,
        r#"  echo "Wellcar: booting USR-$1"
  linux "($root)/{kernel}" mount.usr=/dev/mapper/usr verity.usr=PARTUUID=$wc_guid verity.usrhash=$wc_hash $linux_cmdline
  initrd "($root)/{initramfs}"
}}
"#,
        kernel = esp::kernel("$1"),
        initramfs = esp::initramfs("$1"),
    );
    s
}

/// The menu entries: the default one selecting by state, and one forcing each slot (forcing
/// changes no state). `fallback` re-runs the default entry, which selects again.
pub fn menu_entries() -> String {
    let mut s = String::from(
        r#"set default="wellcar"
set fallback="0 0 0"
menuentry "Wellcar" --id=wellcar {
  wellcar_select
  if [ -z "$wc_slot" ]; then
    echo "Wellcar: no valid boot state or no bootable slot on the ESP; booting USR-A"
    set wc_slot=a
  else
    wellcar_consume_try "$wc_slot"
  fi
  wellcar_boot "$wc_slot"
}
"#,
    );
    for slot in Slot::ALL {
        let _ = writeln!(
            s,
            "menuentry \"Wellcar {slot} (forced)\" --id=wellcar-{l} {{\n  wellcar_select\n  wellcar_boot {l}\n}}",
            l = slot.letter()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_decrements_every_tries_value_by_lookup() {
        let f = functions();
        assert!(f.contains("if [ \"$wc_tries\" = 1 ]; then set wc_less=0; fi"));
        assert!(f.contains("if [ \"$wc_tries\" = f ]; then set wc_less=e; fi"));
        assert!(f.contains("if [ \"$wc_tries\" = a ]; then set wc_less=9; fi"));
        assert!(f.contains("load_env --file \"($root)/wellcar/state-$1.env\" wc_gen a_prio"));
        assert!(f.contains("save_env --file \"($root)/wellcar/state-$wc_copy.env\" b_tries"));
        assert!(f.contains("set wc_guid=7130c94a-213a-4e5a-8e26-6cce9662f132"));
        assert!(f.contains("  linux \"($root)/wellcar/vmlinuz-$1\" mount.usr=/dev/mapper/usr"));
        assert!(f.contains("  initrd \"($root)/wellcar/initrd-$1\"\n}\n"));
        // Balanced braces: every function closes.
        assert_eq!(f.matches('{').count(), f.matches('}').count());
    }

    #[test]
    fn entries_force_each_slot_and_default_selects() {
        let m = menu_entries();
        assert!(m.contains("--id=wellcar-a {\n  wellcar_select\n  wellcar_boot a\n}"));
        assert!(m.contains("--id=wellcar-b {\n  wellcar_select\n  wellcar_boot b\n}"));
        assert!(m.contains("wellcar_consume_try \"$wc_slot\""));
        assert!(m.contains("set fallback=\"0 0 0\""));
    }
}
