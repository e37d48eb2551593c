//! Opening the GPU: the driver and cuBLASLt libraries (found and checked before cudarc looks
//! them up, so a missing one is an error naming it, never a panic), the context and the
//! compute stream, and the kernel modules (every family in `trainer/kernels/`, compiled by
//! NVRTC for this GPU's architecture through the disk cache, then loaded).

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use cudarc::driver::{CudaContext, CudaFunction, CudaStream};
use libloading::Library;
use thiserror::Error;

use crate::cuda::{CompileOptions, Compiler, CudaError, FAMILIES, toolchain};

/// The cuBLASLt library cudarc's `cuda-13000` feature opens by name.
pub const CUBLASLT_LIB_NAME: &str = "libcublasLt.so.13";
/// The PyPI wheel that carries it for CUDA 13.
pub const CUBLAS_WHEEL: &str = "nvidia-cublas";

/// Why the CUDA backend could not start.
#[derive(Debug, Clone, Error)]
pub enum DeviceError {
    #[error(
        "no NVIDIA driver: libcuda.so.1 cannot be opened. Install the NVIDIA driver (the \
         container runtime mounts it into GPU pods), or train on the CPU with --device cpu"
    )]
    NoDriver,
    #[error(
        "the NVIDIA driver reports no usable GPU ({detail}); check nvidia-smi, or use --device cpu"
    )]
    NoDevice { detail: String },
    #[error("GPU {ordinal} does not exist: the driver sees {count}")]
    NoSuchDevice { ordinal: usize, count: usize },
    #[error(
        "{name} not found (searched: {searched}). Install CUDA 13's cuBLAS (`pip install \
         {wheel}`, or the CUDA toolkit), or point TESSERA_CUBLASLT_LIB at the file",
        wheel = CUBLAS_WHEEL
    )]
    LibraryMissing {
        name: &'static str,
        searched: String,
    },
    #[error("cannot load {path}: {detail}")]
    LibraryLoad { path: PathBuf, detail: String },
    #[error("CUDA driver call {call} failed: {detail}")]
    Driver { call: &'static str, detail: String },
    #[error("cuBLASLt: {0}")]
    Blas(String),
    #[error("{0}")]
    Kernels(String),
    #[error(
        "kernel {name} is missing from the compiled family {family}: the kernel table and the \
         sources disagree"
    )]
    MissingKernel {
        family: &'static str,
        name: &'static str,
    },
}

/// cuBLASLt opened by full path and held for the life of the process, or why it could not be.
static CUBLASLT: std::sync::OnceLock<Result<Library, DeviceError>> = std::sync::OnceLock::new();

/// Whether a GPU can be used here: the driver loads and reports at least one device. Never
/// panics; used by `--device auto`.
pub fn gpu_count() -> usize {
    // SAFETY: is_culib_present only tries to open the driver library by its usual names.
    #[allow(unsafe_code)]
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return 0;
    }
    cudarc::driver::result::init()
        .and_then(|_| cudarc::driver::result::device::get_count())
        .map_or(0, |n| n.max(0) as usize)
}

fn open_cublaslt() -> Result<Library, DeviceError> {
    let path =
        toolchain::find_library(CUBLASLT_LIB_NAME, "TESSERA_CUBLASLT_LIB").map_err(|searched| {
            DeviceError::LibraryMissing {
                name: CUBLASLT_LIB_NAME,
                searched: searched
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        })?;
    // Opened by full path, a later dlopen by SONAME (cudarc's) resolves to this object.
    // SAFETY: cuBLASLt runs no initialisers with preconditions on load.
    #[allow(unsafe_code)]
    unsafe { Library::new(&path) }.map_err(|e| DeviceError::LibraryLoad {
        path: path.clone(),
        detail: e.to_string(),
    })
}

/// Finds the driver and cuBLASLt and opens them so that cudarc's later lookups by name succeed.
pub(super) fn load_libraries() -> Result<(), DeviceError> {
    // SAFETY: as in gpu_count.
    #[allow(unsafe_code)]
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(DeviceError::NoDriver);
    }
    if let Err(e) = CUBLASLT.get_or_init(open_cublaslt) {
        return Err(e.clone());
    }
    // SAFETY: only tries to open cuBLASLt by name (now resolved to the object opened above).
    #[allow(unsafe_code)]
    if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
        return Err(DeviceError::LibraryMissing {
            name: CUBLASLT_LIB_NAME,
            searched: "the dynamic loader's path (the library was opened by path, but not by name)"
                .into(),
        });
    }
    Ok(())
}

/// One GPU: its context, the compute stream, and what it is.
pub(super) struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// Compute capability as major·10 + minor (90 on H100 and H200).
    pub arch: u32,
    pub name: String,
}

