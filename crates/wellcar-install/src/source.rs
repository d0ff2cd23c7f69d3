//! Where the image and the Ignition config come from.
//!
//! An image is a raw disk image, optionally zstd- or gzip-compressed (recognised by its magic
//! bytes, decompressed while streaming), lying next to its signed `image-manifest.json`: given
//! as a file (`--image`, named as the manifest's `disk_image`, optionally with `.zst`/`.gz`),
//! or as a build directory (`--build`, the manifest's `disk_image` inside it). qcow2 is not
//! read: install the raw image (`wellcar build` writes both).
//!
//! The Ignition config is a file or an `http(s)://` URL fetched with the workspace's
//! `wellcar-http` client; either must be JSON (Ignition validates the rest at first boot).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::InstallError;

/// Where the image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// An image file next to its manifest.
    File(PathBuf),
    /// A build output directory.
    Build(PathBuf),
}

impl ImageSource {
    /// The directory holding the signed manifest.
    pub fn manifest_dir(&self) -> PathBuf {
        match self {
            ImageSource::File(path) => match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => PathBuf::from("."),
            },
            ImageSource::Build(dir) => dir.clone(),
        }
    }

    /// The image file, checked against the manifest's `disk_image` name.
    pub fn image_path(&self, disk_image: &str) -> Result<PathBuf, InstallError> {
        match self {
            ImageSource::Build(dir) => Ok(dir.join(disk_image)),
            ImageSource::File(path) => {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                let ok = [String::new(), ".zst".into(), ".gz".into()]
                    .iter()
                    .any(|ext| name == format!("{disk_image}{ext}"));
                if ok {
                    Ok(path.clone())
                } else {
                    Err(InstallError::ImageName {
                        image: path.clone(),
                        expected: disk_image.into(),
                    })
                }
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

/// Opens an image file and returns its decompressed stream and what it was compressed with.
pub fn open_image(path: &Path) -> Result<(Box<dyn Read>, Compression), InstallError> {
    let io = |action| {
        move |source| InstallError::Io {
            action,
            path: path.into(),
            source,
        }
    };
    let file = File::open(path).map_err(io("opening"))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
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
    let (bytes, name) = match source {
        IgnitionSource::File(path) => (
            std::fs::read(path).map_err(|source| InstallError::Io {
                action: "reading the Ignition config",
                path: path.clone(),
                source,
            })?,
            path.display().to_string(),
        ),
        IgnitionSource::Url(url) => (fetch(url)?, url.clone()),
    };
    serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|source| {
        InstallError::IgnitionNotJson {
            source_name: name,
            source,
        }
    })?;
    Ok(bytes)
}

/// Largest Ignition config fetched (Ignition configs are small; this bounds memory).
const MAX_IGNITION_BYTES: u64 = 16 << 20;

fn fetch(url: &str) -> Result<Vec<u8>, InstallError> {
    let fail = |source: ureq::Error| InstallError::Fetch {
        url: url.into(),
        source: Box::new(source),
    };
    let mut options =
        wellcar_http::ClientOptions::new(concat!("wellcar-install/", env!("CARGO_PKG_VERSION")));
    options.connect_timeout = std::time::Duration::from_secs(10);
    let agent = wellcar_http::system_client(&options);
    let response = agent.get(url).call().map_err(fail)?;
    response
        .into_body()
        .with_config()
        .limit(MAX_IGNITION_BYTES)
        .read_to_vec()
        .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_file_names_must_match_the_manifest() {
        let source = ImageSource::File("dl/wellcar.img.zst".into());
        assert_eq!(source.manifest_dir(), Path::new("dl"));
        assert!(source.image_path("wellcar.img").is_ok());
        let err = source.image_path("other.img").unwrap_err();
        assert!(err.to_string().contains("other.img"), "{err}");
        assert_eq!(
            ImageSource::File("wellcar.img".into()).manifest_dir(),
            Path::new(".")
        );
    }

    #[test]
    fn compressed_images_are_recognised_by_magic() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"raw disk bytes".repeat(1000);
        let zst = dir.path().join("a");
        std::fs::write(&zst, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
        let (mut stream, compression) = open_image(&zst).unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).unwrap();
        assert_eq!((compression, out == data), (Compression::Zstd, true));
        let raw = dir.path().join("b");
        std::fs::write(&raw, &data).unwrap();
        assert_eq!(open_image(&raw).unwrap().1, Compression::None);
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
