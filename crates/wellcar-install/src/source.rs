//! Where the image and the Ignition config come from.
//!
//! An image is a raw disk image, optionally zstd- or gzip-compressed (recognised by its magic
//! bytes, decompressed while streaming), lying next to its signed `image-manifest.json`
//! (and `.sig`):
//! - a file (`--image`, named as the manifest's `disk_image`, optionally with `.zst`/`.gz`);
//! - a build directory (`--build`, the manifest's `disk_image` inside it);
//! - an `http(s)://` URL (`--image-url`, named as for a file; the manifest is fetched from the
//!   same directory URL);
//! - a release server (`--server URL -C CHANNEL [-V VERSION]`, Flatcar's release layout):
//!   `URL/CHANNEL/VERSION/` (VERSION defaults to `current`) holds the manifest and the image,
//!   tried as `disk_image.zst`, then `.gz`, then raw (the first that is not 404).
//!
//! qcow2 is not read: install the raw image (`wellcar build` writes both). Remote files are
//! fetched with the workspace's `wellcar-http` client (system CA store, 10 s connect bound); the
//! image is streamed, never held whole.
//!
//! The Ignition config is a file or an `http(s)://` URL; either must be JSON (Ignition
//! validates the rest at first boot).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;

use crate::error::InstallError;

/// The release-server version that names the newest release of a channel.
pub const CURRENT_VERSION: &str = "current";

/// Where the image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// An image file next to its manifest.
    File(PathBuf),
    /// A build output directory.
    Build(PathBuf),
    /// An image URL next to its manifest.
    Url(String),
    /// A release server's `SERVER/CHANNEL/VERSION/` directory.
    Release {
        /// The server's base URL.
        server: String,
        /// The channel (`stable`, `beta`, ...).
        channel: String,
        /// The version, or [`CURRENT_VERSION`].
        version: String,
    },
}

/// A file or a URL that install reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local path.
    Local(PathBuf),
    /// An `http://` or `https://` URL.
    Remote(String),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::Remote(url) => f.write_str(url),
        }
    }
}

impl Location {
    /// The file `name` in this directory.
    pub fn join(&self, name: &str) -> Location {
        match self {
            Location::Local(dir) => Location::Local(dir.join(name)),
            Location::Remote(dir) => {
                Location::Remote(format!("{}/{name}", dir.trim_end_matches('/')))
            }
        }
    }

    /// How errors name it (a URL as it is).
    pub fn name(&self) -> PathBuf {
        match self {
            Location::Local(path) => path.clone(),
            Location::Remote(url) => PathBuf::from(url),
        }
    }

    /// The last path component.
    fn file_name(&self) -> String {
        match self {
            Location::Local(path) => path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into(),
            Location::Remote(url) => url.rsplit('/').next().unwrap_or_default().into(),
        }
    }

    /// Opens it for streaming; `Ok(None)` when it does not exist (no such file, HTTP 404).
    pub fn open(&self, action: &'static str) -> Result<Option<Box<dyn Read + Send>>, InstallError> {
        match self {
            Location::Local(path) => match File::open(path) {
                Ok(file) => Ok(Some(Box::new(file))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(InstallError::Io {
                    action,
                    path: path.clone(),
                    source,
                }),
            },
            Location::Remote(url) => match http_get(url)? {
                Some(response) => Ok(Some(Box::new(response.into_body().into_reader()))),
                None => Ok(None),
            },
        }
    }

    /// Reads it whole, at most `limit` bytes; `Ok(None)` when it does not exist.
    pub fn read_small(
        &self,
        action: &'static str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, InstallError> {
        let Some(reader) = self.open(action)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        reader
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| InstallError::Io {
                action,
                path: self.name(),
                source,
            })?;
        if bytes.len() as u64 > limit {
            return Err(InstallError::TooLarge {
                path: self.name(),
                limit,
            });
        }
        Ok(Some(bytes))
    }
}

