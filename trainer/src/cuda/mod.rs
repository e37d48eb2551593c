//! CUDA support that needs no GPU: the kernel sources (`trainer/kernels/*.cu`, bf16 storage,
//! fp32 accumulation), their run-time compilation with NVRTC, and a disk cache of the compiled
//! images. There is no CUDA `Backend` yet; these kernels are compile-checked in CI
//! (`tests/kernels_compile.rs`), not yet run on a GPU.
//!
//! ```text
//!  kernels.rs: FAMILIES (include_str! of each .cu + common.cuh)
//!        │
//!        ▼
//!  Compiler::new() ── toolchain.rs: find libnvrtc.so.13 and cuda_bf16.h ($TESSERA_*, CUDA_HOME,
//!        │            /usr/local/cuda, the PyPI wheels in ./.venv-cuda …) ─► one error naming
//!        │            what is missing and how to install it
//!        ▼
//!  compile(family, CompileOptions{arch, PTX|CUBIN, ptxas -v})
//!        │  cache.rs: key = SHA-256(sources, options, arch, NVRTC version) ─► hit: image + log
//!        ▼  miss
//!  nvrtc.rs: nvrtcCreateProgram/CompileProgram (cudarc, dynamic loading) ─► image + log
//!        │                                                    ─► cache (temp file + rename)
//!        ▼
//!  ptxas.rs: registers, spills, stack and shared memory per kernel, from the `-v` log
//! ```

pub mod cache;
pub mod kernels;
#[allow(unsafe_code)]
mod nvrtc;
pub mod ptxas;
pub mod toolchain;

pub use cache::KernelCache;
pub use kernels::{COMMON_HEADER, FAMILIES, KernelFamily};
pub use ptxas::{KernelResources, parse_ptxas_report};
pub use toolchain::Toolchain;

use std::path::PathBuf;
use thiserror::Error;

/// The wheel versions `scripts/setup.sh` pins (CUDA 13.0), named in hints.
pub const NVRTC_WHEEL: &str = "nvidia-cuda-nvrtc==13.0.88";
/// The wheel holding `cuda_bf16.h` and the other CUDA runtime headers, for CUDA 13.0.
pub const RUNTIME_WHEEL: &str = "nvidia-cuda-runtime==13.0.96";

/// What compiling kernels can fail with.
#[derive(Debug, Error)]
pub enum CudaError {
    /// libnvrtc and/or the CUDA headers were not found; one error for everything missing.
    #[error(
        "CUDA kernel compilation needs {missing}: not found.\n  searched: {searched}\n  ---> HINT: run `bash scripts/setup.sh` (installs {nvrtc} and {runtime} into ./.venv-cuda), or `pip install {nvrtc} {runtime}`, or point TESSERA_NVRTC_LIB at libnvrtc.so.13 and TESSERA_CUDA_INCLUDE at the folder holding cuda_bf16.h",
        nvrtc = NVRTC_WHEEL,
        runtime = RUNTIME_WHEEL
    )]
    ToolchainMissing { missing: String, searched: String },
    /// libnvrtc was found but could not be opened, or lacks a symbol.
    #[error("cannot load NVRTC from {path}: {detail}")]
    NvrtcLoad { path: PathBuf, detail: String },
    /// cudarc resolved `libnvrtc` by name to another library than the one found.
    #[error(
        "NVRTC {found_major}.{found_minor} was found at {path}, but the library in use reports {used_major}.{used_minor}; remove the other libnvrtc from LD_LIBRARY_PATH"
    )]
    NvrtcVersionMismatch {
        path: PathBuf,
        found_major: i32,
        found_minor: i32,
        used_major: i32,
        used_minor: i32,
    },
    /// An NVRTC call other than the compilation itself failed.
    #[error("NVRTC {call} failed: {detail}")]
    Nvrtc { call: &'static str, detail: String },
    /// The kernel source did not compile; `log` is NVRTC's program log.
    #[error("kernel family `{family}` does not compile for sm_{arch}:\n{log}")]
    Compile {
        family: String,
        arch: u32,
        log: String,
    },
    /// Options NVRTC would refuse, caught before calling it.
    #[error("invalid compile options: {0}")]
    BadOptions(String),
    /// Reading or writing the kernel cache failed.
    #[error("kernel cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What NVRTC produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Output {
    /// PTX for `compute_XX`: the driver JIT-compiles it, so it also runs on newer GPUs.
    Ptx,
    /// A CUBIN for the real architecture `sm_XX`; ptxas runs inside NVRTC, so `-v` reports
    /// registers and spills.
    Cubin,
}

/// How to compile one kernel family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileOptions {
    /// Compute capability as major·10 + minor: 90 for H100 (sm_90), 80 for A100.
    pub arch: u32,
    pub output: Output,
    /// `--ptxas-options=-v`: per-kernel resource usage in the log (CUBIN output only).
    pub ptxas_verbose: bool,
    /// Further NVRTC options, passed after the standard ones (e.g. `-DNAME=VALUE`).
    pub extra: Vec<String>,
}

impl CompileOptions {
    /// A CUBIN for `sm_{arch}` with the ptxas report in the log.
    pub fn cubin_verbose(arch: u32) -> Self {
        Self {
            arch,
            output: Output::Cubin,
            ptxas_verbose: true,
            extra: Vec::new(),
        }
    }

