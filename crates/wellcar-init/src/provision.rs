//! First-boot provisioning: choose the platform, find the config, apply it with the
//! platform's hostname and ssh keys.
//!
//! The command line read here is `/proc/cmdline` followed by fw_cfg
//! `wellcar_contract::FW_CFG_KERNEL_ARGS` when QEMU passes it (`wellcar run --platform`,
//! `--kernel-arg`), so those arguments win (last occurrence wins).
//!
//! Contract: [`provision`] picks the platform ([`wellcar_platform::Platform::select`] on
//! `/proc/cmdline`, the OEM `grub.cfg` when the command line names none), tries the
//! platform's config sources in order, merges the user's config over the platform's
//! attributes (hostname, keys for `core`), renders its references and applies it to
//! `/sysroot`. No config anywhere is not an error: the machine boots unprovisioned and the log
//! says so (metadata attributes are still applied). Every failure is a [`ProvisionError`]
//! naming the phase, the source (URL, file, device) and, when a server answered, the HTTP
//! status, for the failure report.

use std::path::Path;

use wellcar_init::failure::Phase;
use wellcar_platform::metadata::{Retry, DEFAULT_BASE};
use wellcar_platform::{Attributes, ConfigSource, MetadataClient, Platform, PlatformError};

use crate::log::Log;
use crate::{configdrive, firstboot, storage_stage, CLASS_BLOCK, FW_CFG_BY_NAME, SYSROOT};

/// A provisioning failure, with what the failure report shows.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct ProvisionError {
    /// Which phase failed.
    pub phase: Phase,
    /// The URL, file or device involved.
    pub source_name: Option<String>,
    /// The HTTP status, when a server answered.
    pub http_status: Option<u16>,
    /// The error.
    #[source]
    pub error: Box<dyn std::error::Error + Send + Sync>,
}

impl ProvisionError {
    fn new(
        phase: Phase,
        source_name: impl Into<Option<String>>,
        error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ProvisionError {
        let error = error.into();
        let http_status = http_status_of(error.as_ref());
        ProvisionError {
            phase,
            source_name: source_name.into(),
            http_status,
            error,
        }
    }
}

/// The HTTP status anywhere in an error chain of platform errors.
fn http_status_of(error: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(PlatformError::Status { status, .. }) = e.downcast_ref::<PlatformError>() {
            return Some(*status);
        }
        cause = e.source();
    }
    None
}

/// A config and where it came from.
struct Found {
    source: String,
    bytes: Vec<u8>,
}

/// The metadata base URL: `wellcar.metadata.url=` (tests, labs), else the link-local address.
fn metadata_base(cmdline: &str) -> String {
    wellcar_platform::id::cmdline_value(cmdline, "wellcar.metadata.url")
        .unwrap_or_else(|| DEFAULT_BASE.to_string())
}

fn metadata_client(cmdline: &str) -> MetadataClient {
    let agent = wellcar_http::system_client(&wellcar_http::ClientOptions::new("wellcar-init"));
    MetadataClient::new(metadata_base(cmdline), agent, Retry::default())
}

/// The network brought up for provisioning, lazily, once (crate `wellcar-netinit`).
struct Network {
    config: wellcar_netinit::NetConfig,
    up: Option<wellcar_netinit::NetworkState>,
}

impl Network {
    fn new(cmdline: &str) -> Result<Network, ProvisionError> {
        let config = wellcar_netinit::NetConfig::from_cmdline(cmdline)
            .map_err(|e| ProvisionError::new(Phase::Network, None, e))?;
        Ok(Network { config, up: None })
    }