impl ImageSource {
    /// Where the signed manifest is (a directory).
    pub fn manifest_location(&self) -> Location {
        match self {
            ImageSource::File(path) => Location::Local(match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => PathBuf::from("."),
            }),
            ImageSource::Build(dir) => Location::Local(dir.clone()),
            ImageSource::Url(url) => Location::Remote(
                url.rsplit_once('/')
                    .map_or(url.as_str(), |(dir, _)| dir)
                    .into(),
            ),
            ImageSource::Release {
                server,
                channel,
                version,
            } => Location::Remote(format!(
                "{}/{channel}/{version}",
                server.trim_end_matches('/')
            )),
        }
    }

    /// The places the image may be, in the order they are tried, checked against the
    /// manifest's `disk_image` name.
    pub fn image_candidates(&self, disk_image: &str) -> Result<Vec<Location>, InstallError> {
        let named = |location: Location| {
            let name = location.file_name();
            if ["", ".zst", ".gz"]
                .iter()
                .any(|ext| name == format!("{disk_image}{ext}"))
            {
                Ok(vec![location])
            } else {
                Err(InstallError::ImageName {
                    image: location.name(),
                    expected: disk_image.into(),
                })
            }
        };
        match self {
            ImageSource::Build(dir) => Ok(vec![Location::Local(dir.join(disk_image))]),
            ImageSource::File(path) => named(Location::Local(path.clone())),
            ImageSource::Url(url) => named(Location::Remote(url.clone())),
            ImageSource::Release { .. } => {
                let dir = self.manifest_location();
                Ok([".zst", ".gz", ""]
                    .iter()
                    .map(|ext| dir.join(&format!("{disk_image}{ext}")))
                    .collect())
            }
        }
    }
}

/// How an image file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Raw.
    None,
    /// zstd (magic `28 b5 2f fd`).
    Zstd,
    /// gzip (magic `1f 8b`).
    Gzip,
}

/// Opens the first of `candidates` that exists and returns its decompressed stream, what it
/// was compressed with, and which one it was.
pub fn open_image(
    candidates: &[Location],
) -> Result<(Box<dyn Read>, Compression, Location), InstallError> {
    for location in candidates {
        let Some(reader) = location.open("opening")? else {
            continue;
        };
        let (stream, compression) = decompressing(reader, location)?;
        return Ok((stream, compression, location.clone()));
    }
    Err(InstallError::ImageMissing {
        tried: candidates
            .iter()
            .map(Location::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// `reader` decompressed as its first bytes say.
fn decompressing(
    reader: Box<dyn Read + Send>,
    location: &Location,
) -> Result<(Box<dyn Read>, Compression), InstallError> {
    let io = |action| {
        move |source| InstallError::Io {
            action,
            path: location.name(),
            source,
        }
    };
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let head = reader.fill_buf().map_err(io("reading"))?;
    let compression = if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else {
        Compression::None
    };
    let stream: Box<dyn Read> = match compression {
        Compression::None => Box::new(reader),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(reader).map_err(io("decompressing"))?)
        }
        Compression::Gzip => Box::new(flate2::bufread::GzDecoder::new(reader)),
    };
    Ok((stream, compression))
}

/// Where the Ignition config comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IgnitionSource {
    /// A local file.
    File(PathBuf),
    /// An `http://` or `https://` URL.
    Url(String),
}

/// Reads the Ignition config and checks that it is JSON.
pub fn read_ignition(source: &IgnitionSource) -> Result<Vec<u8>, InstallError> {
    let location = match source {
        IgnitionSource::File(path) => Location::Local(path.clone()),
        IgnitionSource::Url(url) => Location::Remote(url.clone()),
    };
    let bytes = location
        .read_small("reading the Ignition config", MAX_IGNITION_BYTES)?
        .ok_or_else(|| InstallError::NotFound {
            what: "the Ignition config",
            path: location.name(),
        })?;
    serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|source| {
        InstallError::IgnitionNotJson {
            source_name: location.to_string(),
            source,
        }
    })?;
    Ok(bytes)
}

