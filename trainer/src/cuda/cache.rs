//! The disk cache of compiled kernel images: one file per (sources, NVRTC options,
//! architecture, output kind, NVRTC version), named by the SHA-256 of all of them, under
//! `$XDG_CACHE_HOME/tessera/kernels` (or `~/.cache/tessera/kernels`).
//!
//! ```text
//! <key>.kernel = "TSRKERN1" | log length (u64 LE) | log (UTF-8) | image (PTX or CUBIN)
//! ```
//! Written to a temporary file in the same folder and renamed into place, so a reader sees a
//! whole entry or none, even with several processes compiling at once. A damaged entry
//! (wrong magic, short) is treated as a miss and overwritten.

use super::kernels::{COMMON_HEADER, KernelFamily};
use super::{CompileOptions, CudaError, Output};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: &[u8; 8] = b"TSRKERN1";

/// A folder of cached kernel images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelCache {
    dir: PathBuf,
}

/// The cache key: hex SHA-256 of everything that decides the compiled image.
pub fn key(
    family: &KernelFamily,
    args: &[String],
    options: &CompileOptions,
    nvrtc_version: (i32, i32),
) -> String {
    let mut h = Sha256::new();
    // Each field is length-prefixed so no two different inputs hash the same bytes.
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(family.name.as_bytes());
    field(family.source.as_bytes());
    field(COMMON_HEADER.as_bytes());
    for arg in args {
        field(arg.as_bytes());
    }
    field(&options.arch.to_le_bytes());
    field(match options.output {
        Output::Ptx => b"ptx",
        Output::Cubin => b"cubin",
    });
    field(&nvrtc_version.0.to_le_bytes());
    field(&nvrtc_version.1.to_le_bytes());
    format!("{}-{}", family.name, hex::encode(h.finalize()))
}

impl KernelCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$XDG_CACHE_HOME/tessera/kernels`, else `$HOME/.cache/tessera/kernels`, else a folder
    /// under the system temporary directory.
    pub fn default_dir() -> PathBuf {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".cache"))
            })
            .unwrap_or_else(std::env::temp_dir);
        base.join("tessera").join("kernels")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.kernel"))
    }

    /// The cached (image, log) for `key`, or `None` when absent or damaged.
    pub fn load(&self, key: &str) -> Result<Option<(Vec<u8>, String)>, CudaError> {
        let path = self.path(key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CudaError::Cache { path, source }),
        };
        Ok(decode(&bytes))
    }

    /// Stores (image, log) under `key`: temporary file, fsync, rename.
    pub fn store(&self, key: &str, image: &[u8], log: &str) -> Result<(), CudaError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CudaError::Cache { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(err(&self.dir))?;
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            ".{key}.{}.{}.tmp",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&(log.len() as u64).to_le_bytes())?;
            f.write_all(log.as_bytes())?;
            f.write_all(image)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(&tmp)(e));
        }
        let path = self.path(key);
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(&path)(e)
        })
    }
}

fn decode(bytes: &[u8]) -> Option<(Vec<u8>, String)> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    let (len, rest) = rest.split_first_chunk::<8>()?;
    let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
    if rest.len() < len {
        return None;
    }
    let (log, image) = rest.split_at(len);
    Some((image.to_vec(), String::from_utf8(log.to_vec()).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::FAMILIES;

    #[test]
    fn an_entry_round_trips_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(dir.path().join("kernels"));
        assert_eq!(cache.load("k").unwrap(), None);
        cache.store("k", b"\x7fELF image", "ptxas info").unwrap();
        assert_eq!(
            cache.load("k").unwrap(),
            Some((b"\x7fELF image".to_vec(), "ptxas info".to_string()))
        );
        let names: Vec<_> = std::fs::read_dir(cache.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["k.kernel"]);
    }

    #[test]
    fn a_damaged_entry_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(dir.path());
        std::fs::write(dir.path().join("k.kernel"), b"TSRKERN1\xff\xff").unwrap();
        assert_eq!(cache.load("k").unwrap(), None);
        std::fs::write(dir.path().join("k.kernel"), b"something else").unwrap();
        assert_eq!(cache.load("k").unwrap(), None);
    }

    #[test]
    fn the_key_changes_with_every_input() {
        let fam = &FAMILIES[0];
        let opts = CompileOptions::cubin_verbose(90);
        let args = vec!["--gpu-architecture=sm_90".to_string()];
        let base = key(fam, &args, &opts, (13, 0));
        assert_eq!(base, key(fam, &args, &opts, (13, 0)));
        assert_ne!(base, key(&FAMILIES[1], &args, &opts, (13, 0)));
        assert_ne!(base, key(fam, &[], &opts, (13, 0)));
        assert_ne!(base, key(fam, &args, &CompileOptions::ptx(90), (13, 0)));
        assert_ne!(
            base,
            key(fam, &args, &CompileOptions::cubin_verbose(80), (13, 0))
        );
        assert_ne!(base, key(fam, &args, &opts, (13, 1)));
    }
}
