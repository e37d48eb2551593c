//! The CUDA kernel sources, embedded at build time: one family per file under
//! `trainer/kernels/`, each with the `extern "C"` entry points it must define.

/// Shared by every family (`#include "common.cuh"`): bf16 conversions, deterministic
/// warp/block reductions. Given to NVRTC as an in-memory header.
pub const COMMON_HEADER: &str = include_str!("../../kernels/common.cuh");

/// One `.cu` file: its name, its source and the entry points it defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFamily {
    /// File stem: `layernorm` for `layernorm.cu`.
    pub name: &'static str,
    pub source: &'static str,
    /// The `extern "C"` kernels a launcher will look up.
    pub entry_points: &'static [&'static str],
}

/// Every kernel family. Matrix products are not here: they go to cuBLASLt.
pub const FAMILIES: &[KernelFamily] = &[
    KernelFamily {
        name: "embedding",
        source: include_str!("../../kernels/embedding.cu"),
        entry_points: &[
            "encoder_forward",
            "encoder_backward_wpe",
            "encoder_backward_wte",
            "embedding_forward",
        ],
    },
    KernelFamily {
        name: "layernorm",
        source: include_str!("../../kernels/layernorm.cu"),
        entry_points: &[
            "layernorm_forward",
            "fused_residual_layernorm_forward",
            "layernorm_backward",
            "layernorm_backward_reduce",
        ],
    },
    KernelFamily {
        name: "attention",
        source: include_str!("../../kernels/attention.cu"),
        entry_points: &[
            "attention_forward",
            "attention_backward_preprocess",
            "attention_backward_dkdv",
            "attention_backward_dq",
        ],
    },
    KernelFamily {
        name: "gelu",
        source: include_str!("../../kernels/gelu.cu"),
        entry_points: &["gelu_forward", "gelu_backward"],
    },
    KernelFamily {
        name: "softmax_xent",
        source: include_str!("../../kernels/softmax_xent.cu"),
        entry_points: &["softmax_cross_entropy"],
    },
    KernelFamily {
        name: "adamw",
        source: include_str!("../../kernels/adamw.cu"),
        entry_points: &["adamw_update"],
    },
    KernelFamily {
        name: "reduce",
        source: include_str!("../../kernels/reduce.cu"),
        entry_points: &[
            "sum_partial_bf16",
            "sum_partial_f32",
            "sum_squares_partial_bf16",
            "sum_squares_partial_f32",
            "reduce_partials",
        ],
    },
    KernelFamily {
        name: "pointwise",
        source: include_str!("../../kernels/pointwise.cu"),
        entry_points: &[
            "residual_forward",
            "scale_bf16",
            "scale_f32",
            "dropout",
            "widen_bf16",
            "narrow_f32",
        ],
    },
    KernelFamily {
        name: "rmsnorm",
        source: include_str!("../../kernels/rmsnorm.cu"),
        entry_points: &[
            "rmsnorm_forward",
            "rmsnorm_backward",
            "rmsnorm_backward_reduce",
        ],
    },
    KernelFamily {
        name: "rope",
        source: include_str!("../../kernels/rope.cu"),
        entry_points: &["rope_rotate"],
    },
    KernelFamily {
        name: "swiglu",
        source: include_str!("../../kernels/swiglu.cu"),
        entry_points: &["swiglu_forward", "swiglu_backward"],
    },
    KernelFamily {
        name: "gqa_attention",
        source: include_str!("../../kernels/gqa_attention.cu"),
        entry_points: &[
            "gqa_attention_forward",
            "gqa_attention_backward_preprocess",
            "gqa_attention_backward_dq",
            "gqa_attention_backward_dkdv",
        ],
    },
    KernelFamily {
        name: "bias_grad",
        source: include_str!("../../kernels/bias_grad.cu"),
        entry_points: &["bias_backward_partial", "bias_backward_reduce"],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_point_is_an_extern_c_kernel_of_its_file() {
        for family in FAMILIES {
            assert!(family.source.contains("#include \"common.cuh\""));
            for entry in family.entry_points {
                let defined = family.source.lines().any(|line| {
                    line.starts_with("extern \"C\" __global__")
                        && line.contains(&format!(" {entry}("))
                });
                assert!(defined, "{}.cu does not define kernel {entry}", family.name);
            }
            let kernels = family.source.matches("extern \"C\" __global__").count();
            assert_eq!(
                kernels,
                family.entry_points.len(),
                "{}.cu defines kernels not listed in FAMILIES",
                family.name
            );
        }
    }

    #[test]
    fn no_kernel_uses_atomics() {
        // Determinism: every reduction has a fixed order (see each file's header).
        for family in FAMILIES {
            // atomicAdd, atomicMax, atomic_ref, …: "atomic" followed by a name character.
            let calls_atomic = family.source.match_indices("atomic").any(|(at, _)| {
                family.source[at + "atomic".len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
            });
            assert!(!calls_atomic, "{}.cu uses an atomic", family.name);
        }
    }
}
