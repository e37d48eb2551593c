//! Every CUDA kernel family compiles with NVRTC for sm_90 (H100) with no register spills, and
//! the kernel cache hits and misses as it should. Needs no GPU, only NVRTC and the CUDA
//! headers (`bash scripts/setup.sh` installs the pinned wheels into ./.venv-cuda). Never
//! skipped: without them the tests fail with the error naming what is missing.

use tessera_trainer::cuda::{
    CompileOptions, Compiler, CudaError, FAMILIES, KernelCache, KernelFamily, parse_ptxas_report,
};

/// Spill bytes (stores + loads) a kernel may have. Zero: a spill in these kernels means a
/// register array outgrew the file, which is a design error to fix, not to tolerate.
const MAX_SPILL_BYTES: u32 = 0;
/// H100.
const ARCH: u32 = 90;

fn compiler(cache: Option<KernelCache>) -> Compiler {
    match Compiler::new() {
        Ok(c) => c.with_cache(cache),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn every_kernel_compiles_for_sm90_without_spills() {
    // No cache: always a real compile, so the ptxas report is this NVRTC's.
    let nvrtc = compiler(None);
    let (major, minor) = nvrtc.nvrtc_version();
    println!(
        "NVRTC {major}.{minor} ({}), headers {}",
        nvrtc.toolchain().nvrtc_lib.display(),
        nvrtc.toolchain().include_dir.display()
    );
    let mut failures = Vec::new();
    println!(
        "{:<14} {:<34} {:>5} {:>7} {:>7} {:>6} {:>7}",
        "family", "kernel", "regs", "spill_st", "spill_ld", "stack", "smem"
    );
    for family in FAMILIES {
        let compiled = match nvrtc.compile(family, &CompileOptions::cubin_verbose(ARCH)) {
            Ok(c) => c,
            Err(e) => {
                failures.push(e.to_string());
                continue;
            }
        };
        assert!(
            compiled.image.starts_with(b"\x7fELF"),
            "{}: not a CUBIN",
            family.name
        );
        let report = parse_ptxas_report(&compiled.log);
        for entry in family.entry_points {
            if !report.iter().any(|k| k.name == *entry) {
                failures.push(format!(
                    "{}: kernel {entry} missing from the ptxas report:\n{}",
                    family.name, compiled.log
                ));
            }
        }
        for k in &report {
            println!(
                "{:<14} {:<34} {:>5} {:>7} {:>7} {:>6} {:>7}",
                family.name,
                k.name,
                k.registers,
                k.spill_store_bytes,
                k.spill_load_bytes,
                k.stack_frame_bytes,
                k.shared_bytes
            );
            if k.spill_store_bytes + k.spill_load_bytes > MAX_SPILL_BYTES {
                failures.push(format!(
                    "{}: kernel {} spills {} bytes (stores) / {} bytes (loads)",
                    family.name, k.name, k.spill_store_bytes, k.spill_load_bytes
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_kernel_that_does_not_compile_fails_with_the_nvrtc_log() {
    let broken = KernelFamily {
        name: "broken",
        source: "#include \"common.cuh\"\nextern \"C\" __global__ void k(bf16* x) { x[0] = undefined_name; }\n",
        entry_points: &["k"],
    };
    match compiler(None).compile(&broken, &CompileOptions::cubin_verbose(ARCH)) {
        Err(CudaError::Compile { family, arch, log }) => {
            assert_eq!((family.as_str(), arch), ("broken", ARCH));
            assert!(log.contains("undefined_name"), "log: {log}");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}

#[test]
fn a_second_compile_is_a_cache_hit_and_a_changed_option_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let nvrtc = compiler(Some(KernelCache::new(dir.path())));
    let gelu = FAMILIES.iter().find(|f| f.name == "gelu").unwrap();
    let options = CompileOptions::ptx(ARCH);

    let first = nvrtc.compile(gelu, &options).unwrap();
    assert!(!first.cache_hit);
    assert!(String::from_utf8_lossy(&first.image).contains(".entry gelu_forward"));
    let second = nvrtc.compile(gelu, &options).unwrap();
    assert!(second.cache_hit);
    assert_eq!((&second.image, &second.log), (&first.image, &first.log));

    let mut changed = options.clone();
    changed.extra.push("-DTESSERA_CACHE_PROBE=1".into());
    assert!(!nvrtc.compile(gelu, &changed).unwrap().cache_hit);
    assert!(
        !nvrtc
            .compile(gelu, &CompileOptions::ptx(80))
            .unwrap()
            .cache_hit
    );
    assert!(nvrtc.compile(gelu, &changed).unwrap().cache_hit);

    let entries = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(
        entries, 3,
        "one file per distinct compile, no temporary files left"
    );
}

#[test]
fn an_unwritable_cache_is_skipped_not_fatal() {
    // A cache folder that cannot exist (its parent is a file), as on a read-only filesystem.
    let blocker = tempfile::NamedTempFile::new().unwrap();
    let nvrtc = compiler(Some(KernelCache::new(blocker.path().join("kernels"))));
    let gelu = FAMILIES.iter().find(|f| f.name == "gelu").unwrap();
    for _ in 0..2 {
        let compiled = nvrtc.compile(gelu, &CompileOptions::ptx(ARCH)).unwrap();
        assert!(!compiled.cache_hit, "nothing can have been cached");
        assert!(String::from_utf8_lossy(&compiled.image).contains(".entry gelu_forward"));
    }
}
