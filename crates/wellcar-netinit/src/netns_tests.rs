//! End-to-end tests, as root: a client namespace with two veths (`wc0`, `wc1`) whose peers
//! (`ws0` 10.77.0.1/24, `ws1`) sit in a server namespace, where `dnsmasq` serves DHCP on `ws0`
//! only. The client code runs in a thread moved into the client namespace; what it did is
//! checked with iproute2 from outside. Namespaces (and with them the veths) and dnsmasq are
//! removed on drop, also after a panic.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::*;

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

struct Lab {
    client: String,
    server: String,
    dir: tempfile::TempDir,
    dnsmasq: Option<Child>,
}

fn ip(args: &[&str]) -> String {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

impl Lab {
    fn new() -> Lab {
        let tag = format!(
            "wcni{}-{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        // Built before the first command, so Drop removes whatever part got created.
        let lab = Lab {
            client: format!("{tag}c"),
            server: format!("{tag}s"),
            dir: tempfile::tempdir().unwrap(),
            dnsmasq: None,
        };
        ip(&["netns", "add", &lab.client]);
        ip(&["netns", "add", &lab.server]);
        for (near, far) in [("wc0", "ws0"), ("wc1", "ws1")] {
            ip(&[
                "link",
                "add",
                near,
                "netns",
                &lab.client,
                "type",
                "veth",
                "peer",
                "name",
                far,
                "netns",
                &lab.server,
            ]);
            ip(&["-n", &lab.server, "link", "set", far, "up"]);
        }
        ip(&[
            "-n",
            &lab.server,
            "addr",
            "add",
            "10.77.0.1/24",
            "dev",
            "ws0",
        ]);
        lab
    }

    fn start_dnsmasq(&mut self) {
        let log = File::create(self.dir.path().join("dnsmasq.log")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.server,
                "dnsmasq",
                "--no-daemon",
                "--port=0",
            ])
            .arg("--conf-file=/dev/null")
            .arg("--user=root")
            .arg("--interface=ws0")
            .arg("--bind-interfaces")
            .arg("--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,1h")
            .arg("--dhcp-option=option:router,10.77.0.1")
            .arg("--dhcp-option=option:dns-server,10.77.0.53")
            .arg("--log-dhcp")
            .arg("--log-facility=-")
            .arg(format!(
                "--dhcp-leasefile={}",
                self.dir.path().join("leases").display()
            ))
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("pid").display()
            ))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting dnsmasq (Debian package dnsmasq-base)");
        self.dnsmasq = Some(child);
    }

    fn resolv_conf(&self) -> PathBuf {
        self.dir.path().join("etc/resolv.conf")
    }

    fn options(&self, dhcp_timeout: Duration) -> BringUpOptions {
        BringUpOptions {
            carrier_timeout: Duration::from_secs(10),
            dhcp_timeout,
            resolv_conf: self.resolv_conf(),
        }
    }

    /// Runs `work` in a thread inside the client namespace.
    fn in_client<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let namespace = File::open(format!("/run/netns/{}", self.client)).unwrap();
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    rustix::thread::move_into_link_name_space(
                        std::os::fd::AsFd::as_fd(&namespace),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .expect("setns into the client namespace");
                    work()
                })
                .join()
                .unwrap()
        })
    }

    fn client_ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.client.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `ip -4 -o addr` of a client interface.
    fn addresses(&self, device: &str) -> String {
        self.client_ip(&["-4", "-o", "addr", "show", "dev", device])
    }

    fn default_routes(&self) -> String {
        self.client_ip(&["-4", "route", "show", "default"])
    }

    /// Whether the interface is administratively up (`UP` among its `<...>` flags).
    fn is_up(&self, device: &str) -> bool {
        let line = self.client_ip(&["-o", "link", "show", "dev", device]);
        let flags = line
            .split('<')
            .nth(1)
            .and_then(|rest| rest.split('>').next());
        flags.unwrap().split(',').any(|flag| flag == "UP")
    }

    fn assert_torn_down(&self) {
        for device in ["wc0", "wc1"] {
            assert_eq!(self.addresses(device), "", "addresses left on {device}");
            assert!(!self.is_up(device), "{device} left up");
        }
        assert_eq!(self.default_routes(), "", "default route left");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.dnsmasq.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for namespace in [&self.client, &self.server] {
            let _ = Command::new("ip")
                .args(["netns", "del", namespace])
                .status();
        }
    }
}