    /// PTX for `compute_{arch}`.
    pub fn ptx(arch: u32) -> Self {
        Self {
            arch,
            output: Output::Ptx,
            ptxas_verbose: false,
            extra: Vec::new(),
        }
    }

    /// The NVRTC command line for these options, with `include_dir` holding cuda_bf16.h.
    pub fn nvrtc_args(&self, include_dir: &std::path::Path) -> Result<Vec<String>, CudaError> {
        if self.arch < 50 {
            return Err(CudaError::BadOptions(format!(
                "arch {} is not a compute capability NVRTC 13 supports (50 or newer, e.g. 90)",
                self.arch
            )));
        }
        if self.ptxas_verbose && self.output == Output::Ptx {
            return Err(CudaError::BadOptions(
                "ptxas -v reports only when compiling to CUBIN".into(),
            ));
        }
        let prefix = match self.output {
            Output::Ptx => "compute",
            Output::Cubin => "sm",
        };
        let mut args = vec![
            format!("--gpu-architecture={prefix}_{}", self.arch),
            "-default-device".to_string(),
            "--std=c++17".to_string(),
            format!("--include-path={}", include_dir.display()),
        ];
        if self.ptxas_verbose {
            args.push("--ptxas-options=-v".to_string());
        }
        args.extend(self.extra.iter().cloned());
        Ok(args)
    }
}

/// One compiled kernel family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// PTX text (NUL-free) or CUBIN bytes.
    pub image: Vec<u8>,
    pub output: Output,
    /// NVRTC's program log: warnings and, with `ptxas_verbose`, the ptxas report.
    pub log: String,
    /// Whether the image came from the disk cache.
    pub cache_hit: bool,
}

/// Compiles kernel families with the NVRTC found on this machine, through a disk cache.
#[derive(Debug)]
pub struct Compiler {
    toolchain: Toolchain,
    nvrtc_version: (i32, i32),
    cache: Option<KernelCache>,
}

impl Compiler {
    /// Finds and loads NVRTC and the CUDA headers; caches under [`KernelCache::default_dir`].
    pub fn new() -> Result<Self, CudaError> {
        let toolchain = Toolchain::discover()?;
        let nvrtc_version = nvrtc::load(&toolchain.nvrtc_lib)?;
        Ok(Self {
            toolchain,
            nvrtc_version,
            cache: Some(KernelCache::new(KernelCache::default_dir())),
        })
    }

    /// Uses `cache` (or none) instead of the default cache.
    pub fn with_cache(mut self, cache: Option<KernelCache>) -> Self {
        self.cache = cache;
        self
    }

    /// The NVRTC version in use (major, minor).
    pub fn nvrtc_version(&self) -> (i32, i32) {
        self.nvrtc_version
    }

    /// Where libnvrtc and cuda_bf16.h were found.
    pub fn toolchain(&self) -> &Toolchain {
        &self.toolchain
    }

    /// Compiles `family`, or returns the cached image and log of an identical earlier compile.
    pub fn compile(
        &self,
        family: &KernelFamily,
        options: &CompileOptions,
    ) -> Result<Compiled, CudaError> {
        let args = options.nvrtc_args(&self.toolchain.include_dir)?;
        let key = cache::key(family, &args, options, self.nvrtc_version);
        // The cache only saves time: one that cannot be read or written (a read-only root
        // filesystem in a pod) is logged and compiling goes on without it.
        if let Some(cache) = &self.cache {
            match cache.load(&key) {
                Ok(Some((image, log))) => {
                    return Ok(Compiled {
                        image,
                        output: options.output,
                        log,
                        cache_hit: true,
                    });
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("{e}; compiling without the kernel cache"),
            }
        }
        let (image, log) = nvrtc::compile(family, &args, options)?;
        if let Some(cache) = &self.cache
            && let Err(e) = cache.store(&key, &image, &log)
        {
            tracing::warn!("{e}; set XDG_CACHE_HOME to a writable folder to keep compiled kernels");
        }
        Ok(Compiled {
            image,
            output: options.output,
            log,
            cache_hit: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn cubin_options_name_the_real_architecture_and_ptxas_verbosity() {
        let args = CompileOptions::cubin_verbose(90)
            .nvrtc_args(Path::new("/inc"))
            .unwrap();
        assert_eq!(
            args,
            [
                "--gpu-architecture=sm_90",
                "-default-device",
                "--std=c++17",
                "--include-path=/inc",
                "--ptxas-options=-v"
            ]
        );
        let ptx = CompileOptions::ptx(80)
            .nvrtc_args(Path::new("/inc"))
            .unwrap();
        assert_eq!(ptx[0], "--gpu-architecture=compute_80");
    }

    #[test]
    fn options_nvrtc_would_refuse_are_refused_first() {
        let mut verbose_ptx = CompileOptions::ptx(90);
        verbose_ptx.ptxas_verbose = true;
        assert!(verbose_ptx.nvrtc_args(Path::new("/inc")).is_err());
        assert!(
            CompileOptions::ptx(35)
                .nvrtc_args(Path::new("/inc"))
                .is_err()
        );
    }
}
