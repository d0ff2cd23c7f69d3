//! The storage stages that touch block devices, run before the files stage as Ignition's
//! `disks` and `mount` stages: partitions ([`disks`]), then filesystems (`super::filesystems`),
//! then the filesystems with a `path` mounted below the target root ([`mounts`]) until the
//! files stage is done.
//!
//! Contract: every disk is found (waiting at most [`ApplyOptions::device_wait`] for it) and
//! planned before any is written, so a missing disk, an overlapping partition or a mismatch
//! writes nothing. Errors name the JSON path of the entry.
//!
//! [`ApplyOptions::device_wait`]: crate::apply::ApplyOptions::device_wait

pub(crate) mod devices;
pub(crate) mod disks;
pub(crate) mod luks;
pub(crate) mod mounts;
pub(crate) mod raid;

#[cfg(test)]
pub(crate) mod loopdev;
#[cfg(test)]
mod tests;

use std::time::Duration;

use super::{ApplyError, Recorder};
use crate::model::Config;

/// Partitions every configured disk.
pub(crate) fn apply_disks(
    config: &Config,
    device_wait: Duration,
    rec: &mut Recorder,
) -> Result<(), ApplyError> {
    let mut planned = Vec::new();
    for (i, disk) in config.storage.disks.iter().enumerate() {
        let field = format!("storage.disks.{i}");
        let device =
            devices::wait_for_device(&format!("{field}.device"), &disk.device, device_wait)?;
        let state = disks::read_state(&field, &device)?;
        let plan = disks::plan(&field, disk, &state)?;
        // As Ignition: never rewrite a partition (or a whole table) that is in use.
        let touched: Vec<u32> = if plan.new_table {
            (1..=128).collect()
        } else {
            plan.deleted.iter().chain(&plan.updated).copied().collect()
        };
        if let Some(n) = touched
            .into_iter()
            .find(|&n| devices::in_use(&devices::partition_path(&device, n)))
        {
            return Err(ApplyError::Partition {
                field,
                device,
                what: format!(
                    "refusing to change partition {n}, which is in use (mounted, swap or held)"
                ),
            });
        }
        planned.push((field, device, plan));
    }
    for (field, device, plan) in planned {
        if plan.changes() {
            disks::write(&field, &device, &plan)?;
        }
        for step in &plan.steps {
            rec.action(format!("{device}: {step}"));
        }
    }
    Ok(())
}