/// Polls `probe` until it holds; fails naming `what` after `timeout`.
fn wait_until(what: &str, timeout: Duration, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !probe() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn dhcp_lease_configures_address_route_and_dns_and_teardown_clears_them() {
    let mut lab = Lab::new();
    lab.start_dnsmasq();
    let config = NetConfig::from_cmdline("ro ip=dhcp nameserver=10.77.0.99").unwrap();
    let options = lab.options(Duration::from_secs(60));
    let state = lab.in_client(|| bring_up(&config, &options)).unwrap();

    // wc1 has a link but no server: wc0's lease wins.
    let [configured] = state.configured.as_slice() else {
        panic!("expected one configured interface: {state:?}")
    };
    assert_eq!(configured.link.name, "wc0");
    let leased = configured.address;
    assert_eq!(leased.prefix_len, 24);
    assert!((50..=60).contains(&leased.address.octets()[3]), "{leased}");
    assert_eq!(configured.gateway, Some(Ipv4Addr::new(10, 77, 0, 1)));
    assert!(matches!(
        configured.source,
        Source::Dhcp { server, lease_time: Some(lease_time) }
            if server == Ipv4Addr::new(10, 77, 0, 1) && lease_time == Duration::from_secs(3600)
    ));
    assert!(lab.addresses("wc0").contains(&format!("inet {leased} ")));
    assert!(lab
        .default_routes()
        .starts_with("default via 10.77.0.1 dev wc0"));
    assert_eq!(
        std::fs::read_to_string(lab.resolv_conf()).unwrap(),
        "# written by wellcar-netinit in the initramfs\nnameserver 10.77.0.99\nnameserver 10.77.0.53\n"
    );
    let leases = lab.dir.path().join("leases");
    wait_until(
        "dnsmasq's lease file to list the lease",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&leases)
                .is_ok_and(|text| text.contains(&leased.address.to_string()))
        },
    );

    let links_set_up = names(&state.links_set_up);
    assert_eq!(links_set_up, ["wc0", "wc1"]);
    lab.in_client(|| state.teardown()).unwrap();
    lab.assert_torn_down();
}

#[test]
fn static_ip_argument_configures_without_dhcp() {
    let lab = Lab::new();
    let config =
        NetConfig::from_cmdline("ip=10.77.0.9::10.77.0.1:255.255.255.0:node9:wc0:none:10.77.0.53")
            .unwrap();
    let options = lab.options(Duration::from_secs(5));
    let state = lab.in_client(|| bring_up(&config, &options)).unwrap();

    assert_eq!(state.hostname(), Some("node9"));
    assert_eq!(state.configured[0].source, Source::Static);
    assert!(lab.addresses("wc0").contains("inet 10.77.0.9/24 "));
    assert!(lab
        .default_routes()
        .starts_with("default via 10.77.0.1 dev wc0"));
    assert!(lab.is_up("wc0"));
    assert!(!lab.is_up("wc1"), "ip= named wc0 only");
    assert_eq!(
        std::fs::read_to_string(lab.resolv_conf()).unwrap(),
        "# written by wellcar-netinit in the initramfs\nnameserver 10.77.0.53\n"
    );
    lab.in_client(|| state.teardown()).unwrap();
    lab.assert_torn_down();
}

#[test]
fn no_dhcp_server_fails_within_the_bound_naming_the_interfaces_and_undoes_everything() {
    let lab = Lab::new();
    let config = NetConfig::from_cmdline("ip=dhcp").unwrap();
    let options = lab.options(Duration::from_secs(3));
    let error = lab.in_client(|| bring_up(&config, &options)).unwrap_err();

    let NetError::Dhcp { interfaces, errors } = &error else {
        panic!("expected a DHCP error, got {error}")
    };
    assert_eq!(interfaces, &["wc0", "wc1"]);
    assert_eq!(errors.len(), 2);
    assert!(errors
        .iter()
        .all(|error| matches!(error, DhcpError::Timeout { discovers, .. } if *discovers >= 2)));
    let message = error.to_string();
    assert!(
        message.starts_with("DHCP failed on every interface tried (wc0, wc1): DHCP on wc"),
        "{message}"
    );
    lab.assert_torn_down();
    assert!(!lab.resolv_conf().exists());
}

#[test]
fn unknown_device_in_ip_argument_is_named() {
    let lab = Lab::new();
    let config = NetConfig::from_cmdline("ip=eth9:dhcp").unwrap();
    let options = lab.options(Duration::from_secs(3));
    let error = lab.in_client(|| bring_up(&config, &options)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "interface eth9 (from ip=) does not exist; interfaces: wc0, wc1"
    );
    lab.assert_torn_down();
}
