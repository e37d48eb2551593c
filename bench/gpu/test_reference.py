#!/usr/bin/env python3
"""CPU tests of reference.py on a tiny model (seconds; needs torch, no GPU):

    python3 bench/gpu/test_reference.py
"""

import contextlib
import io
import json
import math
import os
import random
import struct
import sys
import tempfile
import unittest

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as ref  # noqa: E402

TINY = ["--layers", "2", "--heads", "2", "--width", "32", "--context", "16", "--vocab", "300"]


def tiny_model(seed=1):
    model = ref.GPT(layers=2, heads=2, width=32, context=16, vocab=300)
    model.init_weights(torch.Generator().manual_seed(seed))
    return model


def run_main(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert ref.main(argv) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])


class SafetensorsTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "model.safetensors")

    def tearDown(self):
        self.dir.cleanup()

    def test_round_trip_is_exact(self):
        model = tiny_model()
        with torch.no_grad():  # make every value distinct so a wrong transpose or offset shows
            for i, p in enumerate(model.parameters()):
                p.add_(torch.arange(p.numel()).reshape(p.shape) * 1e-3 + i)
            model.wte.weight[model.vocab :].zero_()  # padded rows are not exported
        ref.save_hf(model, self.path)
        loaded = ref.GPT(2, 2, 32, 16, 300)
        ref.load_hf(loaded, self.path)
        for (name, a), (_, b) in zip(model.named_parameters(), loaded.named_parameters()):
            self.assertTrue(torch.equal(a, b), name)

    def test_hugging_face_names_shapes_and_conv1d_orientation(self):
        model = tiny_model()
        ref.save_hf(model, self.path)
        with open(self.path, "rb") as f:
            raw = f.read()
        (n,) = struct.unpack_from("<Q", raw, 0)
        self.assertEqual((8 + n) % 8, 0)
        header = json.loads(raw[8 : 8 + n])
        self.assertEqual(header["__metadata__"], {"format": "pt"})
        self.assertEqual(header["wte.weight"]["shape"], [300, 32])  # not the padded 384
        self.assertEqual(header["wpe.weight"]["shape"], [16, 32])
        self.assertEqual(header["h.1.attn.c_attn.weight"]["shape"], [32, 96])
        self.assertEqual(header["h.1.attn.c_proj.weight"]["shape"], [32, 32])
        self.assertEqual(header["h.1.mlp.c_fc.weight"]["shape"], [32, 128])
        self.assertEqual(header["h.1.mlp.c_proj.weight"]["shape"], [128, 32])
        self.assertEqual(header["h.0.mlp.c_fc.bias"]["shape"], [128])
        self.assertEqual(header["ln_f.bias"]["shape"], [32])
        self.assertEqual(len([k for k in header if k != "__metadata__"]), 2 + 2 * 12 + 2)
        self.assertTrue(all(v["dtype"] == "F32" for k, v in header.items() if k != "__metadata__"))
        tensors = ref.read_safetensors(self.path)
        # HF [in][out] is the torch Linear weight [out][in].
        hf, ours = tensors["h.1.attn.c_attn.weight"], model.h[1].qkv.weight.detach()
        for i, o in [(0, 0), (3, 17), (31, 95)]:
            self.assertEqual(hf[i, o].item(), ours[o, i].item())
        # Offsets tile the data section exactly.
        spans = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
        self.assertEqual(spans[0][0], 0)
        for (_, end), (begin, _) in zip(spans, spans[1:]):
            self.assertEqual(end, begin)
        self.assertEqual(spans[-1][1], len(raw) - 8 - n)

    def test_load_zeroes_padded_rows_accepts_transformer_prefix_and_bf16(self):
        model = tiny_model()
        tensors = {}
        for name, p, transposed in ref.hf_tensors(model):
            t = p.detach()[: model.vocab] if name == "wte.weight" else p.detach()
            tensors["transformer." + name] = (t.t() if transposed else t).contiguous()
        tensors["lm_head.weight"] = torch.ones(300, 32)  # ignored: the head is tied to wte
        ref.write_safetensors(self.path, tensors)
        # Re-encode as BF16 by hand to exercise that branch of the reader.
        with open(self.path, "rb") as f:
            raw = f.read()
        (n,) = struct.unpack_from("<Q", raw, 0)
        header = json.loads(raw[8 : 8 + n])
        data, new_header, offset = bytearray(), {}, 0
        for name, info in header.items():
            begin, end = info["data_offsets"]
            f32 = torch.frombuffer(bytearray(raw[8 + n + begin : 8 + n + end]), dtype=torch.float32)
            b = f32.to(torch.bfloat16).view(torch.int16)
            chunk = struct.pack(f"<{b.numel()}h", *b.tolist())
            new_header[name] = {"dtype": "BF16", "shape": info["shape"], "data_offsets": [offset, offset + len(chunk)]}
            data += chunk
            offset += len(chunk)
        head = json.dumps(new_header).encode()
        with open(self.path, "wb") as f:
            f.write(struct.pack("<Q", len(head)) + head + data)
        loaded = ref.GPT(2, 2, 32, 16, 300)
        with torch.no_grad():
            loaded.wte.weight.fill_(5.0)
        ref.load_hf(loaded, self.path)
        self.assertTrue(torch.all(loaded.wte.weight[300:] == 0))
        want = model.h[0].fc.weight.detach().to(torch.bfloat16).float()
        self.assertTrue(torch.equal(loaded.h[0].fc.weight, want))

    def test_wrong_shape_is_refused_naming_the_tensor(self):
        ref.save_hf(tiny_model(), self.path)
        wider = ref.GPT(2, 2, 64, 16, 300)
        with self.assertRaisesRegex(ValueError, "wte.weight"):
            ref.load_hf(wider, self.path)
        deeper = ref.GPT(3, 2, 32, 16, 300)
        with self.assertRaisesRegex(ValueError, "h.2.ln_1.weight"):
            ref.load_hf(deeper, self.path)


class TrainingTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.dir.cleanup()

    def shard(self, tokens, name="train-000000.bin", vocab=300):
        path = os.path.join(self.dir.name, name)
        ref.write_shard(path, tokens, vocab)
        return path

    def test_shard_round_trip_u16_and_u32(self):
        path = self.shard([0, 1, 299, 65535, 7], vocab=70000)
        tokens, vocab = ref.read_shard(path)
        self.assertEqual(tokens.tolist(), [0, 1, 299, 65535, 7])
        self.assertEqual(vocab, 70000)
        with open(path, "rb") as f:
            self.assertEqual(len(f.read()), 64 + 5 * 2)
        path = self.shard([70000, 3], vocab=80000)
        self.assertEqual(ref.read_shard(path)[0].tolist(), [70000, 3])

    def test_parity_loss_is_about_ln_vocab_and_init_out_reloads_the_same(self):
        rng = random.Random(3)
        data = self.shard([rng.randrange(300) for _ in range(17)])
        init = os.path.join(self.dir.name, "init.safetensors")
        argv = TINY + ["--device", "cpu", "--data", data, "--micro-batch", "4", "--parity"]
        first = run_main(argv + ["--init-out", init])
        self.assertTrue(math.isfinite(first["loss"]) and math.isfinite(first["gradNorm"]))
        self.assertGreater(first["gradNorm"], 0)
        self.assertAlmostEqual(first["loss"], math.log(300), delta=0.1)
        again = run_main(argv + ["--init", init])
        self.assertEqual(again, first)

    def test_training_lowers_the_loss_and_reports_throughput(self):
        data = self.shard([i % 7 for i in range(400)])
        argv = TINY + ["--device", "cpu", "--no-compile", "--data", data, "--steps", "40",
                       "--micro-batch", "4", "--lr", "3e-3"]
        out = run_main(argv)
        self.assertEqual(out["steps"], 40)
        self.assertEqual(out["timedSteps"], 38)
        self.assertIsNone(out["peakMemoryBytes"])
        self.assertGreater(out["tokensPerSecond"], 0)
        expected = out["tokensPerSecond"] * ref.flops_per_token(2, 32, 300, 16) / 989.4e12
        self.assertAlmostEqual(out["mfu"], expected)
        self.assertLess(out["finalLoss"], math.log(300) - 2.0)

    def test_flops_per_token_is_the_trainers(self):
        # trainer/src/config.rs flops_formula_matches_hand_count: ModelConfig::new(1, 1, 2, 4, 3)
        # (layers 1, heads 1, width 2, context 4, vocab 3, padded to 128) gives 600 at T = 4:
        # the unpadded vocabulary counts.
        self.assertEqual(ref.flops_per_token(layers=1, width=2, vocab=3, seq_len=4), 600.0)


if __name__ == "__main__":
    unittest.main()