    /// Brings the network up unless it is; `why` names what needs it.
    fn ensure(&mut self, log: &mut Log, why: &str) -> Result<(), ProvisionError> {
        if self.up.is_some() {
            return Ok(());
        }
        if self.config.interfaces.is_empty() {
            return Err(ProvisionError::new(
                Phase::Network,
                Some(why.to_string()),
                "ip=off on the kernel command line, but this needs the network",
            ));
        }
        log.info(&format!("bringing up the network for {why}"));
        let options = wellcar_netinit::BringUpOptions {
            resolv_conf: RESOLV_CONF.into(),
            ..Default::default()
        };
        let state = wellcar_netinit::bring_up(&self.config, &options)
            .map_err(|e| ProvisionError::new(Phase::Network, Some(why.to_string()), e))?;
        for configured in &state.configured {
            log.info(&format!("network: {configured}"));
        }
        self.up = Some(state);
        Ok(())
    }
}

/// DNS for the initramfs.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The CA bundle of the verified `/usr`, seen through the new root's `/etc` overlay (mounted
/// before provisioning). The initramfs carries no bundle of its own: pointing `SSL_CERT_FILE`
/// (read by `rustls-native-certs` when a fetcher is made) here makes public HTTPS config URLs
/// trust exactly what the booted system trusts.
const SYSROOT_CA_BUNDLE: &str = "/sysroot/etc/ssl/certs/ca-certificates.crt";

/// Trusts [`SYSROOT_CA_BUNDLE`] for every fetch of this boot, when the image has one.
fn trust_the_images_ca_bundle(log: &mut Log) {
    if Path::new(SYSROOT_CA_BUNDLE).is_file() {
        // /init is single-threaded while it provisions: nothing reads the environment meanwhile.
        std::env::set_var("SSL_CERT_FILE", SYSROOT_CA_BUNDLE);
        log.info(&format!(
            "HTTPS trusts the image's CA bundle {SYSROOT_CA_BUNDLE}"
        ));
    } else {
        log.info(&format!(
            "no CA bundle at {SYSROOT_CA_BUNDLE}: HTTPS trusts only the config's CAs"
        ));
    }
}

/// Provisions `/sysroot` (see the module docs); `oem` is the OEM partition, if any. Returns the
/// network brought up for it, if any, to tear down before switch root (also after a failure,
/// by the caller's failure path dropping it: teardown is explicit, see `main`).
pub fn provision(
    log: &mut Log,
    oem: Option<&Path>,
) -> Result<Option<wellcar_netinit::NetworkState>, ProvisionError> {
    let mut network = None;
    let result = provision_with(log, oem, &mut network);
    let up = network.and_then(|n: Network| n.up);
    match result {
        Ok(()) => Ok(up),
        Err(error) => {
            if let Some(state) = up {
                if let Err(teardown) = state.teardown() {
                    log.info(&format!("network teardown after the failure: {teardown}"));
                }
            }
            Err(error)
        }
    }
}

