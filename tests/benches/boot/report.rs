//! The printed report: one line per boot as it finishes, then the medians, the ratios
//! Wellcar/Debian next to their goals, the biggest processes and Wellcar's critical chain.

use crate::probe::Boot;

/// The boots of one kind (e.g. Wellcar's first boots), one per run.
#[derive(Debug)]
pub struct Series {
    /// Column title.
    pub name: &'static str,
    /// One per run.
    pub boots: Vec<Boot>,
}

type Metric = (&'static str, fn(&Boot) -> Option<f64>);

const ROWS: &[Metric] = &[
    ("kernel start", |b| Some(b.kernel)),
    ("initramfs /init", |b| Some(b.init)),
    ("systemd (real init)", |b| Some(b.systemd)),
    ("network up (DHCP, journal)", |b| b.network),
    ("sshd listening (guest)", |b| b.sshd_listening),
    ("sshd banner", |b| Some(b.sshd)),
    ("multi-user.target", |b| Some(b.multi_user)),
    ("startup finished", |b| Some(b.finished)),
    ("measuring ssh logged in", |b| Some(b.login)),
    ("memory used, MiB", |b| Some(b.used_mib)),
];

/// One line for a finished boot.
pub fn line(run: usize, name: &str, b: &Boot) {
    println!(
        "run {run} {name:<14} kernel {:6.2}  /init {:6.2}  systemd {:6.2}  multi-user {:6.2}  sshd {:6.2}  finished {:6.2} s  used {:4.0} MiB  ({}, {})",
        b.kernel, b.init, b.systemd, b.multi_user, b.sshd, b.finished, b.used_mib, b.state, b.kernel_release
    );
}

/// A boot's `--verbose` log, if any.
pub fn log(run: usize, name: &str, lines: &[String]) {
    if lines.is_empty() {
        return;
    }
    println!("run {run} {name}: banner probes and guest journal (s since QEMU start):");
    for l in lines {
        println!("  {l}");
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn median_of(s: &Series, f: fn(&Boot) -> Option<f64>) -> Option<f64> {
    median(s.boots.iter().filter_map(f).collect())
}

/// The table of medians and the ratios. `series` is Wellcar first, Wellcar later, Debian
/// first, Debian later.
pub fn summary(series: &[Series; 4], runs: usize) {
    println!();
    println!(
        "Medians of {runs} run(s); seconds since QEMU started (memory: after startup finished)"
    );
    print!("{:<28}", "");
    for s in series {
        print!("{:>15}", s.name);
    }
    println!();
    for (label, f) in ROWS {
        print!("{label:<28}");
        for s in series {
            match median_of(s, *f) {
                Some(v) if label.starts_with("memory") => print!("{v:>15.0}"),
                Some(v) => print!("{v:>15.2}"),
                None => print!("{:>15}", "-"),
            }
        }
        println!();
    }

    let [w_first, w_later, d_first, d_later] = series;
    println!();
    println!("Wellcar / Debian:");
    type Ratio<'a> = (
        &'a str,
        &'a Series,
        &'a Series,
        fn(&Boot) -> Option<f64>,
        Option<f64>,
    );
    let ratios: [Ratio; 5] = [
        (
            "first boot to sshd",
            w_first,
            d_first,
            |b| Some(b.sshd),
            Some(75.0),
        ),
        (
            "later boot to sshd",
            w_later,
            d_later,
            |b| Some(b.sshd),
            Some(60.0),
        ),
        (
            "first boot total",
            w_first,
            d_first,
            |b| Some(b.finished),
            None,
        ),
        (
            "memory used (first boot)",
            w_first,
            d_first,
            |b| Some(b.used_mib),
            Some(100.0),
        ),
        (
            "memory used (later boot)",
            w_later,
            d_later,
            |b| Some(b.used_mib),
            Some(100.0),
        ),
    ];
    for (label, w, d, f, goal) in ratios {
        match (median_of(w, f), median_of(d, f)) {
            (Some(w), Some(d)) if d > 0.0 => {
                let r = w / d * 100.0;
                match goal {
                    Some(goal) => {
                        let verdict = if r <= goal { "met" } else { "NOT met" };
                        println!("  {label:<26}{r:>7.1} %   goal <= {goal:.0} %   {verdict}");
                    }
                    None => println!("  {label:<26}{r:>7.1} %   (no goal)"),
                }
            }
            _ => println!("  {label:<26}{:>7}", "-"),
        }
    }
    println!(
        "  (first boot total = QEMU start until systemd's startup finished, which on Wellcar's \
         first boot includes making the RSA host key after multi-user.target)"
    );
}

/// The biggest processes of the last boot of each series.
pub fn processes(series: &[Series; 4]) {
    for s in series {
        let Some(b) = s.boots.last() else { continue };
        println!();
        println!(
            "{} (last run): used {:.0} MiB; biggest processes by RSS:",
            s.name, b.used_mib
        );
        for (rss, comm) in &b.top {
            println!("  {:>7.1} MiB  {comm}", *rss as f64 / 1024.0);
        }
    }
}

/// A critical chain, indented.
pub fn critical_chain(title: &str, chain: &str) {
    println!();
    println!("{title}: systemd-analyze critical-chain");
    for l in chain.lines() {
        println!("  {l}");
    }
}