impl Gpu {
    pub fn open(ordinal: usize) -> Result<Gpu, DeviceError> {
        load_libraries()?;
        let driver = |call| {
            move |e: cudarc::driver::DriverError| DeviceError::Driver {
                call,
                detail: e.to_string(),
            }
        };
        cudarc::driver::result::init().map_err(|e| DeviceError::NoDevice {
            detail: e.to_string(),
        })?;
        let count = CudaContext::device_count().map_err(driver("cuDeviceGetCount"))? as usize;
        if count == 0 {
            return Err(DeviceError::NoDevice {
                detail: "0 devices".into(),
            });
        }
        if ordinal >= count {
            return Err(DeviceError::NoSuchDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(driver("cuDevicePrimaryCtxRetain"))?;
        // One compute stream and explicit ordering: no per-buffer event bookkeeping.
        // SAFETY: every buffer of this backend is used on `stream` only (the module docs of
        // memory.rs), so cudarc's cross-stream events are not needed.
        #[allow(unsafe_code)]
        unsafe {
            ctx.disable_event_tracking()
        };
        let stream = ctx.new_stream().map_err(driver("cuStreamCreate"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver("cuDeviceGetAttribute"))?;
        let name = ctx.name().map_err(driver("cuDeviceGetName"))?;
        Ok(Gpu {
            ctx,
            stream,
            arch: (major * 10 + minor) as u32,
            name,
        })
    }

    /// Dense bf16 tensor-core FLOP/s of this GPU (the MFU denominator):
    /// `TESSERA_PEAK_TFLOPS` when set, else the datasheet figure of known parts.
    pub fn peak_bf16_flops(&self) -> f64 {
        if let Some(tflops) = std::env::var("TESSERA_PEAK_TFLOPS")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| *v > 0.0)
        {
            return tflops * 1e12;
        }
        peak_bf16_tflops(&self.name, self.arch) * 1e12
    }
}

/// Datasheet dense bf16 TFLOP/s by device name and architecture.
pub fn peak_bf16_tflops(name: &str, arch: u32) -> f64 {
    let name = name.to_ascii_uppercase();
    match arch {
        90 if name.contains("PCIE") => 756.0,
        90 => 989.4, // H100 SXM, H200
        100 | 103 => 2250.0,
        80 if name.contains("A100") => 312.0,
        89 if name.contains("L40S") => 362.0,
        89 if name.contains("L4") => 121.0,
        86 if name.contains("A10") => 125.0,
        _ => 100.0,
    }
}

fn kernels(e: CudaError) -> DeviceError {
    DeviceError::Kernels(e.to_string())
}

/// Every kernel of every family, loaded into the context.
pub(super) struct Kernels {
    functions: HashMap<&'static str, CudaFunction>,
}

impl Kernels {
    /// Compiles (or takes from the cache) and loads every family for `gpu`'s architecture.
    pub fn load(gpu: &Gpu) -> Result<Kernels, DeviceError> {
        let compiler = Compiler::new().map_err(kernels)?;
        let options = CompileOptions {
            arch: gpu.arch,
            output: crate::cuda::Output::Cubin,
            ptxas_verbose: false,
            extra: Vec::new(),
        };
        let mut functions = HashMap::new();
        for family in FAMILIES {
            let compiled = compiler.compile(family, &options).map_err(kernels)?;
            let module = gpu
                .ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(compiled.image))
                .map_err(|e| DeviceError::Driver {
                    call: "cuModuleLoadData",
                    detail: format!("kernel family {}: {e}", family.name),
                })?;
            for &entry in family.entry_points {
                let f = module
                    .load_function(entry)
                    .map_err(|_| DeviceError::MissingKernel {
                        family: family.name,
                        name: entry,
                    })?;
                functions.insert(entry, f);
            }
        }
        Ok(Kernels { functions })
    }

    /// The loaded kernel `name` (one of the families' entry points).
    pub fn get(&self, name: &'static str) -> Result<&CudaFunction, crate::backend::BackendError> {
        self.functions
            .get(name)
            .ok_or(crate::backend::BackendError::Device {
                op: name,
                detail: "no such kernel is loaded".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_flops_of_known_parts() {
        assert_eq!(peak_bf16_tflops("NVIDIA H100 80GB HBM3", 90), 989.4);
        assert_eq!(peak_bf16_tflops("NVIDIA H200", 90), 989.4);
        assert_eq!(peak_bf16_tflops("NVIDIA H100 PCIe", 90), 756.0);
        assert_eq!(peak_bf16_tflops("NVIDIA A100-SXM4-80GB", 80), 312.0);
    }
}
