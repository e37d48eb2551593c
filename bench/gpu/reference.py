#!/usr/bin/env python3
"""PyTorch reference for the GPU benchmark: Tessera's GPT-2, trained the standard PyTorch way.

The model is Tessera's exactly (trainer/src/model.rs, trainer/src/hf.rs):

    tokens ─▶ wte[tok] + wpe[t] ─▶ L × [ x += attn_proj(attn(qkv(ln_1(x))))
                                         x += fc_proj(gelu_tanh(fc(ln_2(x)))) ]
           ─▶ ln_f ─▶ logits = x @ wteᵀ  (Vp = vocab rounded up to 128 columns)
           ─▶ mean cross-entropy over the first `vocab` columns, all B·T positions

    qkv is one Linear (C → 3C) laid out q | k | v, heads contiguous in each; every Linear has
    a bias; LayerNorm eps 1e-5; GELU with the tanh approximation; causal SDPA attention.

Training recipe: fp32 parameters, bf16 autocast for the forward (CUDA only; on the CPU the model
runs in plain fp32), torch.compile (unless --no-compile), TF32 matmuls allowed, fused AdamW (lr
6e-4, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on the Linear weights only), global-norm
gradient clipping at 1.0, constant learning rate.

Outputs one JSON line on stdout; progress goes to stderr. Only torch and the standard library
are used (safetensors and the token shards are read and written by hand).
"""

import argparse
import glob
import json
import math
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# Tessera pads the embedding/output-head rows to a multiple of this (trainer/src/config.rs).
VOCAB_PAD_MULTIPLE = 128
# H100/H200 SXM dense bf16 peak, the MFU denominator.
DEFAULT_PEAK_TFLOPS = 989.4

SHARD_MAGIC = b"TSRSHARD"
SHARD_HEADER_BYTES = 64

if sys.byteorder != "little":
    sys.exit("reference.py: shards and safetensors are little-endian; this host is not")


def log(message):
    print(message, file=sys.stderr, flush=True)


def padded(vocab):
    return (vocab + VOCAB_PAD_MULTIPLE - 1) // VOCAB_PAD_MULTIPLE * VOCAB_PAD_MULTIPLE


def flops_per_token(layers, width, vocab, seq_len):
    """Tessera's ModelConfig::flops_per_token: 6·N + 12·L·C·T, N = V·C + L·(12·C² + 13·C) + 2·C.

    Like the trainer, N counts the parameters that take part in matrix products: the *unpadded*
    vocabulary rows of wte (the padded rows and wpe are left out).
    """
    n = vocab * width + layers * (12 * width * width + 13 * width) + 2 * width
    return 6.0 * n + 12.0 * layers * width * seq_len


# === model ===


class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width, eps=1e-5)
        self.qkv = nn.Linear(width, 3 * width)
        self.attn_proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width, eps=1e-5)
        self.fc = nn.Linear(width, 4 * width)
        self.fc_proj = nn.Linear(4 * width, width)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(c, dim=2)
        shape = (b, t, self.heads, c // self.heads)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        x = x + self.attn_proj(y)
        return x + self.fc_proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, layers, heads, width, context, vocab):
        super().__init__()
        if width % heads:
            raise ValueError(f"--heads {heads} must divide --width {width}")
        self.layers, self.heads, self.width = layers, heads, width
        self.context, self.vocab, self.padded_vocab = context, vocab, padded(vocab)
        self.wte = nn.Embedding(self.padded_vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.h = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width, eps=1e-5)

    @torch.no_grad()
    def init_weights(self, generator):
        """GPT-2 init as Tessera's init_params: N(0, 0.02), residual projections
        N(0, 0.02/√(2L)), biases 0, LayerNorm weights 1, padded wte rows 0."""
        residual_std = 0.02 / math.sqrt(2 * self.layers)

        def normal(t, std):
            t.copy_(torch.randn(t.shape, generator=generator) * std)

        normal(self.wte.weight, 0.02)
        self.wte.weight[self.vocab :].zero_()
        normal(self.wpe.weight, 0.02)
        for block in self.h:
            for name in ("qkv", "fc"):
                normal(getattr(block, name).weight, 0.02)
            for name in ("attn_proj", "fc_proj"):
                normal(getattr(block, name).weight, residual_std)
            for linear in (block.qkv, block.attn_proj, block.fc, block.fc_proj):
                linear.bias.zero_()
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()

    def forward(self, idx, targets):
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # (B, T, Vp), head tied to wte
        # The padded columns take no part in the softmax, as in the trainer.
        logits = logits[..., : self.vocab]
        return F.cross_entropy(logits.reshape(-1, self.vocab).float(), targets.reshape(-1))

    def optimizer_groups(self, weight_decay):
        """Decay the Linear (matmul) weights only: not wte/wpe, biases or LayerNorm."""
        decay, no_decay = [], []
        for module in self.modules():
            for name, p in module.named_parameters(recurse=False):
                (decay if isinstance(module, nn.Linear) and name == "weight" else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]


