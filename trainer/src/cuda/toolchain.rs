//! Finding NVRTC (`libnvrtc.so.13`) and the CUDA headers (`cuda_bf16.h`) on a machine with no
//! CUDA toolkit: explicit variables first, then toolkit installs, then the PyPI wheels
//! (`nvidia-cuda-nvrtc`, `nvidia-cuda-runtime`; CUDA 13 wheels install under
//! `site-packages/nvidia/cu13/{lib,include}`, CUDA 12 ones under `nvidia/cuda_nvrtc/lib` and
//! `nvidia/cuda_runtime/include`).
//!
//! ```text
//! headers: $TESSERA_CUDA_INCLUDE, $CUDA_HOME/include, $CUDA_PATH/include, /usr/local/cuda/include,
//!          wheels
//! library: $TESSERA_NVRTC_LIB (a file), $LD_LIBRARY_PATH, $CUDA_HOME/lib64, $CUDA_PATH/lib64,
//!          /usr/local/cuda/lib64, wheels
//! wheels:  .venv-cuda in the working directory or any parent (scripts/setup.sh puts it in the
//!          workspace root), $VIRTUAL_ENV, the `nvidia` package python3 imports, then the
//!          usual site-packages folders
//! ```

use super::CudaError;
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The library name cudarc's `cuda-13000` feature looks for.
pub const NVRTC_LIB_NAME: &str = "libnvrtc.so.13";
/// The header every kernel includes.
pub const BF16_HEADER: &str = "cuda_bf16.h";
/// The virtual environment `scripts/setup.sh` creates in the workspace root.
pub const VENV_DIR: &str = ".venv-cuda";

/// Where NVRTC and the CUDA headers are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    /// Full path of libnvrtc.
    pub nvrtc_lib: PathBuf,
    /// The folder holding `cuda_bf16.h`.
    pub include_dir: PathBuf,
}

impl Toolchain {
    /// Searches the places in the module docs; one error lists everything missing.
    pub fn discover() -> Result<Self, CudaError> {
        let mut wheels = wheel_roots_without_python();
        let mut found = search(&wheels);
        if found.0.is_none() || found.1.is_none() {
            // Asking python3 costs a process start: only when the cheap places failed.
            wheels.extend(python_nvidia_roots());
            wheels.extend(usual_site_packages());
            found = search(&wheels);
        }
        match found {
            (Some(nvrtc_lib), Some(include_dir)) => Ok(Self {
                nvrtc_lib,
                include_dir,
            }),
            (lib, inc) => {
                let mut missing = Vec::new();
                let mut searched = Vec::new();
                if lib.is_none() {
                    missing.push(format!("NVRTC ({NVRTC_LIB_NAME})"));
                    searched.extend(lib_dirs(&wheels).iter().map(|p| p.display().to_string()));
                }
                if inc.is_none() {
                    missing.push(format!("the CUDA headers ({BF16_HEADER})"));
                    searched.extend(
                        include_dirs(&wheels)
                            .iter()
                            .map(|p| p.display().to_string()),
                    );
                }
                if searched.is_empty() {
                    searched.push("(no candidate folders)".into());
                }
                Err(CudaError::ToolchainMissing {
                    missing: missing.join(" and "),
                    searched: searched.join(", "),
                })
            }
        }
    }
}

/// Finds the shared library `file` (e.g. `libcublasLt.so.13`) for the CUDA backend: the file
/// named by `$env_var`, then the library folders NVRTC is searched in, then the wheels the
/// default python3 sees. `Err` lists the folders searched.
pub fn find_library(file: &str, env_var: &str) -> Result<PathBuf, Vec<PathBuf>> {
    if let Some(path) = env::var_os(env_var)
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    {
        return Ok(path);
    }
    let mut wheels = wheel_roots_without_python();
    let look = |wheels: &[PathBuf]| {
        lib_dirs(wheels)
            .into_iter()
            .map(|d| d.join(file))
            .find(|p| p.is_file())
    };
    if let Some(found) = look(&wheels) {
        return Ok(found);
    }
    wheels.extend(python_nvidia_roots());
    wheels.extend(usual_site_packages());
    look(&wheels).ok_or_else(|| lib_dirs(&wheels))
}

fn search(wheels: &[PathBuf]) -> (Option<PathBuf>, Option<PathBuf>) {
    let lib = env::var_os("TESSERA_NVRTC_LIB")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| {
            lib_dirs(wheels)
                .into_iter()
                .map(|d| d.join(NVRTC_LIB_NAME))
                .find(|p| p.is_file())
        });
    let inc = include_dirs(wheels)
        .into_iter()
        .find(|d| d.join(BF16_HEADER).is_file());
    (lib, inc)
}

