"""The PyTorch side of bench/gpu/llama.sh: a Llama-architecture model from transformers.

    python llama_reference.py init  --out DIR [shape flags]      a random model directory
    python llama_reference.py train --model DIR --data SHARDS --steps N --micro-batch B
                                    --seq-len T [--device cuda] [--warmup-steps W]

`init` writes a Hugging Face model directory (config.json + model.safetensors, f32) with a
seeded random initialisation, which both sides start from. `train` trains it the usual
PyTorch way (bf16 autocast, fused AdamW, TF32 allowed) on consecutive windows of the token
shards and prints one JSON line: tokens/s (warm-up steps left out), peak GPU memory, and the
first step's loss and gradient norm (before clipping) for the parity check.
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import load_tokens  # noqa: E402  (the GPT-2 bench's shard reader)


def init(args: argparse.Namespace) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.width,
        intermediate_size=args.ffn_width,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.context,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        tie_word_embeddings=args.tied,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(args.out, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"parameters": params}))


def train(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM

    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device)
    model.train()
    tokens, _ = load_tokens(args.data, model.config.vocab_size)
    tokens = tokens.to(torch.int64)
    b, t = args.micro_batch, args.seq_len
    # A stream of exactly one window (the parity shard): every row is that window, as
    # Tessera's loader reads it.
    one_window = tokens.numel() == t + 1
    if tokens.numel() < b * t + 1 and not one_window:
        sys.exit("llama_reference.py: the shards hold fewer tokens than one batch")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-4,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=device.type == "cuda",
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first_loss = first_norm = None
    timed_tokens, timed_seconds = 0, 0.0
    cursor = 0
    for step in range(args.steps):
        if one_window:
            rows = tokens.view(1, t + 1).expand(b, t + 1)
        else:
            if cursor + b * t + 1 > tokens.numel():
                cursor = 0
            # Consecutive windows of t + 1 tokens, overlapping by one.
            rows = torch.stack([tokens[cursor + i * t : cursor + i * t + t + 1] for i in range(b)])
            cursor += b * t
        x = rows[:, :-1].contiguous().to(device)
        y = rows[:, 1:].contiguous().to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        if step == 0:
            first_loss, first_norm = float(loss), float(norm)
        if step >= args.warmup_steps:
            timed_tokens += b * t
            timed_seconds += seconds
        print(f"step {step + 1}: loss {float(loss):.4f} {seconds * 1000:.0f} ms", file=sys.stderr)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    print(
        json.dumps(
            {
                "tokensPerSecond": timed_tokens / timed_seconds if timed_seconds else None,
                "peakMemoryBytes": peak,
                "firstLoss": first_loss,
                "firstGradNorm": first_norm,
                "parameters": sum(p.numel() for p in model.parameters()),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init")
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--ffn-width", type=int, default=8192)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--tied", action="store_true")
    p.add_argument("--seed", type=int, default=1234)
    p = sub.add_parser("train")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--device", default="cuda")
    args = parser.parse_args()
    {"init": init, "train": train}[args.command](args)


if __name__ == "__main__":
    main()