# === Hugging Face GPT-2 safetensors (hand-written reader and writer) ===


def hf_tensors(model):
    """(HF name, our tensor, transposed) for every tensor, in Tessera's hf.rs order. Conv1D
    weights are stored (in, out): the transpose of a torch Linear weight."""
    out = [("wte.weight", model.wte.weight, False), ("wpe.weight", model.wpe.weight, False)]
    for i, b in enumerate(model.h):
        out += [
            (f"h.{i}.ln_1.weight", b.ln_1.weight, False),
            (f"h.{i}.ln_1.bias", b.ln_1.bias, False),
            (f"h.{i}.attn.c_attn.weight", b.qkv.weight, True),
            (f"h.{i}.attn.c_attn.bias", b.qkv.bias, False),
            (f"h.{i}.attn.c_proj.weight", b.attn_proj.weight, True),
            (f"h.{i}.attn.c_proj.bias", b.attn_proj.bias, False),
            (f"h.{i}.ln_2.weight", b.ln_2.weight, False),
            (f"h.{i}.ln_2.bias", b.ln_2.bias, False),
            (f"h.{i}.mlp.c_fc.weight", b.fc.weight, True),
            (f"h.{i}.mlp.c_fc.bias", b.fc.bias, False),
            (f"h.{i}.mlp.c_proj.weight", b.fc_proj.weight, True),
            (f"h.{i}.mlp.c_proj.bias", b.fc_proj.bias, False),
        ]
    out += [("ln_f.weight", model.ln_f.weight, False), ("ln_f.bias", model.ln_f.bias, False)]
    return out


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: fp32 tensor}. Writes F32, header padded with spaces to 8 bytes."""
    header, offset = {}, 0
    for name, t in tensors.items():
        size = t.numel() * 4
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    data = bytearray(offset)
    for name, t in tensors.items():
        begin, end = header[name]["data_offsets"]
        if end > begin:
            dst = torch.frombuffer(data, dtype=torch.float32, offset=begin, count=(end - begin) // 4)
            dst.copy_(t.detach().reshape(-1).to("cpu", torch.float32))
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        f.write(data)


SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def read_safetensors(path):
    """{name: fp32 CPU tensor} of every tensor in the file (F32, BF16 and F16)."""
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    if len(raw) < 8:
        raise ValueError(f"{path} is not a safetensors file: shorter than 8 bytes")
    (n,) = struct.unpack_from("<Q", raw, 0)
    if 8 + n > len(raw):
        raise ValueError(f"{path} is not a safetensors file: header length {n} past the end")
    header = json.loads(raw[8 : 8 + n].decode())
    start = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name} is {info['dtype']}; only F32, BF16, F16 load")
        begin, end = info["data_offsets"]
        shape = info["shape"]
        count = math.prod(shape)
        width = torch.tensor([], dtype=dtype).element_size()
        if end - begin != count * width or start + end > len(raw):
            raise ValueError(f"{path}: tensor {name} has bad data_offsets {info['data_offsets']}")
        if count == 0:
            t = torch.zeros(shape, dtype=torch.float32)
        else:
            t = torch.frombuffer(raw, dtype=dtype, offset=start + begin, count=count)
            t = t.reshape(shape).to(torch.float32).clone()
        out[name] = t
    return out


def save_hf(model, path):
    tensors = {}
    for name, p, transposed in hf_tensors(model):
        t = p.detach().float().cpu()
        if name == "wte.weight":
            t = t[: model.vocab]  # only the real vocabulary rows, as hf.rs export_gpt2
        tensors[name] = t.t().contiguous() if transposed else t
    write_safetensors(path, tensors, {"format": "pt"})


@torch.no_grad()
def load_hf(model, path):
    """Loads HF GPT-2 weights as Tessera's hf::load_gpt2: an optional `transformer.` prefix,
    lm_head.weight ignored (the head is tied), padded wte rows set to zero."""
    tensors = read_safetensors(path)
    for name, p, transposed in hf_tensors(model):
        t = tensors.get(name, tensors.get("transformer." + name))
        if t is None:
            raise ValueError(f"{path} lacks tensor {name}; is it a GPT-2 with {model.layers} layers?")
        want = list(p.shape)
        if name == "wte.weight":
            want[0] = model.vocab
        if transposed:
            want = want[::-1]
        if list(t.shape) != want:
            raise ValueError(f"{path}: tensor {name} has shape {list(t.shape)}, the model needs {want}")
        if transposed:
            t = t.t()
        if name == "wte.weight":
            p.zero_()
            p[: model.vocab].copy_(t)
        else:
            p.copy_(t)


# === token shards ===


def read_shard(path):
    """The tokens of one Tessera shard as an int32 tensor, and its vocabulary size."""
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    if len(raw) < SHARD_HEADER_BYTES or raw[:8] != SHARD_MAGIC:
        raise ValueError(f"{path} is not a Tessera token shard (no TSRSHARD magic)")
    version, width, count, vocab = struct.unpack_from("<IIQI", raw, 8)
    if version != 1:
        raise ValueError(f"{path}: shard format version {version}, this script reads 1")
    if width not in (2, 4):
        raise ValueError(f"{path}: token width {width}, expected 2 or 4")
    if count < 1 or len(raw) != SHARD_HEADER_BYTES + count * width:
        raise ValueError(f"{path}: {len(raw)} bytes do not hold {count} tokens of {width} bytes")
    if width == 2:
        tokens = torch.frombuffer(raw, dtype=torch.int16, offset=SHARD_HEADER_BYTES, count=count)
        tokens = tokens.to(torch.int32) & 0xFFFF
    else:
        tokens = torch.frombuffer(raw, dtype=torch.int32, offset=SHARD_HEADER_BYTES, count=count)
        tokens = tokens.clone()
    return tokens, vocab


def write_shard(path, tokens, vocab):
    """Writes `tokens` (ints below `vocab`) as a Tessera shard (u16 when they fit)."""
    tokens = list(tokens)
    width = 2 if max(tokens) < 1 << 16 else 4
    with open(path, "wb") as f:
        f.write(SHARD_MAGIC + struct.pack("<IIQI", 1, width, len(tokens), vocab) + bytes(36))
        f.write(struct.pack(f"<{len(tokens)}{'H' if width == 2 else 'I'}", *tokens))


def load_tokens(spec, model_vocab):
    paths = sorted(glob.glob(spec))
    if not paths:
        sys.exit(f"reference.py: --data {spec} matches no file")
    parts = []
    for path in paths:
        tokens, vocab = read_shard(path)
        if vocab > model_vocab:
            sys.exit(f"reference.py: {path} has vocabulary {vocab}, the model only {model_vocab}")
        parts.append(tokens)
    return torch.cat(parts), paths


# === training ===


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="token shard file or glob, e.g. 'gpt2/train-*.bin'")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps (default 20)")
    p.add_argument("--micro-batch", type=int, default=16, help="sequences per step (default 16)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: --context)")
    p.add_argument("--warmup-steps", type=int, default=2, help="first steps left out of the timing (default 2)")
    p.add_argument("--init-out", help="write the initial weights here (HF GPT-2 safetensors, F32), then go on")
    p.add_argument("--init", help="initialise from this HF GPT-2 safetensors file instead of at random")
    p.add_argument(
        "--parity",
        action="store_true",
        help="one forward/backward of the first window (every row the same), print "
        '{"loss","gradNorm"} and exit; always eager (no torch.compile)',
    )
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--no-compile", action="store_true", help="do not torch.compile the model")
    p.add_argument("--peak-tflops", type=float, default=DEFAULT_PEAK_TFLOPS, help="MFU denominator (default 989.4)")
    p.add_argument("--seed", type=int, default=1337, help="seeds the init and the batch offsets")
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    # Model shape; the defaults are GPT-2 124M. Smaller shapes are for testing on a CPU.
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--context", type=int, default=1024, help="rows of wpe (default 1024)")
    p.add_argument("--vocab", type=int, default=50257, help="vocabulary before padding (default 50257)")
    args = p.parse_args(argv)
    if args.seq_len is None:
        args.seq_len = args.context
    if not 1 <= args.seq_len <= args.context:
        p.error(f"--seq-len must be in [1, --context {args.context}]")
    if args.micro_batch < 1:
        p.error("--micro-batch must be at least 1")
    if not args.parity and not 0 <= args.warmup_steps < args.steps:
        p.error(f"--steps ({args.steps}) must exceed --warmup-steps ({args.warmup_steps})")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("reference.py: CUDA is not available; use --device cpu --no-compile to test on a CPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    # bf16 autocast on CUDA; on the CPU the reference runs in fp32 (autocast off).
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda)

    model = GPT(args.layers, args.heads, args.width, args.context, args.vocab)
    if args.init:
        load_hf(model, args.init)
        log(f"initialised from {args.init}")
    else:
        model.init_weights(torch.Generator().manual_seed(args.seed))
    if args.init_out:
        save_hf(model, args.init_out)
        log(f"wrote the initial weights to {args.init_out}")
    model.to(device)

    tokens, paths = load_tokens(args.data, args.vocab)
    b, t = args.micro_batch, args.seq_len
    if len(tokens) < t + 1:
        sys.exit(f"reference.py: {len(tokens)} tokens in {paths} cannot fill one window of {t + 1}")
    window = torch.arange(t + 1)
    batch_rng = torch.Generator().manual_seed(args.seed)

    def batch(offsets):
        rows = tokens[offsets[:, None] + window].long()
        if cuda:
            rows = rows.pin_memory()
        rows = rows.to(device, non_blocking=True)
        return rows[:, :-1], rows[:, 1:]

    if args.parity:
        x, y = batch(torch.zeros(b, dtype=torch.long))
        with autocast:
            loss = model(x, y)
        loss.backward()
        grad_norm = torch.sqrt(sum(p.grad.double().square().sum() for p in model.parameters()))
        print(json.dumps({"loss": loss.item(), "gradNorm": grad_norm.item()}))
        return 0

    params = list(model.parameters())
    optimizer = torch.optim.AdamW(
        model.optimizer_groups(args.weight_decay),
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=cuda,
    )
    step_model = model if args.no_compile else torch.compile(model)

    tokens_per_step = b * t
    timed, loss_value = [], float("nan")
    for step in range(1, args.steps + 1):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        x, y = batch(torch.randint(0, len(tokens) - t, (b,), generator=batch_rng))
        with autocast:
            loss = step_model(x, y)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            sys.exit(f"reference.py: loss is {loss_value} at step {step}")
        tps = tokens_per_step / seconds
        if step > args.warmup_steps:
            timed.append(tps)
        log(
            f"step {step}/{args.steps} loss {loss_value:.4f} grad_norm {grad_norm.item():.3f} "
            f"{seconds * 1e3:.1f} ms {tps:.0f} tokens/s{'' if step > args.warmup_steps else ' (warm-up)'}"
        )

    mean_tps = sum(timed) / len(timed)
    mfu = mean_tps * flops_per_token(args.layers, args.width, args.vocab, t) / (args.peak_tflops * 1e12)
    print(
        json.dumps(
            {
                "tokensPerSecond": mean_tps,
                "mfu": mfu,
                "peakMemoryBytes": torch.cuda.max_memory_allocated(device) if cuda else None,
                # What the caching allocator held at most (allocated plus its cache).
                "peakReservedBytes": torch.cuda.max_memory_reserved(device) if cuda else None,
                "steps": args.steps,
                "timedSteps": len(timed),
                "finalLoss": loss_value,
                "compile": not args.no_compile,
                "device": torch.cuda.get_device_name(device) if cuda else "cpu",
                "torch": torch.__version__,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
