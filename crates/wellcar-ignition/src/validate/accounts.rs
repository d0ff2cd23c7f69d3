//! The `passwd` section, checked the way shadow-utils' `useradd`/`groupadd` check their
//! arguments, so nothing a config says can add a line to `/etc/passwd`, `shadow`, `group` or
//! `gshadow` other than the one it describes:
//!
//! - user and group names (also `primaryGroup` and `groups`): Debian's rules (not empty, at most
//!   32 bytes, no `:`, `,`, `/`, whitespace or control characters, not starting with `-`, `+` or
//!   `~`, not `.`/`..`, not all digits). `/` is refused too, since a name becomes `/home/<name>`;
//! - `passwordHash`, `gecos`, `homeDir` and `shell`: no `:` and no control character (a newline
//!   would start a new database line); `homeDir` is absolute;
//! - `uid`/`gid`: 0..=4294967294 (`(uid_t)-1` means "no change" to the kernel).
//!
//! [`account_problems`] is used by both the validator and the applier.

use super::Validator;
use crate::model::Passwd;

/// The largest uid or gid a database may hold.
pub(crate) const MAX_ID: i64 = 4_294_967_294;

/// What is wrong with a user or group name, if anything.
pub(crate) fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("name is empty");
    }
    if name.len() > 32 {
        return Some("name is longer than 32 bytes");
    }
    if name == "." || name == ".." {
        return Some("name is . or ..");
    }
    if name.starts_with(['-', '+', '~']) {
        return Some("name starts with '-', '+' or '~'");
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Some("name is all digits");
    }
    if name
        .chars()
        .any(|c| matches!(c, ':' | ',' | '/') || c.is_whitespace() || c.is_control())
    {
        return Some("name contains ':', ',', '/', whitespace or a control character");
    }
    None
}

/// What is wrong with a free-text database field (hash, GECOS, home, shell), if anything.
pub(crate) fn field_problem(value: &str) -> Option<&'static str> {
    value
        .chars()
        .any(|c| c == ':' || c.is_control())
        .then_some("contains ':' or a control character such as a newline")
}

fn id_problem(id: i64) -> Option<&'static str> {
    (!(0..=MAX_ID).contains(&id)).then_some("id is outside 0..=4294967294")
}

/// Every problem in `passwd`, as (JSON path, explanation naming the value).
pub(crate) fn account_problems(passwd: &Passwd) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut check = |at: String, value: &str, problem: Option<&'static str>| {
        if let Some(p) = problem {
            out.push((at, format!("{value:?}: {p}")));
        }
    };
    for (i, g) in passwd.groups.iter().enumerate() {
        let at = format!("passwd.groups.{i}");
        check(format!("{at}.name"), &g.name, name_problem(&g.name));
        if let Some(gid) = g.gid {
            check(format!("{at}.gid"), &gid.to_string(), id_problem(gid));
        }
        if let Some(h) = &g.password_hash {
            check(format!("{at}.passwordHash"), h, field_problem(h));
        }
    }
    for (i, u) in passwd.users.iter().enumerate() {
        let at = format!("passwd.users.{i}");
        check(format!("{at}.name"), &u.name, name_problem(&u.name));
        if let Some(uid) = u.uid {
            check(format!("{at}.uid"), &uid.to_string(), id_problem(uid));
        }
        if let Some(g) = &u.primary_group {
            check(format!("{at}.primaryGroup"), g, name_problem(g));
        }
        for (j, g) in u.groups.iter().enumerate() {
            check(format!("{at}.groups.{j}"), g, name_problem(g));
        }
        for (key, value) in [
            ("passwordHash", &u.password_hash),
            ("gecos", &u.gecos),
            ("shell", &u.shell),
            ("homeDir", &u.home_dir),
        ] {
            if let Some(v) = value {
                check(format!("{at}.{key}"), v, field_problem(v));
            }
        }
        if let Some(home) = u.home_dir.as_deref().filter(|h| !h.starts_with('/')) {
            check(
                format!("{at}.homeDir"),
                home,
                Some("home directory is not an absolute path"),
            );
        }
    }
    out
}

impl Validator {
    pub(super) fn accounts(&mut self, passwd: &Passwd) {
        for (at, msg) in account_problems(passwd) {
            self.err(at, msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PasswdGroup, PasswdUser};

    fn user(f: impl FnOnce(&mut PasswdUser)) -> Passwd {
        let mut u = PasswdUser {
            name: "core".into(),
            ..Default::default()
        };
        f(&mut u);
        Passwd {
            users: vec![u],
            ..Default::default()
        }
    }

    fn fields(p: &Passwd) -> Vec<String> {
        account_problems(p).into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn uid0_injection_through_name_gecos_and_hash_is_refused_with_paths() {
        let line = "x\nroot2:x:0:0::/root:/bin/sh";
        assert_eq!(
            fields(&user(|u| u.name = format!("evil{line}"))),
            ["passwd.users.0.name"]
        );
        assert_eq!(
            fields(&user(|u| u.gecos = Some(format!("a{line}")))),
            ["passwd.users.0.gecos"]
        );
        assert_eq!(
            fields(&user(|u| u.gecos = Some("a:0:0".into()))),
            ["passwd.users.0.gecos"]
        );
        assert_eq!(
            fields(&user(|u| u.password_hash = Some(format!("$6$x{line}")))),
            ["passwd.users.0.passwordHash"]
        );
        assert_eq!(
            fields(&user(|u| u.shell = Some("/bin/sh:0".into()))),
            ["passwd.users.0.shell"]
        );
        assert_eq!(
            fields(&user(|u| u.home_dir = Some("home".into()))),
            ["passwd.users.0.homeDir"]
        );
    }

    #[test]
    fn names_follow_debians_useradd_rules() {
        for bad in [
            "",
            "-rf",
            "+x",
            "~x",
            "a:b",
            "a,b",
            "a b",
            "a\tb",
            "a/b",
            "..",
            "1234",
            "abcdefghijabcdefghijabcdefghijabc",
        ] {
            assert!(name_problem(bad).is_some(), "{bad:?} accepted");
        }
        for good in [
            "core",
            "systemd-network",
            "_apt",
            "a.b",
            "user$",
            "0x1",
            "Ab_9-",
        ] {
            assert_eq!(name_problem(good), None, "{good:?} refused");
        }
    }

    #[test]
    fn ids_outside_the_range_are_refused() {
        let p = Passwd {
            groups: vec![PasswdGroup {
                name: "g".into(),
                gid: Some(4_294_967_295),
                ..Default::default()
            }],
            users: vec![
                PasswdUser {
                    name: "a".into(),
                    uid: Some(-1),
                    ..Default::default()
                },
                PasswdUser {
                    name: "b".into(),
                    uid: Some(MAX_ID),
                    ..Default::default()
                },
            ],
        };
        assert_eq!(fields(&p), ["passwd.groups.0.gid", "passwd.users.0.uid"]);
    }
}