fn provision_with(
    log: &mut Log,
    oem: Option<&Path>,
    network_slot: &mut Option<Network>,
) -> Result<(), ProvisionError> {
    let extra = wellcar_contract::fw_cfg_kernel_args_file();
    let (cmdline, extra_args) =
        wellcar_platform::id::read_cmdline(Path::new("/proc/cmdline"), &extra).map_err(|e| {
            ProvisionError::new(Phase::Platform, Some("/proc/cmdline".to_string()), e)
        })?;
    if let Some(args) = extra_args {
        log.info(&format!("arguments from {}: {args}", extra.display()));
    }
    let grub_cfg = match (
        wellcar_platform::id::cmdline_value(&cmdline, "ignition.platform.id"),
        oem,
    ) {
        (None, Some(oem)) => firstboot::oem_file(oem, Path::new("/mnt/oem"), "grub.cfg")
            .ok()
            .flatten()
            .map(|f| String::from_utf8_lossy(&f.bytes).into_owned()),
        _ => None,
    };
    let platform = Platform::select(&cmdline, grub_cfg.as_deref())
        .map_err(|e| ProvisionError::new(Phase::Platform, None, e))?;
    trust_the_images_ca_bundle(log);
    let network = network_slot.insert(Network::new(&cmdline)?);
    let config_url = wellcar_platform::id::config_url(&cmdline);
    let sources = platform.config_sources(config_url.as_deref());
    log.info(&format!(
        "platform {}; config sources: {}",
        platform.id(),
        sources
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ));

    let mut attributes = Attributes::default();
    let mut found = None;
    for source in &sources {
        if source.needs_network() {
            network.ensure(log, &source.to_string())?;
        }
        let (config, attrs) = read_source(log, source, platform, &cmdline, oem)?;
        if !attrs.is_empty() && attributes.is_empty() {
            attributes = attrs;
        }
        if config.is_some() {
            found = config;
            break;
        }
    }
    let user = match &found {
        None => {
            log.info(&format!(
                "no Ignition config (platform {}): the machine stays unprovisioned",
                platform.id()
            ));
            None
        }
        Some(config) => {
            log.info(&format!(
                "Ignition config from {} ({} bytes)",
                config.source,
                config.bytes.len()
            ));
            let parsed = wellcar_ignition::parse_config(&config.bytes)
                .map_err(|e| ProvisionError::new(Phase::Parse, config.source.clone(), e))?;
            for warning in &parsed.warnings {
                log.info(&format!("Ignition warning: {warning}"));
            }
            let remote = wellcar_platform::neednet::remote_sources(&parsed.config);
            if !remote.is_empty() {
                log.info(&format!(
                    "config references remote sources: {}",
                    remote.join(" ")
                ));
            }
            let rendered =
                wellcar_ignition::resolve_references_with(parsed.config, &online_fetcher()?)
                    .map_err(|e| ProvisionError::new(Phase::Fetch, config.source.clone(), e))?;
            Some(rendered)
        }
    };
    if user.is_none() && attributes.is_empty() {
        return Ok(());
    }
    if !attributes.is_empty() {
        log.info(&format!(
            "{} metadata: hostname {:?}, {} ssh key(s) for core",
            platform.id(),
            attributes.hostname,
            attributes.ssh_keys.len()
        ));
    }
    let config = match user {
        Some(user) => wellcar_ignition::merge(attributes.to_config(), user),
        None => attributes.to_config(),
    };
    let source_name = found.map(|f| f.source);
    let kargs = &config.kernel_arguments;
    if !(kargs.should_exist.is_empty() && kargs.should_not_exist.is_empty()) {
        let oem = oem.ok_or_else(|| {
            ProvisionError::new(
                Phase::Apply,
                source_name.clone(),
                "kernelArguments: no OEM partition next to ROOT to keep grub.cfg on",
            )
        })?;
        let changed = storage_stage::apply_kernel_arguments(oem, Path::new("/mnt/oem"), kargs)
            .map_err(|e| ProvisionError::new(Phase::Apply, source_name.clone(), e))?;
        if changed {
            log.info("kernelArguments written to the OEM grub.cfg: rebooting once to apply them");
            rustix::fs::sync();
            rustix::system::reboot(rustix::system::RebootCommand::Restart)
                .map_err(|e| ProvisionError::new(Phase::Apply, source_name.clone(), e))?;
        }
    }
    let storage = &config.storage;
    if !(storage.disks.is_empty()
        && storage.raid.is_empty()
        && storage.luks.is_empty()
        && storage.filesystems.is_empty())
    {
        storage_stage::link_usr_tools(Path::new("/"), Path::new(SYSROOT))
            .map_err(|e| ProvisionError::new(Phase::Apply, source_name.clone(), e))?;
        let modules = storage_stage::storage_modules(storage);
        storage_stage::load_modules(&modules)
            .map_err(|e| ProvisionError::new(Phase::Apply, source_name.clone(), e))?;
        if !modules.is_empty() {
            log.info(&format!("storage modules loaded from /usr: {modules:?}"));
        }
    }
    let options = wellcar_ignition::ApplyOptions {
        kernel_arguments_applied: true,
        fetch: wellcar_ignition::fetch::FetchOptions::default(),
        ..Default::default()
    };
    let report = wellcar_ignition::apply_with(&config, Path::new(SYSROOT), &options)
        .map_err(|e| ProvisionError::new(Phase::Apply, source_name.clone(), e))?;
    log.info(&format!("Ignition applied: {report:?}"));
    if !(storage.luks.is_empty() && storage.raid.is_empty()) {
        storage_stage::close_volumes(storage)
            .map_err(|e| ProvisionError::new(Phase::Apply, source_name, e))?;
        log.info("LUKS volumes and RAID arrays closed: the booted system opens them");
    }
    Ok(())
}

