//! The calls into NVRTC: loading the library found by [`super::toolchain`] and compiling one
//! kernel family. cudarc loads libnvrtc by name (`dlopen("libnvrtc.so.13")`), which finds only
//! what the dynamic loader's path holds; so the library (and libnvrtc-builtins, which NVRTC
//! opens by name too) is first opened here by full path and kept open: a later `dlopen` by
//! name then resolves to the already loaded object through its SONAME.

use super::kernels::{COMMON_HEADER, KernelFamily};
use super::{CompileOptions, CudaError, Output};
use cudarc::nvrtc::{result, sys};
use libloading::Library;
use std::ffi::{CStr, CString, c_char, c_int};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The libraries opened by path, held for the life of the process, and NVRTC's version.
struct Loaded {
    _builtins: Option<Library>,
    _nvrtc: Library,
    version: (i32, i32),
}

static LOADED: OnceLock<Result<Loaded, String>> = OnceLock::new();

/// Opens `lib` (once per process) and checks that cudarc uses the same NVRTC.
pub(super) fn load(lib: &Path) -> Result<(i32, i32), CudaError> {
    let loaded = LOADED.get_or_init(|| open(lib).map_err(|e| e.to_string()));
    let loaded = loaded.as_ref().map_err(|detail| CudaError::NvrtcLoad {
        path: lib.to_path_buf(),
        detail: detail.clone(),
    })?;
    // SAFETY: libnvrtc.so.13 is open (above), so cudarc's lookup by name finds it and does not
    // panic; is_culib_present only tries to open libraries.
    if !unsafe { sys::is_culib_present() } {
        return Err(CudaError::NvrtcLoad {
            path: lib.to_path_buf(),
            detail: "cudarc cannot open libnvrtc by name although it is loaded".into(),
        });
    }
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: nvrtcVersion writes two ints through valid pointers.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| nvrtc_error("nvrtcVersion", e))?;
    if (major, minor) != loaded.version {
        return Err(CudaError::NvrtcVersionMismatch {
            path: lib.to_path_buf(),
            found_major: loaded.version.0,
            found_minor: loaded.version.1,
            used_major: major,
            used_minor: minor,
        });
    }
    Ok(loaded.version)
}

fn open(lib: &Path) -> Result<Loaded, libloading::Error> {
    let builtins = builtins_beside(lib);
    // SAFETY: NVRTC's libraries run no initialisers with preconditions on load; they stay
    // loaded for the life of the process (the handles live in a static).
    let builtins = match builtins {
        Some(path) => Some(unsafe { Library::new(path) }?),
        None => None,
    };
    // SAFETY: as above.
    let nvrtc = unsafe { Library::new(lib) }?;
    type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> sys::nvrtcResult;
    // SAFETY: nvrtcVersion has this signature in every NVRTC release.
    let version_fn = unsafe { nvrtc.get::<VersionFn>(b"nvrtcVersion\0") }?;
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: the function writes two ints through valid pointers.
    unsafe { version_fn(&mut major, &mut minor) };
    Ok(Loaded {
        _builtins: builtins,
        _nvrtc: nvrtc,
        version: (major, minor),
    })
}

/// `libnvrtc-builtins.so.MAJOR.MINOR` in the same folder, if there (not the `.alt` variant).
fn builtins_beside(lib: &Path) -> Option<PathBuf> {
    let dir = lib.parent()?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnvrtc-builtins.so."))
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

fn nvrtc_error(call: &'static str, e: result::NvrtcError) -> CudaError {
    CudaError::Nvrtc {
        call,
        detail: format!("{e:?}"),
    }
}

/// Destroys the program when dropped, whatever path the compile takes.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed only here.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

/// Compiles `family` with `args`; returns the image (PTX text or CUBIN) and the program log.
pub(super) fn compile(
    family: &KernelFamily,
    args: &[String],
    options: &CompileOptions,
) -> Result<(Vec<u8>, String), CudaError> {
    let c =
        |s: &str| CString::new(s).map_err(|_| CudaError::BadOptions(format!("NUL byte in {s:?}")));
    let source = c(family.source)?;
    let name = c(&format!("{}.cu", family.name))?;
    let header = c(COMMON_HEADER)?;
    let header_name = c("common.cuh")?;
    let headers = [header.as_ptr()];
    let header_names = [header_name.as_ptr()];
    let mut raw: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer is to a NUL-terminated string that outlives the program (they are
    // dropped after `program`, declared later); the header arrays hold one entry each.
    unsafe {
        sys::nvrtcCreateProgram(
            &mut raw,
            source.as_ptr(),
            name.as_ptr(),
            1,
            headers.as_ptr(),
            header_names.as_ptr(),
        )
    }
    .result()
    .map_err(|e| nvrtc_error("nvrtcCreateProgram", e))?;
    let program = Program(raw);

    // SAFETY: `program` is a live program.
    let compiled = unsafe { result::compile_program(program.0, args) };
    // SAFETY: as above; the log exists after a compile, successful or not.
    let log = unsafe { result::get_program_log(program.0) }
        .map_err(|e| nvrtc_error("nvrtcGetProgramLog", e))?;
    let log = c_chars_to_string(&log);
    match compiled {
        Ok(()) => {}
        Err(e) if e.0 == sys::nvrtcResult::NVRTC_ERROR_COMPILATION => {
            return Err(CudaError::Compile {
                family: family.name.to_string(),
                arch: options.arch,
                log,
            });
        }
        Err(e) => return Err(nvrtc_error("nvrtcCompileProgram", e)),
    }

    let image = match options.output {
        Output::Ptx => {
            // SAFETY: the program compiled.
            let ptx =
                unsafe { result::get_ptx(program.0) }.map_err(|e| nvrtc_error("nvrtcGetPTX", e))?;
            c_chars_to_string(&ptx).into_bytes()
        }
        Output::Cubin => {
            let mut size = 0usize;
            // SAFETY: the program compiled for a real architecture; size is a valid pointer.
            unsafe { sys::nvrtcGetCUBINSize(program.0, &mut size) }
                .result()
                .map_err(|e| nvrtc_error("nvrtcGetCUBINSize", e))?;
            let mut cubin = vec![0u8; size];
            // SAFETY: the buffer holds exactly the size NVRTC reported.
            unsafe { sys::nvrtcGetCUBIN(program.0, cubin.as_mut_ptr().cast::<c_char>()) }
                .result()
                .map_err(|e| nvrtc_error("nvrtcGetCUBIN", e))?;
            cubin
        }
    };
    Ok((image, log))
}

/// NVRTC returns NUL-terminated text in `c_char` buffers.
fn c_chars_to_string(chars: &[c_char]) -> String {
    let bytes: Vec<u8> = chars.iter().map(|&c| c as u8).collect();
    match CStr::from_bytes_until_nul(&bytes) {
        Ok(s) => s.to_string_lossy().into_owned(),
        Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
    }
}
