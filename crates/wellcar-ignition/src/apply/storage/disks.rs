//! `storage.disks`: GPT partitions created, kept, resized or deleted with Ignition's rules.
//!
//! Contract (Ignition's `disks` stage, partitions.go):
//! - `wipeTable: true` starts from an empty table with a new disk GUID; otherwise the existing
//!   GPT is the starting point (a disk without one is treated as empty), and partitions the
//!   config does not name are left alone.
//! - Numbered partitions are handled before `number: 0` ones, which take the next free number.
//! - Geometry: `startMiB`/`sizeMiB` absent on an existing partition that may not be wiped keeps
//!   its start/size; absent or 0 otherwise means "start of the largest free block" (aligned to
//!   1 MiB) and "to the end of the free block the partition starts in".
//! - Matching an existing partition compares number, start, size, `guid` and `typeGuid` (when
//!   given, case-insensitive) and `label` (when given). A match is kept; a mismatch is recreated
//!   with `wipePartitionEntry`, resized in place with `resize` (when all but the size match), and
//!   otherwise an error naming the partition's JSON path and what differed.
//! - `shouldExist: false` deletes an existing partition only with `wipePartitionEntry`.
//! - A partition that overlaps another (kept or wanted) or does not fit is an error naming its
//!   JSON path — this is also how a `wipeTable: false` that conflicts with an existing partition
//!   shows.
//!
//! [`plan`] is pure: every disk is planned before any is written, so bad input writes nothing.
//! [`write`] writes the GPT (protective MBR, primary and backup) with `gptman`, then tells the
//! kernel per partition with `partx --delete/--update/--add --nr N` (as Ignition does; `BLKRRPART`
//! fails while a partition is in use) and waits until sysfs shows the new extents.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::process::Command;
use std::time::Duration;

use gptman::{GPTPartitionEntry, GPT};
use uuid::Uuid;
use wellcar_contract::{command, PathIoError};

use super::devices::{kernel_partition_extent, partition_path, wait_for};
use crate::apply::ApplyError;
use crate::model::{Disk, Partition};

const MIB: u64 = 1 << 20;
/// GPT type of a partition created without `typeGuid` (Linux filesystem data, sgdisk's 8300).
pub(crate) const LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// How long the kernel may take to show a changed partition.
const KERNEL_SYNC_BOUND: Duration = Duration::from_secs(10);

/// One GPT entry, sectors inclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) type_guid: Uuid,
    pub(crate) guid: Uuid,
    pub(crate) label: String,
}

/// What the disk looks like before the plan.
#[derive(Debug, Clone)]
pub(crate) struct DiskState {
    pub(crate) sector_size: u64,
    pub(crate) first_usable: u64,
    pub(crate) last_usable: u64,
    /// `None`: no valid GPT on the disk.
    pub(crate) partitions: Option<BTreeMap<u32, Entry>>,
}

/// The table to write and what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) new_table: bool,
    pub(crate) table: BTreeMap<u32, Entry>,
    pub(crate) deleted: Vec<u32>,
    pub(crate) updated: Vec<u32>,
    pub(crate) added: Vec<u32>,
    /// Human-readable steps, for the report.
    pub(crate) steps: Vec<String>,
}

impl Plan {
    pub(crate) fn changes(&self) -> bool {
        self.new_table
            || !(self.deleted.is_empty() && self.updated.is_empty() && self.added.is_empty())
    }
}

fn bad(field: String, device: &str, what: impl Into<String>) -> ApplyError {
    ApplyError::Partition {
        field,
        device: device.to_string(),
        what: what.into(),
    }
}

fn parse_guid(field: &str, device: &str, s: &str) -> Result<Uuid, ApplyError> {
    Uuid::parse_str(s).map_err(|_| bad(field.to_string(), device, format!("{s:?} is not a GUID")))
}

fn should_exist(p: &Partition) -> bool {
    p.should_exist != Some(false)
}

/// Free blocks `(first, last)` of `table` within the usable area.
fn free_blocks(table: &BTreeMap<u32, Entry>, first: u64, last: u64) -> Vec<(u64, u64)> {
    let mut used: Vec<(u64, u64)> = table.values().map(|e| (e.start, e.end)).collect();
    used.sort_unstable();
    let mut blocks = Vec::new();
    let mut cursor = first;
    for (s, e) in used {
        if s > cursor {
            blocks.push((cursor, s - 1));
        }
        cursor = cursor.max(e.saturating_add(1));
    }
    if cursor <= last {
        blocks.push((cursor, last));
    }
    blocks
}

