//! What `/init` does when the boot fails, and the report it shows.
//!
//! Contract:
//! - [`decide`]: a failed first-boot provisioning (fetching, parsing or applying the Ignition
//!   config, or bringing up the network for it) stops in the emergency shell, with the
//!   first-boot flag kept (it is removed only after provisioning succeeded), so a fixed config
//!   is applied on the next boot; it never reboots by itself, unless the command line asked
//!   for `wellcar.init.reboot_delay` (unattended labs). Any other failure (disk, `/usr`,
//!   switch root) reboots after the delay, so GRUB's tries counter falls back to the other slot.
//! - [`FailureReport::render`] is the text printed on the console before the shell prompt,
//!   written to [`REPORT_PATH`] and to the kernel log: the step, what failed, the source
//!   (URL, file or fw_cfg entry), the HTTP status when there was one, the whole error chain.

use std::time::Duration;

/// Where the report is kept (tmpfs, carried into the emergency shell).
pub const REPORT_PATH: &str = "/run/wellcar-init/failure.txt";

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop: print the report and run a shell on the console, never reboot.
    EmergencyShell,
    /// Reboot after this delay.
    Reboot(Duration),
}

/// Which part of the boot failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// First-boot provisioning: network, fetch, parse or apply of the Ignition config.
    Provisioning,
    /// Anything else.
    Boot,
}

/// The action for a failure of `kind`; `reboot_delay` is the delay and `reboot_requested`
/// whether the command line gave one.
pub fn decide(kind: FailureKind, reboot_delay: Duration, reboot_requested: bool) -> Action {
    match kind {
        FailureKind::Provisioning if !reboot_requested => Action::EmergencyShell,
        _ => Action::Reboot(reboot_delay),
    }
}

/// The phase of provisioning that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Bringing up the network the config needs.
    Network,
    /// Choosing the platform.
    Platform,
    /// Fetching the config (or a referenced config).
    Fetch,
    /// Parsing or rendering the config.
    Parse,
    /// Applying it to the new root.
    Apply,
}

impl Phase {
    fn describe(self) -> &'static str {
        match self {
            Phase::Network => "bringing up the network for the Ignition config",
            Phase::Platform => "choosing the platform",
            Phase::Fetch => "fetching the Ignition config",
            Phase::Parse => "parsing the Ignition config",
            Phase::Apply => "applying the Ignition config",
        }
    }
}

/// One failure, with what is known about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureReport {
    /// The `/init` step.
    pub step: String,
    /// For provisioning failures, the phase.
    pub phase: Option<Phase>,
    /// The URL, file or entry involved.
    pub source: Option<String>,
    /// The HTTP status, when a server answered.
    pub http_status: Option<u16>,
    /// The error and its causes, `: `-joined.
    pub reason: String,
    /// What happens next.
    pub action: Action,
}

impl FailureReport {
    /// The report's lines, each without a trailing newline.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![match self.phase {
            Some(_) => "FIRST BOOT PROVISIONING FAILED".to_string(),
            None => "BOOT FAILED".to_string(),
        }];
        lines.push(format!("  step:   {}", self.step));
        if let Some(phase) = self.phase {
            lines.push(format!("  failed: {}", phase.describe()));
        }
        if let Some(source) = &self.source {
            lines.push(format!("  source: {source}"));
        }
        if let Some(status) = self.http_status {
            lines.push(format!("  status: HTTP {status}"));
        }
        lines.push(format!("  reason: {}", self.reason));
        match self.action {
            Action::EmergencyShell => {
                lines.push(
                    "The first-boot flag is kept: fix the config (or its server) and reboot to \
                     provision again."
                        .into(),
                );
                lines.push(format!(
                    "This report is in {REPORT_PATH}. Starting an emergency shell; the machine \
                     will not reboot by itself."
                ));
            }
            Action::Reboot(delay) => {
                let flag = if self.phase.is_some() {
                    " (first-boot flag kept)"
                } else {
                    ""
                };
                lines.push(format!("Rebooting in {} s{flag}.", delay.as_secs()));
            }
        }
        lines
    }

    /// The report as text, one line per line.
    pub fn render(&self) -> String {
        let mut text = self.lines().join("\n");
        text.push('\n');
        text
    }
}

/// An error and its causes, `: `-joined.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let next = c.to_string();
        // Transparent wrappers repeat their source's message.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioning_failures_stop_and_other_failures_reboot() {
        let delay = Duration::from_secs(60);
        assert_eq!(
            decide(FailureKind::Provisioning, delay, false),
            Action::EmergencyShell
        );
        assert_eq!(
            decide(FailureKind::Provisioning, Duration::from_secs(5), true),
            Action::Reboot(Duration::from_secs(5))
        );
        assert_eq!(
            decide(FailureKind::Boot, delay, false),
            Action::Reboot(delay)
        );
    }

    #[test]
    fn the_report_names_step_phase_url_and_status_before_the_shell() {
        let report = FailureReport {
            step: "ignition".into(),
            phase: Some(Phase::Fetch),
            source: Some("http://169.254.169.254/2009-04-04/user-data".into()),
            http_status: Some(500),
            reason: "GET http://169.254.169.254/2009-04-04/user-data: HTTP status 500".into(),
            action: Action::EmergencyShell,
        };
        let text = report.render();
        for needle in [
            "FIRST BOOT PROVISIONING FAILED",
            "step:   ignition",
            "failed: fetching the Ignition config",
            "source: http://169.254.169.254/2009-04-04/user-data",
            "status: HTTP 500",
            "first-boot flag is kept",
            REPORT_PATH,
            "emergency shell",
        ] {
            assert!(text.contains(needle), "{text} lacks {needle}");
        }
        let rebooting = FailureReport {
            action: Action::Reboot(Duration::from_secs(7)),
            ..report
        };
        assert!(rebooting
            .render()
            .contains("Rebooting in 7 s (first-boot flag kept)."));
    }

    #[test]
    fn chains_skip_repeated_transparent_messages() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&e), "outer: inner");
    }
}