/// The fetcher for remote configs and file contents once the network is up: Ignition's
/// defaults (system CAs, retries, timeouts); each config's own `ignition` section is applied on
/// top by `wellcar_ignition`.
fn online_fetcher() -> Result<wellcar_ignition::fetch::Fetcher, ProvisionError> {
    wellcar_ignition::fetch::Fetcher::new(wellcar_ignition::fetch::FetchOptions::default())
        .map_err(|e| ProvisionError::new(Phase::Fetch, None, e))
}

/// Maps an error of reading `name` to a fetch-phase [`ProvisionError`].
fn fetch_err<E>(name: String) -> impl FnOnce(E) -> ProvisionError
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    move |e| ProvisionError::new(Phase::Fetch, name, e)
}

/// Reads one source: its config, if any, and the attributes it gives.
fn read_source(
    log: &mut Log,
    source: &ConfigSource,
    platform: Platform,
    cmdline: &str,
    oem: Option<&Path>,
) -> Result<(Option<Found>, Attributes), ProvisionError> {
    match source {
        ConfigSource::FwCfg => {
            let found = firstboot::fw_cfg_config(Path::new(FW_CFG_BY_NAME))
                .map_err(fetch_err(FW_CFG_BY_NAME.to_string()))?;
            Ok((
                found.map(|f| Found {
                    source: f.source,
                    bytes: f.bytes,
                }),
                Attributes::default(),
            ))
        }
        ConfigSource::OemFile => {
            let Some(oem) = oem else {
                return Ok((None, Attributes::default()));
            };
            let found = firstboot::oem_config(oem, Path::new("/mnt/oem"))
                .map_err(fetch_err(format!("config.ign on {}", oem.display())))?;
            Ok((
                found.map(|f| Found {
                    source: f.source,
                    bytes: f.bytes,
                }),
                Attributes::default(),
            ))
        }
        ConfigSource::Url(url) => {
            let resource = wellcar_ignition::model::Resource {
                source: Some(url.clone()),
                ..Default::default()
            };
            let bytes = online_fetcher()?
                .fetch_bytes(&resource, wellcar_ignition::fetch::MAX_CONFIG_BYTES)
                .map_err(fetch_err(url.clone()))?
                .unwrap_or_default();
            Ok((
                Some(Found {
                    source: url.clone(),
                    bytes,
                }),
                Attributes::default(),
            ))
        }
        ConfigSource::ConfigDrive => {
            let Some((device, fs)) = configdrive::find(Path::new(CLASS_BLOCK), Path::new("/dev"))
            else {
                log.info("no config drive (label config-2)");
                return Ok((None, Attributes::default()));
            };
            let contents = configdrive::read(&device, fs, Path::new("/mnt/config-drive"))
                .map_err(fetch_err(device.display().to_string()))?;
            let name = format!(
                "{} on {}",
                wellcar_platform::configdrive::USER_DATA,
                device.display()
            );
            Ok((
                contents.user_data.map(|bytes| Found {
                    source: name,
                    bytes,
                }),
                contents.attributes,
            ))
        }
        ConfigSource::Metadata(platform_of_service) => {
            debug_assert_eq!(*platform_of_service, platform);
            let client = metadata_client(cmdline);
            let base = client.url("");
            let bytes = client
                .user_data(platform)
                .map_err(fetch_err(base.clone()))?;
            let attributes = client
                .attributes(platform)
                .map_err(fetch_err(base.clone()))?;
            let name = format!("{} metadata service {base}", platform.id());
            Ok((
                bytes.map(|bytes| Found {
                    source: name,
                    bytes,
                }),
                attributes,
            ))
        }
    }
}
