//! LoRA against PEFT: the adapters PEFT saved for the llama-gqa and gpt2 fixtures, read into
//! Tessera's trainable space, give PEFT's loss and every adapter's gradient norm; merging
//! gives PEFT's `merge_and_unload()` weights; Tessera's PEFT export has PEFT's tensor names,
//! shapes and config. Fixtures: `scripts/fixtures/record.py` (PEFT 0.21.2, transformers 5.24).

use std::path::{Path, PathBuf};

use serde_json::Value;
use tessera_api::spec::{LoraSpec, LoraTarget};
use tessera_trainer::backend::cpu::CpuBackend;
use tessera_trainer::family::Family;
use tessera_trainer::peft;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The fixture's LoRA: rank 4, alpha 8, the targets PEFT was given.
fn spec(golden: &Value) -> LoraSpec {
    let targets = golden["lora"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| serde_json::from_value::<LoraTarget>(t.clone()).unwrap())
        .collect();
    LoraSpec {
        rank: golden["lora"]["r"].as_u64().unwrap() as u32,
        alpha: Some(golden["lora"]["lora_alpha"].as_f64().unwrap()),
        dropout: 0.0,
        targets,
        train_norms: false,
        train_embeddings: false,
    }
}

/// The base fixture's family with the adapter fixture's LoRA.
fn family(adapter: &str) -> (Family, Value) {
    let golden = json(&fixture(adapter).join("golden.json"));
    let base = fixture(golden["base_model_fixture"].as_str().unwrap());
    let (family, _) = Family::from_hf_dir(&base).unwrap();
    let lora = Some(spec(&golden));
    let family = match family {
        Family::Gpt2 {
            config, init_from, ..
        } => Family::Gpt2 {
            config,
            init_from,
            lora,
        },
        Family::Llama { config, from, .. } => Family::Llama { config, from, lora },
    };
    (family, golden)
}

/// PEFT's loss and per-adapter gradient norms, from the same adapter weights on the CPU in
/// f64: the loss to 1e-5 and every norm to 1e-4 relative (PEFT ran in float32).
fn matches_peft(adapter: &str) {
    let (family, golden) = family(adapter);
    let placement = family.placement().unwrap();
    let ids: Vec<u32> = golden["batch"]["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
        })
        .collect();
    let shape = golden["batch"]["shape"].as_array().unwrap();
    let (b, t) = (
        shape[0].as_u64().unwrap() as usize,
        shape[1].as_u64().unwrap() as usize,
    );
    let inputs: Vec<u32> = ids.chunks(t).flat_map(|r| &r[..t - 1]).copied().collect();
    let targets: Vec<u32> = ids.chunks(t).flat_map(|r| &r[1..]).copied().collect();

    let mut model = family.build(CpuBackend::<f64>::new(), b, t - 1, 0).unwrap();
    let (base, _) = family.initial_weights(&family.layout()).unwrap().unwrap();
    model.load_weights(&base).unwrap();
    let adapters = peft::read_adapter(&fixture(adapter), &family, &placement).unwrap();
    model.load_params_from_host(&adapters).unwrap();
    assert_eq!(model.num_params(), placement.trainable.total);
    model.zero_grad().unwrap();
    let loss = model.forward(&inputs, &targets).unwrap();
    model.backward().unwrap();
    let want = golden["float32"]["loss"].as_f64().unwrap();
    assert!(
        (loss - want).abs() <= 1e-5 * want,
        "{adapter}: loss {loss}, PEFT's {want}"
    );

    let grads = model.grads_to_host().unwrap();
    let norms = golden["float32"]["grad_norms_trainable"]
        .as_object()
        .unwrap();
    let tensors = peft::tensors(&family, &placement).unwrap();
    assert_eq!(
        tensors.len(),
        norms.len(),
        "{adapter}: one gradient per tensor"
    );
    let mut total = 0.0f64;
    let mut worst = 0.0f64;
    for tensor in &tensors {
        // PEFT names the live parameters with the adapter's name, `default`.
        let live = tensor.name.replace(".weight", ".default.weight");
        let want = norms[&live].as_f64().unwrap();
        let got = grads[tensor.range.clone()]
            .iter()
            .map(|&g| f64::from(g) * f64::from(g))
            .sum::<f64>();
        total += got;
        let got = got.sqrt();
        worst = worst.max((got - want).abs() / want);
        assert!(
            (got - want).abs() <= 1e-4 * want,
            "{adapter}: gradient norm of {live}: {got}, PEFT's {want}"
        );
    }
    let want = golden["float32"]["global_grad_norm_trainable"]
        .as_f64()
        .unwrap();
    assert!((total.sqrt() - want).abs() <= 1e-4 * want);
    eprintln!(
        "{adapter}: loss off PEFT's by {:.1e} relative; the worst of {} adapter gradient norms by {worst:.1e}",
        (loss - golden["float32"]["loss"].as_f64().unwrap()).abs()
            / golden["float32"]["loss"].as_f64().unwrap(),
        tensors.len()
    );
}

