//! Real DHCP on this machine (needs root, `ip` from iproute2 and `dnsmasq`): a veth pair
//! between two network namespaces, `dnsmasq` serving DHCP in one, [`bring_up`] and
//! [`tear_down`] in the other (the test thread joins it with `setns`).
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};

use super::*;

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2) is required");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

struct Namespaces {
    client: String,
    server: String,
    dnsmasq: Option<Child>,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        if let Some(mut d) = self.dnsmasq.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Moves the calling thread into network namespace `name`.
fn enter(name: &str) {
    let file = std::fs::File::open(format!("/var/run/netns/{name}")).unwrap();
    // SAFETY: setns takes a valid open namespace fd and a flag; it only changes this thread's
    // network namespace.
    let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
}

#[test]
fn dhcp_lease_address_route_dns_and_teardown_in_a_namespace() {
    assert_eq!(rustix_uid(), 0, "this test needs root (network namespaces)");
    let tag = std::process::id();
    let mut ns = Namespaces {
        client: format!("wcnet-c{tag}"),
        server: format!("wcnet-s{tag}"),
        dnsmasq: None,
    };
    let (c_if, s_if) = (format!("wcc{tag}"), format!("wcs{tag}"));
    ip(&["netns", "add", &ns.client]);
    ip(&["netns", "add", &ns.server]);
    ip(&[
        "link", "add", &c_if, "netns", &ns.client, "type", "veth", "peer", "name", &s_if, "netns",
        &ns.server,
    ]);
    ip(&[
        "-n",
        &ns.server,
        "addr",
        "add",
        "10.77.0.1/24",
        "dev",
        &s_if,
    ]);
    ip(&["-n", &ns.server, "link", "set", &s_if, "up"]);
    let dir = tempfile::tempdir().unwrap();
    let dnsmasq = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.server,
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
        ])
        .args(["--port=0", "--user=root", "--bind-interfaces"])
        .arg(format!("--interface={s_if}"))
        .arg("--dhcp-range=10.77.0.50,10.77.0.99,255.255.255.0,1h")
        .arg("--dhcp-option=option:router,10.77.0.1")
        .arg("--dhcp-option=option:dns-server,10.77.0.53")
        .arg("--dhcp-option=option:domain-name,wellcar.test")
        .arg(format!(
            "--dhcp-leasefile={}",
            dir.path().join("leases").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq (dnsmasq-base) is required");
    ns.dnsmasq = Some(dnsmasq);

    let client_ns = ns.client.clone();
    let c_name = c_if.clone();
    let resolv = dir.path().join("etc/resolv.conf");
    let resolv_in = resolv.clone();
    // A thread of its own joins the client namespace, so this thread stays where it was.
    let (configured, after) = std::thread::spawn(move || {
        enter(&client_ns);
        let args = vec![IpArg::Dhcp {
            device: Some(c_name.clone()),
        }];
        let configured = bring_up(&args, Timeouts::default(), &resolv_in).unwrap();
        let mut rtnl = rtnl::Rtnl::open().unwrap();
        let addresses = rtnl.addresses().unwrap();
        tear_down(&configured).unwrap();
        let after_addresses = rtnl.addresses().unwrap();
        let link = rtnl
            .links()
            .unwrap()
            .into_iter()
            .find(|l| l.name == c_name)
            .unwrap();
        (configured, (addresses, after_addresses, link))
    })
    .join()
    .unwrap();
    let (addresses, after_addresses, link) = after;

    assert_eq!(configured.len(), 1);
    let c = &configured[0];
    let octets = c.address.octets();
    assert!(
        octets[..3] == [10, 77, 0] && (50..=99).contains(&octets[3]),
        "{c:?}"
    );
    assert_eq!(c.prefix_len, 24);
    assert_eq!(c.gateway, Some(Ipv4Addr::new(10, 77, 0, 1)));
    assert_eq!(c.dns, [Ipv4Addr::new(10, 77, 0, 53)]);
    assert_eq!(c.domain.as_deref(), Some("wellcar.test"));
    assert!(c.method.contains("10.77.0.1"), "{}", c.method);
    assert!(addresses
        .iter()
        .any(|a| a.address == c.address && a.index == c.index));
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        "# written by wellcar-init for first-boot provisioning\nsearch wellcar.test\nnameserver 10.77.0.53\n"
    );
    // The lease is the server's record too.
    let leases = std::fs::read_to_string(dir.path().join("leases")).unwrap();
    assert!(leases.contains(&c.address.to_string()), "{leases}");
    // Teardown: no address left on the link, the link is down.
    assert!(
        !after_addresses.iter().any(|a| a.index == c.index),
        "{after_addresses:?}"
    );
    assert!(!link.up, "{link:?}");
}

#[test]
fn the_default_route_is_installed_then_removed_with_the_address() {
    assert_eq!(rustix_uid(), 0, "this test needs root (network namespaces)");
    let tag = format!("{}r", std::process::id());
    let ns = Namespaces {
        client: format!("wcnet-c{tag}"),
        server: format!("wcnet-s{tag}"),
        dnsmasq: None,
    };
    let (c_if, s_if) = (format!("wcc{tag}"), format!("wcs{tag}"));
    ip(&["netns", "add", &ns.client]);
    ip(&["netns", "add", &ns.server]);
    ip(&[
        "link", "add", &c_if, "netns", &ns.client, "type", "veth", "peer", "name", &s_if, "netns",
        &ns.server,
    ]);
    ip(&["-n", &ns.server, "link", "set", &s_if, "up"]);
    let client_ns = ns.client.clone();
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    let arg = ip_arg::parse(&format!(
        "10.88.0.5::10.88.0.1:255.255.255.0::{c_if}:none:10.88.0.53"
    ))
    .unwrap();
    let configured = std::thread::spawn(move || {
        enter(&client_ns);
        bring_up(&[arg], Timeouts::default(), &resolv).unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(configured[0].method, "static");
    let routes = Command::new("ip")
        .args(["-n", &ns.client, "-4", "route", "show", "default"])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    assert!(
        routes.contains("via 10.88.0.1") && routes.contains(&c_if),
        "{routes}"
    );
    let client_ns = ns.client.clone();
    std::thread::spawn(move || {
        enter(&client_ns);
        tear_down(&configured).unwrap();
    })
    .join()
    .unwrap();
    let routes = Command::new("ip")
        .args(["-n", &ns.client, "-4", "route", "show"])
        .output()
        .unwrap();
    assert!(
        routes.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&routes.stdout)
    );
}

fn rustix_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}