/// Largest Ignition config fetched (Ignition configs are small; this bounds memory).
const MAX_IGNITION_BYTES: u64 = 16 << 20;

/// GET `url`: the response when 2xx, `None` when 404, an error naming the URL otherwise.
fn http_get(url: &str) -> Result<Option<ureq::http::Response<ureq::Body>>, InstallError> {
    // One client for the manifest, the signature, the image and the config: building one
    // reads the system's CA store.
    static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    let agent = AGENT.get_or_init(|| {
        let mut options = wellcar_http::ClientOptions::new(concat!(
            "wellcar-install/",
            env!("CARGO_PKG_VERSION")
        ));
        options.connect_timeout = std::time::Duration::from_secs(10);
        wellcar_http::system_client(&options)
    });
    let fail = |source: ureq::Error| InstallError::Fetch {
        url: url.into(),
        source: Box::new(source),
    };
    // The workspace client answers every status as a response.
    let response = agent.get(url).call().map_err(fail)?;
    match response.status().as_u16() {
        404 => Ok(None),
        200..=299 => Ok(Some(response)),
        status => Err(fail(ureq::Error::StatusCode(status))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_must_match_the_manifest_and_releases_try_compressed_first() {
        let source = ImageSource::File("dl/wellcar.img.zst".into());
        assert_eq!(source.manifest_location(), Location::Local("dl".into()));
        assert!(source.image_candidates("wellcar.img").is_ok());
        let err = source.image_candidates("other.img").unwrap_err();
        assert!(err.to_string().contains("other.img"), "{err}");
        assert_eq!(
            ImageSource::File("wellcar.img".into()).manifest_location(),
            Location::Local(".".into())
        );
        let url = ImageSource::Url("https://r.example/s/1.0/wellcar.img.gz".into());
        assert_eq!(
            url.manifest_location(),
            Location::Remote("https://r.example/s/1.0".into())
        );
        assert!(url.image_candidates("other.img").is_err());
        let release = ImageSource::Release {
            server: "https://r.example/".into(),
            channel: "stable".into(),
            version: CURRENT_VERSION.into(),
        };
        let tried: Vec<String> = release
            .image_candidates("wellcar.img")
            .unwrap()
            .iter()
            .map(Location::to_string)
            .collect();
        assert_eq!(
            tried,
            [
                "https://r.example/stable/current/wellcar.img.zst",
                "https://r.example/stable/current/wellcar.img.gz",
                "https://r.example/stable/current/wellcar.img",
            ]
        );
    }

    #[test]
    fn compressed_images_are_recognised_by_magic_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"raw disk bytes".repeat(1000);
        let zst = dir.path().join("a");
        std::fs::write(&zst, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
        let missing = Location::Local(dir.path().join("missing"));
        let (mut stream, compression, found) =
            open_image(&[missing.clone(), Location::Local(zst.clone())]).unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).unwrap();
        assert_eq!((compression, out == data), (Compression::Zstd, true));
        assert_eq!(found, Location::Local(zst));
        let raw = dir.path().join("b");
        std::fs::write(&raw, &data).unwrap();
        assert_eq!(
            open_image(&[Location::Local(raw)]).unwrap().1,
            Compression::None
        );
        let err = open_image(&[missing]).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn an_unreachable_ignition_url_and_non_json_are_named() {
        // A port nothing listens on: bind, learn the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/config.ign");
        let err = read_ignition(&IgnitionSource::Url(url.clone())).unwrap_err();
        assert!(err.to_string().contains(&url), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.ign");
        std::fs::write(&bad, "not json").unwrap();
        let err = read_ignition(&IgnitionSource::File(bad.clone())).unwrap_err();
        assert!(err.to_string().contains("bad.ign"), "{err}");
    }
}
