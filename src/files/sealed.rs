//! Safetensors files that name their kind and format version and carry a CRC-32 of every
//! metadata entry and tensor, so that a flipped byte anywhere is an error on loading
//! instead of different numbers.
//!
//! The checksum covers, in order: each metadata entry but the checksum itself, sorted by
//! key (key, NUL, value, NUL); then each tensor sorted by name (name, NUL, dtype, NUL,
//! each dimension as a little-endian u64, the data's bytes). Offsets are not covered: a
//! corrupted offset already breaks safetensors' own layout check or moves the data the
//! checksum reads.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};
use safetensors::tensor::{Dtype, TensorView, View};

use crate::{Error, Result};

const KIND: &str = "varlora.kind";
const VERSION: &str = "varlora.version";
const CHECKSUM: &str = "varlora.crc32";

/// What [`read`] returns: the tensors and the caller's metadata entries.
pub(crate) struct Sealed {
    pub tensors: HashMap<String, Tensor>,
    pub meta: HashMap<String, String>,
}

impl Sealed {
    /// The JSON header stored under metadata `key` (as [`header_meta`] writes it).
    pub fn header<T: serde::de::DeserializeOwned>(&self, key: &str, path: &Path) -> Result<T> {
        let json = self
            .meta
            .get(key)
            .ok_or_else(|| corrupt(path, format!("holds no {key} header")))?;
        serde_json::from_str(json)
            .map_err(|e| corrupt(path, format!("unreadable {key} header: {e}")))
    }
}

/// Metadata holding `header` as JSON under `key`, for [`write`].
pub(crate) fn header_meta(
    key: &str,
    header: &impl serde::Serialize,
) -> Result<HashMap<String, String>> {
    let json = serde_json::to_string(header).map_err(|e| Error::Serialization(e.to_string()))?;
    Ok(HashMap::from([(key.to_string(), json)]))
}

fn corrupt(path: &Path, problem: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

/// One tensor as the checksum reads it: name, dtype, shape and bytes.
type Part<'a> = (&'a str, Dtype, &'a [usize], Cow<'a, [u8]>);

/// The checksum of `meta` (all but the checksum entry itself, by key) and of `tensors`
/// (name, dtype, shape, bytes; by name), as 8 hex digits.
fn checksum(meta: &HashMap<String, String>, mut tensors: Vec<Part>) -> String {
    let mut h = crc32fast::Hasher::new();
    let sorted: BTreeMap<&String, &String> = meta.iter().filter(|(k, _)| *k != CHECKSUM).collect();
    for (k, v) in sorted {
        for part in [k, v] {
            h.update(part.as_bytes());
            h.update(&[0]);
        }
    }
    tensors.sort_by(|a, b| a.0.cmp(b.0));
    for (name, dtype, shape, data) in tensors {
        h.update(name.as_bytes());
        h.update(&[0]);
        h.update(format!("{dtype:?}").as_bytes());
        h.update(&[0]);
        for d in shape {
            h.update(&(*d as u64).to_le_bytes());
        }
        h.update(&data);
    }
    format!("{:08x}", h.finalize())
}

/// Writes `tensors` and `meta` to `path` as a `kind` file of format `version`, with its
/// checksum. The file is written beside `path` and renamed into place, so an interrupted
/// write leaves any earlier file whole.
pub(crate) fn write(
    path: &Path,
    kind: &str,
    version: u32,
    tensors: Vec<(String, Tensor)>,
    mut meta: HashMap<String, String>,
) -> Result<()> {
    meta.insert(KIND.into(), kind.into());
    meta.insert(VERSION.into(), version.to_string());
    let parts = tensors
        .iter()
        .map(|(name, t)| (name.as_str(), View::dtype(t), t.dims(), View::data(t)))
        .collect();
    meta.insert(CHECKSUM.into(), checksum(&meta, parts));
    let bytes = safetensors::serialize(tensors, Some(meta))
        .map_err(|e| corrupt(path, format!("cannot serialise: {e}")))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The file's bytes, and its metadata entries.
fn open(path: &Path) -> Result<(Vec<u8>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| corrupt(path, format!("cannot read: {e}")))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| corrupt(path, format!("not a readable safetensors file: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    Ok((bytes, meta))
}

/// Reads a `kind` file of format `version` from `path` onto `device`, after checking its
/// kind, version and checksum; any mismatch is an [`Error::File`] that names it.
pub(crate) fn read(path: &Path, kind: &str, version: u32, device: &Device) -> Result<Sealed> {
    let (bytes, meta) = open(path)?;
    read_checked(path, &bytes, meta, kind, version, device)
}

fn read_checked(
    path: &Path,
    bytes: &[u8],
    meta: HashMap<String, String>,
    kind: &str,
    version: u32,
    device: &Device,
) -> Result<Sealed> {
    check_label(path, &meta, kind, version)?;
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| corrupt(path, format!("not a readable safetensors file: {e}")))?;
    let views: Vec<(&str, TensorView)> = file.iter().collect();
    let parts = views
        .iter()
        .map(|(name, v)| (*name, v.dtype(), v.shape(), Cow::Borrowed(v.data())))
        .collect();
    let computed = checksum(&meta, parts);
    if meta[CHECKSUM] != computed {
        return Err(corrupt(
            path,
            format!(
                "checksum mismatch (stored {}, computed {computed}): the file is corrupt; \
                 write it again from its source",
                meta[CHECKSUM]
            ),
        ));
    }
    let tensors = views
        .iter()
        .map(|(name, v)| Ok((name.to_string(), v.load(device)?)))
        .collect::<Result<_>>()?;
    let meta = meta
        .into_iter()
        .filter(|(k, _)| ![KIND, VERSION, CHECKSUM].contains(&k.as_str()))
        .collect();
    Ok(Sealed { tensors, meta })
}

/// Reads a safetensors file that may come from elsewhere (e.g. Python's peft): checked as
/// [`read`] does when it carries any entry of this crate's label (so that a label damaged
/// in one place is still checked), read as it is otherwise.
pub(crate) fn read_foreign(
    path: &Path,
    kind: &str,
    version: u32,
    device: &Device,
) -> Result<Sealed> {
    let (bytes, meta) = open(path)?;
    if [KIND, VERSION, CHECKSUM]
        .iter()
        .any(|k| meta.contains_key(*k))
    {
        return read_checked(path, &bytes, meta, kind, version, device);
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| corrupt(path, format!("unreadable tensors: {e}")))?;
    Ok(Sealed { tensors, meta })
}

/// The file says it is a `kind` file of format `version` and has a checksum.
fn check_label(
    path: &Path,
    meta: &HashMap<String, String>,
    kind: &str,
    version: u32,
) -> Result<()> {
    let found = meta.get(KIND).ok_or_else(|| {
        corrupt(
            path,
            format!(
                "no {KIND} entry: not written by this version of varlora (expected a {kind} file)"
            ),
        )
    })?;
    if found != kind {
        return Err(corrupt(
            path,
            format!("a {found} file, expected a {kind} file"),
        ));
    }
    let v = meta.get(VERSION).map(String::as_str).unwrap_or("none");
    if v != version.to_string() {
        return Err(corrupt(
            path,
            format!("format version {v}, this varlora reads version {version} of {kind} files"),
        ));
    }
    match meta.get(CHECKSUM) {
        Some(c) if c.len() == 8 && c.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(()),
        Some(c) => Err(corrupt(path, format!("malformed checksum {c:?}"))),
        None => Err(corrupt(path, "no checksum")),
    }
}