fn env_dir(var: &str, sub: &str) -> Option<PathBuf> {
    env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(|v| PathBuf::from(v).join(sub))
}

fn include_dirs(wheels: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = [
        env::var_os("TESSERA_CUDA_INCLUDE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        env_dir("CUDA_HOME", "include"),
        env_dir("CUDA_PATH", "include"),
        Some(PathBuf::from("/usr/local/cuda/include")),
    ]
    .into_iter()
    .flatten()
    .collect();
    for root in wheels {
        dirs.push(root.join("nvidia/cu13/include"));
        dirs.push(root.join("nvidia/cuda_runtime/include"));
    }
    dirs
}

fn lib_dirs(wheels: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("LD_LIBRARY_PATH")
        .map(|v| {
            env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    dirs.extend(
        [
            env_dir("CUDA_HOME", "lib64"),
            env_dir("CUDA_PATH", "lib64"),
            Some(PathBuf::from("/usr/local/cuda/lib64")),
        ]
        .into_iter()
        .flatten(),
    );
    for root in wheels {
        dirs.push(root.join("nvidia/cu13/lib"));
        dirs.push(root.join("nvidia/cuda_nvrtc/lib"));
        dirs.push(root.join("nvidia/cublas/lib"));
        dirs.push(root.join("nvidia/nccl/lib"));
    }
    dirs
}

/// `venv/lib/python3.*/site-packages`, every Python version present.
fn site_packages_of(venv: &Path) -> Vec<PathBuf> {
    python_dirs(&venv.join("lib"), "site-packages")
}

/// `parent/python3*/leaf` folders that exist.
fn python_dirs(parent: &Path, leaf: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join(leaf))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn wheel_roots_without_python() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(cwd) = env::current_dir() {
        for dir in cwd.ancestors() {
            roots.extend(site_packages_of(&dir.join(VENV_DIR)));
        }
    }
    if let Some(venv) = env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        roots.extend(site_packages_of(Path::new(&venv)));
    }
    roots
}

/// The folders holding the `nvidia` namespace package, as the default python3 sees them.
fn python_nvidia_roots() -> Vec<PathBuf> {
    let script = "import nvidia, os\nfor p in nvidia.__path__: print(os.path.dirname(p))";
    match Command::new("python3").args(["-c", script]).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect(),
        _ => Vec::new(),
    }
}

fn usual_site_packages() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for prefix in ["/usr/local/lib", "/usr/lib"] {
        roots.extend(python_dirs(Path::new(prefix), "site-packages"));
        roots.extend(python_dirs(Path::new(prefix), "dist-packages"));
    }
    let debian = PathBuf::from("/usr/lib/python3/dist-packages");
    if !roots.contains(&debian) {
        roots.push(debian);
    }
    if let Some(home) = env::var_os("HOME") {
        roots.extend(python_dirs(
            &Path::new(&home).join(".local/lib"),
            "site-packages",
        ));
    }
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_layouts_of_cuda_13_and_12_are_both_searched() {
        let root = PathBuf::from("/site");
        let inc = include_dirs(std::slice::from_ref(&root));
        assert!(inc.contains(&root.join("nvidia/cu13/include")));
        assert!(inc.contains(&root.join("nvidia/cuda_runtime/include")));
        let lib = lib_dirs(std::slice::from_ref(&root));
        assert!(lib.contains(&root.join("nvidia/cu13/lib")));
        assert!(lib.contains(&root.join("nvidia/cuda_nvrtc/lib")));
    }

    #[test]
    fn a_missing_library_lists_the_folders_searched() {
        let searched = find_library("libtessera-absent.so.9", "TESSERA_TEST_UNSET_LIBRARY")
            .expect_err("no such library exists");
        assert!(
            searched
                .iter()
                .any(|d| d.ends_with("nvidia/cu13/lib") || d == Path::new("/usr/local/cuda/lib64"))
        );
    }

    #[test]
    fn site_packages_of_a_venv_are_found_per_python_version() {
        let dir = tempfile::tempdir().unwrap();
        let sp = dir.path().join("lib/python3.12/site-packages");
        std::fs::create_dir_all(&sp).unwrap();
        std::fs::create_dir_all(dir.path().join("lib/not-python")).unwrap();
        assert_eq!(site_packages_of(dir.path()), vec![sp]);
    }
}
