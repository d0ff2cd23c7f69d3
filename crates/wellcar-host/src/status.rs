//! `wellcar-update status [--json]`: the booted slot, both slots, the staged update and the slot
//! the next boot picks. The JSON object is versioned (`"format": 1`); keys are only ever added.

use anyhow::Context as _;
use serde::Serialize;
use wellcar_bootstate::{Loaded, Slot};

use crate::{Context, Event};

/// `status` options.
#[derive(Debug, clap::Args)]
pub struct Opts {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One slot as `status` shows it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct SlotStatus {
    /// `USR-A` or `USR-B`.
    pub slot: String,
    /// The partition's unique GUID.
    pub partuuid: String,
    /// The OS version it holds ("" if none recorded).
    pub version: String,
    /// 0-15.
    pub priority: u8,
    /// 0-15.
    pub tries: u8,
    /// Booted and passed its health checks.
    pub successful: bool,
    /// GRUB would consider it (priority > 0 and tries or successful).
    pub bootable: bool,
    /// The dm-verity root hash ("" if none).
    pub verity_hash: String,
}

/// The staged update.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Staged {
    /// The slot holding it.
    pub slot: String,
    /// Its version.
    pub version: String,
    /// Boots left to try it.
    pub tries: u8,
}

/// Everything `status` prints.
#[derive(Debug, Serialize, PartialEq)]
pub struct Status {
    /// Format version of this object.
    pub format: u32,
    /// The running slot, if the command line names one.
    pub booted: Option<String>,
    /// The slot GRUB picks at the next boot (`null`: none; GRUB then forces USR-A).
    pub next_boot: Option<String>,
    /// The staged update, if any.
    pub staged: Option<Staged>,
    /// USR-A then USR-B.
    pub slots: Vec<SlotStatus>,
    /// Generation of the current state copy on the ESP.
    pub generation: u64,
    /// The update agent's section (issue 8 fills it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update: Option<serde_json::Value>,
}

/// Builds the status from the loaded state.
pub fn collect(loaded: &Loaded, booted: Option<Slot>) -> Status {
    let s = &loaded.state;
    let staged = Slot::ALL
        .into_iter()
        .find(|&slot| s.slot(slot).is_staged() && Some(slot) != booted)
        .map(|slot| Staged {
            slot: slot.to_string(),
            version: s.slot(slot).version.clone(),
            tries: s.slot(slot).tries,
        });
    Status {
        format: 1,
        booted: booted.map(|b| b.to_string()),
        next_boot: s.next_boot().map(|b| b.to_string()),
        staged,
        slots: Slot::ALL
            .into_iter()
            .map(|slot| {
                let x = s.slot(slot);
                SlotStatus {
                    slot: slot.to_string(),
                    partuuid: slot.unique_guid().to_string(),
                    version: x.version.clone(),
                    priority: x.priority,
                    tries: x.tries,
                    successful: x.successful,
                    bootable: x.bootable(),
                    verity_hash: x.root_hash.map(|h| h.to_string()).unwrap_or_default(),
                }
            })
            .collect(),
        generation: loaded.generation,
        update: None,
    }
}

/// The human-readable form.
pub fn render(st: &Status) -> String {
    let none = || "-".to_string();
    let mut out = format!(
        "Booted:     {}\nNext boot:  {}\nStaged:     {}\n\n",
        st.booted
            .clone()
            .unwrap_or_else(|| "unknown (no verity.usr= on the command line)".into()),
        st.next_boot
            .clone()
            .unwrap_or_else(|| "none bootable (GRUB forces USR-A)".into()),
        st.staged
            .as_ref()
            .map(|u| format!("{} version {} ({} tries left)", u.slot, u.version, u.tries))
            .unwrap_or_else(|| "none".into()),
    );
    out.push_str("SLOT   VERSION          PRIO  TRIES  SUCCESSFUL  VERITY HASH\n");
    for s in &st.slots {
        let mark = if st.booted.as_deref() == Some(s.slot.as_str()) {
            "*"
        } else {
            " "
        };
        out.push_str(&format!(
            "{}{:<6}{:<17}{:<6}{:<7}{:<12}{}\n",
            mark,
            s.slot,
            if s.version.is_empty() {
                none()
            } else {
                s.version.clone()
            },
            s.priority,
            s.tries,
            if s.successful { "yes" } else { "no" },
            if s.verity_hash.is_empty() {
                none()
            } else {
                s.verity_hash.clone()
            },
        ));
    }
    out.push_str(&format!(
        "\nState generation {} (ESP /wellcar/state-*.env)\n",
        st.generation
    ));
    out
}

/// What `status` shows: the [`Status`] as pretty JSON, or as text ([`render`], then the update
/// agent's section).
#[derive(Debug, PartialEq)]
pub struct Report {
    /// The state.
    pub status: Status,
    /// The update agent's section as text ("" when the agent never ran).
    pub update_text: String,
    /// `--json`.
    pub json: bool,
}

impl std::fmt::Display for Report {
    /// The JSON object or the text, without a final newline.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.json {
            // Strings, numbers and a JSON value: serializing cannot fail.
            let text = serde_json::to_string_pretty(&self.status).map_err(|_| std::fmt::Error)?;
            f.write_str(&text)
        } else {
            let text = format!("{}{}", render(&self.status), self.update_text);
            f.write_str(text.strip_suffix('\n').unwrap_or(&text))
        }
    }
}

/// `status`.
pub fn run(ctx: &Context, opts: &Opts, on_event: &mut impl FnMut(Event)) -> anyhow::Result<()> {
    let loaded = ctx.esp.load().context("reading the boot state")?;
    let mut st = collect(&loaded, ctx.booted);
    st.update = crate::update::section();
    let update_text = if opts.json {
        String::new()
    } else {
        crate::update::render()
    };
    on_event(Event::Status(Report {
        status: st,
        update_text,
        json: opts.json,
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wellcar_bootstate::{BootState, Esp};

    #[test]
    fn the_report_is_the_json_or_the_text_with_the_update_section() {
        let dir = tempfile::tempdir().unwrap();
        let esp = Esp::new(dir.path());
        let hash = "1111111111111111111111111111111111111111111111111111111111111111";
        esp.create(&BootState::fresh(hash.parse().unwrap(), "1.0.0").unwrap())
            .unwrap();
        let loaded = esp.load().unwrap();
        let report = |json, update_text: &str| Report {
            status: collect(&loaded, Some(Slot::A)),
            update_text: update_text.into(),
            json,
        };
        let json: serde_json::Value = serde_json::from_str(&report(true, "").to_string()).unwrap();
        assert_eq!(json["booted"], "USR-A");
        assert_eq!(json["slots"][0]["verity_hash"], hash);
        let st = collect(&loaded, Some(Slot::A));
        let text = report(false, "\nUpdate status: IDLE\n").to_string();
        assert_eq!(text, format!("{}\nUpdate status: IDLE", render(&st)));
        assert!(text.contains("*USR-A 1.0.0"), "{text}");
        // `wellcar-update` adds the final newline.
        assert_eq!(
            format!("{}\n", report(false, "")),
            render(&st),
            "no update section"
        );
    }
}