#[test]
fn llama_adapters_give_pefts_loss_and_gradients() {
    matches_peft("llama-gqa-lora");
}

#[test]
fn gpt2_adapters_give_pefts_loss_and_gradients() {
    matches_peft("gpt2-lora");
}

/// The merged weights against `merge_and_unload()`'s (golden.safetensors `merged.<name>`).
fn merges_like_peft(adapter: &str, name: &str, transposed: bool) {
    let (family, _) = family(adapter);
    let placement = family.placement().unwrap();
    let (base, _) = family.initial_weights(&family.layout()).unwrap().unwrap();
    let adapters = peft::read_adapter(&fixture(adapter), &family, &placement).unwrap();
    let merged = placement.merged(&base, &adapters);
    let bytes = std::fs::read(fixture(adapter).join("golden.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let want = file.tensor(&format!("merged.{name}")).unwrap();
    let want: Vec<f32> = want
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let hf = family
        .hf_tensors()
        .into_iter()
        .find(|t| name.ends_with(&t.name) || t.name.ends_with(name))
        .unwrap();
    let range = match hf.layer {
        Some(l) => placement.family.layer(hf.id, l),
        None => placement.family.range(hf.id),
    };
    let ours = &merged[range.clone()];
    let before = &base[range];
    let (rows, cols) = (hf.shape[0], hf.shape[1]);
    let mut moved = 0.0f32;
    for r in 0..rows {
        for c in 0..cols {
            // GPT-2's Conv1D stores (in, out): ours is (out, in).
            let i = if transposed {
                c * rows + r
            } else {
                r * cols + c
            };
            let w = want[r * cols + c];
            assert!(
                (ours[i] - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{adapter}: merged {name}[{r}, {c}] = {}, PEFT's {w}",
                ours[i]
            );
            moved = moved.max((before[i] - w).abs());
        }
    }
    assert!(moved > 1e-3, "{adapter}: the adapter changes {name}");
}

#[test]
fn merged_weights_equal_pefts_merge_and_unload() {
    merges_like_peft(
        "llama-gqa-lora",
        "model.layers.0.self_attn.q_proj.weight",
        false,
    );
    merges_like_peft("gpt2-lora", "transformer.h.0.attn.c_attn.weight", true);
}

/// Tessera's PEFT export of the fixtures' adapters: PEFT's tensor names, shapes and values,
/// and every key of PEFT's adapter_config.json with PEFT's value (the keys only newer PEFT
/// versions write are at their defaults in PEFT's file, and left out).
fn exports_like_peft(adapter: &str) {
    let (family, _) = family(adapter);
    let placement = family.placement().unwrap();
    let adapters = peft::read_adapter(&fixture(adapter), &family, &placement).unwrap();
    let out = tempfile::tempdir().unwrap();
    let files = peft::write_adapter(out.path(), &family, &placement, &adapters, "BASE").unwrap();
    assert_eq!(files, ["adapter_model.safetensors", "adapter_config.json"]);

    let want_names = json(&fixture(adapter).join("tensor_names.json"));
    let bytes = std::fs::read(out.path().join(peft::ADAPTER_FILE)).unwrap();
    let ours = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let want_tensors = want_names["tensors"].as_array().unwrap();
    assert_eq!(ours.len(), want_tensors.len(), "{adapter}: tensor count");
    let theirs_bytes = std::fs::read(fixture(adapter).join(peft::ADAPTER_FILE)).unwrap();
    let theirs = safetensors::SafeTensors::deserialize(&theirs_bytes).unwrap();
    for t in want_tensors {
        let name = t["name"].as_str().unwrap();
        let view = ours
            .tensor(name)
            .unwrap_or_else(|_| panic!("{adapter}: no {name}"));
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(view.shape(), shape.as_slice(), "{adapter}: {name}");
        assert_eq!(format!("{:?}", view.dtype()), t["dtype"].as_str().unwrap());
        assert_eq!(view.data(), theirs.tensor(name).unwrap().data(), "{name}");
    }

    let ours = json(&out.path().join(peft::CONFIG_FILE));
    let theirs = json(&fixture(adapter).join(peft::CONFIG_FILE));
    for (key, value) in ours.as_object().unwrap() {
        let want = &theirs[key];
        match key.as_str() {
            "base_model_name_or_path" => assert_eq!(value, "BASE"),
            "target_modules" => {
                let set = |v: &Value| {
                    let mut names: Vec<String> = v
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|n| n.as_str().unwrap().to_string())
                        .collect();
                    names.sort();
                    names
                };
                assert_eq!(set(value), set(want), "{adapter}: target_modules");
            }
            "lora_alpha" => assert_eq!(value.as_f64(), want.as_f64(), "{adapter}: lora_alpha"),
            _ => assert_eq!(value, want, "{adapter}: adapter_config.json key {key}"),
        }
    }
    for (key, value) in theirs.as_object().unwrap() {
        if ours.get(key).is_none() {
            let default = value.is_null()
                || value == &Value::Bool(false)
                || value.as_object().is_some_and(|o| o.is_empty())
                || key == "peft_version"
                || key == "qalora_group_size";
            assert!(
                default,
                "{adapter}: PEFT writes {key} = {value}, which the export leaves out"
            );
        }
    }
}

#[test]
fn peft_export_has_pefts_names_shapes_values_and_config() {
    exports_like_peft("llama-gqa-lora");
    exports_like_peft("gpt2-lora");
}

/// With B = 0 (PEFT's initialisation) the adapted model's loss and logits are the base
/// model's exactly.
#[test]
fn fresh_adapters_leave_the_base_models_output_unchanged() {
    for adapter in ["llama-gqa-lora", "gpt2-lora"] {
        let (family, _) = family(adapter);
        let (base, _) = family.initial_weights(&family.layout()).unwrap().unwrap();
        let inputs: Vec<u32> = (0..16).map(|i| (i * 7 + 3) % 200).collect();
        let targets: Vec<u32> = (0..16).map(|i| (i * 5 + 1) % 200).collect();
        let mut lora = family.build(CpuBackend::<f32>::new(), 2, 8, 3).unwrap();
        lora.load_weights(&base).unwrap();
        let plain = family.without_lora();
        let mut full = plain.build(CpuBackend::<f32>::new(), 2, 8, 3).unwrap();
        full.load_weights(&base).unwrap();
        let a = lora.forward(&inputs, &targets).unwrap();
        let b = full.forward(&inputs, &targets).unwrap();
        assert_eq!(a.to_bits(), b.to_bits(), "{adapter}: {a} against {b}");
        // The adapters are not zero: A is drawn, only B starts at zero.
        let params = lora.params_to_host().unwrap();
        assert!(params.iter().any(|&p| p != 0.0));
        assert!(lora.num_params() * 5 < full.num_params(), "{adapter}");
    }
}

/// Norms and embeddings trained whole under LoRA (`trainNorms`, `trainEmbeddings`) get the
/// full fine-tune's gradients exactly while B = 0 (the adapters add exact zeros), and the
/// PEFT export lists them as modules to save.
#[test]
fn norms_and_embeddings_trained_whole_get_the_full_models_gradients() {
    for adapter in ["llama-gqa-lora", "gpt2-lora"] {
        let (family, _) = family(adapter);
        let family = match family {
            Family::Gpt2 {
                config,
                init_from,
                lora,
            } => Family::Gpt2 {
                config,
                init_from,
                lora: lora.map(|l| LoraSpec {
                    train_norms: true,
                    train_embeddings: true,
                    ..l
                }),
            },
            Family::Llama { config, from, lora } => Family::Llama {
                config,
                from,
                lora: lora.map(|l| LoraSpec {
                    train_norms: true,
                    train_embeddings: true,
                    ..l
                }),
            },
        };
        let (base, _) = family.initial_weights(&family.layout()).unwrap().unwrap();
        let inputs: Vec<u32> = (0..16).map(|i| (i * 7 + 3) % 200).collect();
        let targets: Vec<u32> = (0..16).map(|i| (i * 5 + 1) % 200).collect();
        let mut lora = family.build(CpuBackend::<f64>::new(), 2, 8, 3).unwrap();
        lora.load_weights(&base).unwrap();
        let mut full = family
            .without_lora()
            .build(CpuBackend::<f64>::new(), 2, 8, 3)
            .unwrap();
        full.load_weights(&base).unwrap();
        for model in [&mut lora, &mut full] {
            model.zero_grad().unwrap();
            model.forward(&inputs, &targets).unwrap();
            model.backward().unwrap();
        }
        let (lg, fg) = (lora.grads_to_host().unwrap(), full.grads_to_host().unwrap());
        let whole: Vec<_> = lora
            .layout()
            .tensors
            .iter()
            .filter(|t| !t.name.contains(".lora_"))
            .collect();
        // Every norm weight (and bias) and the embeddings.
        assert!(whole.len() >= 4, "{adapter}: {whole:?}");
        for t in whole {
            let f = full.layout().by_name(t.name).unwrap();
            assert_eq!(
                lg[t.range()],
                fg[f.range()],
                "{adapter}: gradient of {}",
                t.name
            );
        }
        let placement = family.placement().unwrap();
        let config = peft::adapter_config(&family, &placement, "BASE").unwrap();
        let modules: Vec<&str> = config["modules_to_save"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        let want: &[&str] = match adapter {
            "gpt2-lora" => &["ln_1", "ln_2", "ln_f", "wpe", "wte"],
            _ => &[
                "embed_tokens",
                "input_layernorm",
                "lm_head",
                "norm",
                "post_attention_layernorm",
            ],
        };
        assert_eq!(modules, want, "{adapter}");
    }
}

/// LoRA dropout: with a step's mask fixed, the adapters' gradients are those of the loss
/// (central differences in f64 on entries of A and B), and the mask changes the loss.
#[test]
fn lora_dropout_gradients_match_finite_differences() {
    use tessera_trainer::lora::DropoutPlan;
    let (family, _) = family("llama-gqa-lora");
    let family = match family {
        Family::Llama { config, from, lora } => Family::Llama {
            config,
            from,
            lora: lora.map(|l| LoraSpec { dropout: 0.3, ..l }),
        },
        other => other,
    };
    let placement = family.placement().unwrap();
    let (base, _) = family.initial_weights(&family.layout()).unwrap().unwrap();
    // PEFT's adapters: B is not zero, so both A's and B's gradients are non-trivial.
    let adapters = peft::read_adapter(&fixture("llama-gqa-lora"), &family, &placement).unwrap();
    let inputs: Vec<u32> = (0..16).map(|i| (i * 7 + 3) % 200).collect();
    let targets: Vec<u32> = (0..16).map(|i| (i * 5 + 1) % 200).collect();
    let mut model = family.build(CpuBackend::<f64>::new(), 2, 8, 3).unwrap();
    model.load_weights(&base).unwrap();
    let mut loss_at = |params: &[f32], plan: Option<DropoutPlan>| {
        model.load_params_from_host(params).unwrap();
        model.set_dropout_plan(plan);
        model.set_micro_batch(0);
        model.forward(&inputs, &targets).unwrap()
    };
    let plan = || Some(DropoutPlan::new(11, 4, vec![6]));
    let without = loss_at(&adapters, None);
    let with = loss_at(&adapters, plan());
    assert!((with - without).abs() > 1e-6, "the mask changes the loss");

    let mut model = family.build(CpuBackend::<f64>::new(), 2, 8, 3).unwrap();
    model.load_weights(&base).unwrap();
    model.load_params_from_host(&adapters).unwrap();
    model.set_dropout_plan(plan());
    model.set_micro_batch(0);
    model.zero_grad().unwrap();
    model.forward(&inputs, &targets).unwrap();
    model.backward().unwrap();
    let grads = model.grads_to_host().unwrap();
    let mut loss_at = |params: &[f32]| {
        model.load_params_from_host(params).unwrap();
        model.forward(&inputs, &targets).unwrap()
    };
    let layout = placement.trainable.clone();
    let mut checked = 0;
    for tensor in &layout.tensors {
        for k in [0, tensor.len / 3, tensor.len - 1] {
            let i = tensor.offset + k;
            let (mut plus, mut minus) = (adapters.clone(), adapters.clone());
            plus[i] += 1e-3;
            minus[i] -= 1e-3;
            // The steps as f32 actually made them.
            let step = f64::from(plus[i]) - f64::from(minus[i]);
            let numeric = (loss_at(&plus) - loss_at(&minus)) / step;
            let analytic = f64::from(grads[i]);
            assert!(
                (numeric - analytic).abs() <= 1e-4 + 1e-3 * analytic.abs(),
                "{}[{k}]: finite differences {numeric}, backward {analytic}",
                tensor.name
            );
            checked += 1;
        }
    }
    // A and B of the seven projections.
    assert_eq!(checked, 3 * 14);
}