fn mib_to_sectors(mib: Option<i64>, sector_size: u64) -> Option<u64> {
    mib.map(|m| (m.max(0) as u64).saturating_mul(MIB) / sector_size)
}

/// Plans `disk` (the entry at `field`) against what is on it.
pub(crate) fn plan(field: &str, disk: &Disk, state: &DiskState) -> Result<Plan, ApplyError> {
    let device = disk.device.as_str();
    let wipe_table = disk.wipe_table == Some(true);
    let current: BTreeMap<u32, Entry> = if wipe_table {
        BTreeMap::new()
    } else {
        state.partitions.clone().unwrap_or_default()
    };
    let align = (MIB / state.sector_size).max(1);

    // Numbered partitions first (stable), then numbers for the `number: 0` ones.
    let mut order: Vec<usize> = (0..disk.partitions.len()).collect();
    order.sort_by_key(|&j| disk.partitions[j].number == 0);
    let mut used: BTreeSet<u32> = current.keys().copied().collect();
    let mut numbers = vec![0u32; disk.partitions.len()];
    for &j in &order {
        let p = &disk.partitions[j];
        if p.number != 0 {
            let n = u32::try_from(p.number)
                .ok()
                .filter(|n| (1..=128).contains(n))
                .ok_or_else(|| {
                    bad(
                        format!("{field}.partitions.{j}.number"),
                        device,
                        "must be 1..=128",
                    )
                })?;
            numbers[j] = n;
            if should_exist(p) {
                used.insert(n);
            } else {
                used.remove(&n);
            }
        }
    }
    let mut free = 1u32;
    for &j in &order {
        if numbers[j] == 0 && should_exist(&disk.partitions[j]) {
            while used.contains(&free) {
                free += 1;
            }
            if free > 128 {
                return Err(bad(
                    format!("{field}.partitions.{j}"),
                    device,
                    "no free partition number (GPT has 128)",
                ));
            }
            numbers[j] = free;
            used.insert(free);
        }
    }

    // Resolve geometry on a table without the partitions the config names.
    let named: BTreeSet<u32> = numbers.iter().copied().filter(|&n| n != 0).collect();
    let mut sim: BTreeMap<u32, Entry> = current
        .iter()
        .filter(|(n, _)| !named.contains(n))
        .map(|(n, e)| (*n, e.clone()))
        .collect();
    let mut resolved: Vec<Option<(u64, u64)>> = vec![None; disk.partitions.len()];
    for &j in &order {
        let p = &disk.partitions[j];
        if !should_exist(p) {
            continue;
        }
        let at = format!("{field}.partitions.{j}");
        let n = numbers[j];
        let keep_geometry = current
            .get(&n)
            .filter(|_| p.wipe_partition_entry != Some(true));
        let start = mib_to_sectors(p.start_mib, state.sector_size)
            .or(keep_geometry.map(|e| e.start))
            .unwrap_or(0);
        let size = mib_to_sectors(p.size_mib, state.sector_size)
            .or(keep_geometry.map(|e| e.end - e.start + 1))
            .unwrap_or(0);
        let blocks = free_blocks(&sim, state.first_usable, state.last_usable);
        let start = if start == 0 {
            let largest = blocks
                .iter()
                .max_by_key(|(s, e)| (e - s, std::cmp::Reverse(*s)))
                .ok_or_else(|| bad(at.clone(), device, "no free space left on the disk"))?;
            largest.0.div_ceil(align) * align
        } else {
            start
        };
        let end = if size == 0 {
            blocks
                .iter()
                .find(|(s, e)| (*s..=*e).contains(&start))
                .map(|b| b.1)
                .unwrap_or(start)
        } else {
            start + size - 1
        };
        if start < state.first_usable || end > state.last_usable || end < start {
            return Err(bad(
                at,
                device,
                format!(
                    "sectors {start}..={end} do not fit in the usable area {}..={}",
                    state.first_usable, state.last_usable
                ),
            ));
        }
        if let Some((other, e)) = sim.iter().find(|(_, e)| start <= e.end && e.start <= end) {
            let by_config = (0..numbers.len())
                .find(|&k| numbers[k] == *other && should_exist(&disk.partitions[k]));
            let whose = match by_config {
                Some(k) => format!("{field}.partitions.{k}"),
                None if wipe_table => format!("partition {other}"),
                None => format!("existing partition {other}, which wipeTable: false keeps"),
            };
            return Err(bad(
                at,
                device,
                format!(
                    "sectors {start}..={end} overlap {whose} (sectors {}..={})",
                    e.start, e.end
                ),
            ));
        }
        resolved[j] = Some((start, end));
        sim.insert(
            n,
            Entry {
                start,
                end,
                type_guid: Uuid::nil(),
                guid: Uuid::nil(),
                label: String::new(),
            },
        );
    }

    // Decide per partition (Ignition's matrix).
    let mut out = Plan {
        new_table: wipe_table || state.partitions.is_none(),
        table: current.clone(),
        deleted: Vec::new(),
        updated: Vec::new(),
        added: Vec::new(),
        steps: Vec::new(),
    };
    for &j in &order {
        let p = &disk.partitions[j];
        let at = format!("{field}.partitions.{j}");
        let exists_wanted = should_exist(p);
        let n = if numbers[j] == 0 {
            continue;
        } else {
            numbers[j]
        };
        if !exists_wanted
            && disk
                .partitions
                .iter()
                .enumerate()
                .any(|(k, q)| k != j && numbers[k] == n && should_exist(q))
        {
            continue;
        }
        let wipe_entry = p.wipe_partition_entry == Some(true);
        let wanted = |existing: Option<&Entry>| -> Result<Entry, ApplyError> {
            let (start, end) = resolved[j].unwrap_or_default();
            let type_guid = match p.type_guid.as_deref().filter(|g| !g.is_empty()) {
                Some(g) => parse_guid(&format!("{at}.typeGuid"), device, g)?,
                None => existing
                    .map(|e| e.type_guid)
                    .unwrap_or(parse_guid(&at, device, LINUX_DATA)?),
            };
            let guid = match p.guid.as_deref().filter(|g| !g.is_empty()) {
                Some(g) => parse_guid(&format!("{at}.guid"), device, g)?,
                None => Uuid::new_v4(),
            };
            Ok(Entry {
                start,
                end,
                type_guid,
                guid,
                label: p.label.clone().unwrap_or_default(),
            })
        };
        match (current.get(&n), exists_wanted) {
            (None, false) => out.steps.push(format!("partition {n} absent as wanted")),
            (None, true) => {
                out.table.insert(n, wanted(None)?);
                out.added.push(n);
                out.steps.push(format!("create partition {n}"));
            }
            (Some(_), false) if !wipe_entry => {
                return Err(bad(
                    at,
                    device,
                    format!(
                    "partition {n} exists but shouldExist is false and wipePartitionEntry is false"
                ),
                ))
            }
            (Some(_), false) => {
                out.table.remove(&n);
                out.deleted.push(n);
                out.steps.push(format!("delete partition {n}"));
            }
            (Some(existing), true) => {
                let (start, end) = resolved[j].unwrap_or_default();
                let common = mismatch_common(p, existing, start);
                let size_differs = end - start != existing.end - existing.start;
                match (common, size_differs) {
                    (None, false) => out.steps.push(format!("keep partition {n}")),
                    _ if wipe_entry => {
                        out.table.insert(n, wanted(None)?);
                        out.updated.push(n);
                        out.steps.push(format!("recreate partition {n}"));
                    }
                    (None, true) if p.resize == Some(true) => {
                        let mut e = existing.clone();
                        e.end = end;
                        out.table.insert(n, e);
                        out.updated.push(n);
                        out.steps.push(format!("resize partition {n}"));
                    }
                    (why, _) => {
                        let why = why.unwrap_or_else(|| {
                            format!(
                                "size did not match (specified {} sectors, got {})",
                                end - start + 1,
                                existing.end - existing.start + 1
                            )
                        });
                        return Err(bad(
                            at,
                            device,
                            format!("partition {n} didn't match: {why}; set wipePartitionEntry to recreate it"),
                        ));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Ignition's `partitionMatchesCommon`: the first difference other than size.
fn mismatch_common(p: &Partition, e: &Entry, start: u64) -> Option<String> {
    if start != e.start {
        return Some(format!(
            "starting sector did not match (specified {start}, got {})",
            e.start
        ));
    }
    let differs = |want: &Option<String>, got: &Uuid| {
        want.as_deref()
            .filter(|g| !g.is_empty())
            .is_some_and(|g| Uuid::parse_str(g).ok() != Some(*got))
    };
    if differs(&p.guid, &e.guid) {
        return Some(format!(
            "GUID did not match (specified {:?}, got {:?})",
            p.guid.as_deref().unwrap_or(""),
            e.guid.to_string()
        ));
    }
    if differs(&p.type_guid, &e.type_guid) {
        return Some(format!(
            "type GUID did not match (specified {:?}, got {:?})",
            p.type_guid.as_deref().unwrap_or(""),
            e.type_guid.to_string().to_uppercase()
        ));
    }
    if let Some(l) = &p.label {
        if *l != e.label {
            return Some(format!(
                "label did not match (specified {l:?}, got {:?})",
                e.label
            ));
        }
    }
    None
}

fn io<'a>(what: &'static str, device: &'a str) -> impl FnOnce(std::io::Error) -> ApplyError + 'a {
    move |source| {
        ApplyError::Io(PathIoError::new(
            what,
            std::path::PathBuf::from(device),
            source,
        ))
    }
}

fn gpt_err(field: &str, device: &str, what: &str, e: gptman::Error) -> ApplyError {
    bad(field.to_string(), device, format!("{what}: {e}"))
}

/// Reads the state of the whole disk `device` (kernel path).
pub(crate) fn read_state(field: &str, device: &str) -> Result<DiskState, ApplyError> {
    let mut f = std::fs::File::open(device).map_err(io("opening disk", device))?;
    let sector_size = gptman::linux::get_sector_size(&mut f).unwrap_or(512);
    match GPT::find_from(&mut f) {
        Ok(gpt) => {
            let partitions = gpt
                .iter()
                .filter(|(_, e)| e.is_used())
                .map(|(n, e)| {
                    (
                        n,
                        Entry {
                            start: e.starting_lba,
                            end: e.ending_lba,
                            type_guid: Uuid::from_bytes_le(e.partition_type_guid),
                            guid: Uuid::from_bytes_le(e.unique_partition_guid),
                            label: e.partition_name.as_str().to_string(),
                        },
                    )
                })
                .collect();
            Ok(DiskState {
                sector_size: gpt.sector_size,
                first_usable: gpt.header.first_usable_lba,
                last_usable: gpt.header.last_usable_lba,
                partitions: Some(partitions),
            })
        }
        Err(_) => {
            let fresh = GPT::new_from(&mut f, sector_size, [0; 16])
                .map_err(|e| gpt_err(field, device, "sizing a new GPT", e))?;
            Ok(DiskState {
                sector_size,
                first_usable: fresh.header.first_usable_lba,
                last_usable: fresh.header.last_usable_lba,
                partitions: None,
            })
        }
    }
}

/// Writes `plan` to `device` and waits until the kernel shows it.
pub(crate) fn write(field: &str, device: &str, plan: &Plan) -> Result<(), ApplyError> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(io("opening disk for writing", device))?;
    let mut gpt = if plan.new_table {
        let sector_size = gptman::linux::get_sector_size(&mut f).unwrap_or(512);
        let mut gpt = GPT::new_from(&mut f, sector_size, Uuid::new_v4().to_bytes_le())
            .map_err(|e| gpt_err(field, device, "creating a GPT", e))?;
        gpt.align = MIB / sector_size;
        GPT::write_protective_mbr_into(&mut f, sector_size)
            .map_err(|e| gpt_err(field, device, "writing the protective MBR", e))?;
        gpt
    } else {
        GPT::find_from(&mut f).map_err(|e| gpt_err(field, device, "reading the GPT", e))?
    };
    for n in 1..=gpt.header.number_of_partition_entries {
        gpt[n] = match plan.table.get(&n) {
            Some(e) => GPTPartitionEntry {
                partition_type_guid: e.type_guid.to_bytes_le(),
                unique_partition_guid: e.guid.to_bytes_le(),
                starting_lba: e.start,
                ending_lba: e.end,
                attribute_bits: 0,
                partition_name: e.label.as_str().into(),
            },
            None => GPTPartitionEntry::empty(),
        };
    }
    gpt.write_into(&mut f)
        .map_err(|e| gpt_err(field, device, "writing the GPT", e))?;
    f.sync_all().map_err(io("flushing disk", device))?;
    drop(f);
    tell_kernel(field, device, plan)
}

fn partx(op: &str, n: u32, device: &str) {
    let out = command::run(Command::new("partx").args([op, "--nr", &n.to_string(), device]));
    if let Err(e) = out {
        // As Ignition: not fatal by itself; the sysfs check below decides.
        tracing::debug!("partx {op} {n} {device}: {e}");
    }
}

fn tell_kernel(field: &str, device: &str, plan: &Plan) -> Result<(), ApplyError> {
    let shown = |n: u32| kernel_partition_extent(&partition_path(device, n));
    // sysfs counts 512-byte sectors.
    let scale = {
        let f = std::fs::File::open(device);
        f.ok()
            .and_then(|mut f| gptman::linux::get_sector_size(&mut f).ok())
            .unwrap_or(512)
            / 512
    };
    let expected = |n: u32| {
        plan.table
            .get(&n)
            .map(|e| (e.start * scale, (e.end - e.start + 1) * scale))
    };
    // On a new table every old kernel partition goes.
    let mut gone: Vec<u32> = plan.deleted.clone();
    if plan.new_table {
        gone.extend((1..=128).filter(|n| shown(*n).is_some() && !plan.table.contains_key(n)));
    }
    let mut changed: Vec<u32> = plan.updated.clone();
    changed.extend(&plan.added);
    if plan.new_table {
        changed.extend(
            plan.table
                .keys()
                .filter(|n| !changed.contains(n))
                .copied()
                .collect::<Vec<_>>(),
        );
    }
    for &n in &gone {
        partx("--delete", n, device);
    }
    for &n in &changed {
        // partx --update also moves a partition's start (delete + add inside).
        let op = if shown(n).is_some() {
            "--update"
        } else {
            "--add"
        };
        partx(op, n, device);
    }
    let synced = wait_for(KERNEL_SYNC_BOUND, || {
        gone.iter().all(|&n| shown(n).is_none()) && changed.iter().all(|&n| shown(n) == expected(n))
    });
    if !synced {
        return Err(bad(
            field.to_string(),
            device,
            format!("the kernel did not pick up the new partition table within {KERNEL_SYNC_BOUND:?} (a partition in use?)"),
        ));
    }
    // The device nodes (devtmpfs) follow the kernel's view.
    let nodes = wait_for(KERNEL_SYNC_BOUND, || {
        changed
            .iter()
            .all(|&n| std::path::Path::new(&partition_path(device, n)).exists())
    });
    if !nodes {
        return Err(bad(
            field.to_string(),
            device,
            "partition device nodes did not appear",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Disk;

    fn entry(start: u64, end: u64) -> Entry {
        Entry {
            start,
            end,
            type_guid: Uuid::parse_str(LINUX_DATA).unwrap(),
            guid: Uuid::new_v4(),
            label: String::new(),
        }
    }

    /// 100 MiB disk (512-byte sectors) with partitions 1 (1..9 MiB) and 3 (60..70 MiB).
    fn state() -> DiskState {
        DiskState {
            sector_size: 512,
            first_usable: 34,
            last_usable: 204_766,
            partitions: Some(BTreeMap::from([
                (1, entry(2048, 18_431)),
                (3, entry(122_880, 143_359)),
            ])),
        }
    }

    fn part(number: i64, start: Option<i64>, size: Option<i64>) -> Partition {
        Partition {
            number,
            start_mib: start,
            size_mib: size,
            ..Default::default()
        }
    }

    #[test]
    fn unnumbered_partitions_take_the_next_free_number_and_the_largest_free_block() {
        let disk = Disk {
            device: "/dev/x".into(),
            partitions: vec![part(0, None, Some(4)), part(0, None, None)],
            wipe_table: None,
        };
        let before = state();
        let plan = plan("storage.disks.0", &disk, &before).unwrap();
        assert_eq!(plan.added, [2, 4]);
        // Largest free block: 9..60 MiB (70 MiB..end is smaller); the second fills the rest of it.
        assert_eq!((plan.table[&2].start, plan.table[&2].end), (18_432, 26_623));
        assert_eq!(
            (plan.table[&4].start, plan.table[&4].end),
            (26_624, 122_879)
        );
        assert!(!plan.new_table);
        assert_eq!(plan.table[&1], before.partitions.unwrap()[&1]);
    }

    #[test]
    fn a_partition_that_does_not_fit_names_its_path_and_a_kept_one_with_no_geometry_matches() {
        let disk = Disk {
            device: "/dev/x".into(),
            partitions: vec![part(1, None, None), part(2, Some(90), Some(20))],
            wipe_table: None,
        };
        let err = plan("storage.disks.3", &disk, &state()).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "storage.disks.3.partitions.1: /dev/x: sectors 184320..=225279 do not fit"
            ),
            "{err}"
        );
        let keep = Disk {
            partitions: vec![part(1, None, None)],
            ..disk
        };
        let plan = plan("storage.disks.3", &keep, &state()).unwrap();
        assert_eq!(plan.steps, ["keep partition 1"]);
        assert!(!plan.changes());
    }
}
