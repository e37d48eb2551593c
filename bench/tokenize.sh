#!/usr/bin/env bash
# Tokenization throughput of `tessera data prepare` (what a run does to its text or JSONL
# before the first step): tokens/s for plain text with GPT-2 BPE and with a Hugging Face
# tokenizer.json, and for chat JSONL rendered with the model's chat template, masked and
# packed. Both cores are used (rayon). Wall time includes reading and writing the shards.
# Usage: bash bench/tokenize.sh [CORPUS] [CONVERSATIONS]
# BIN_DIR=target/debug uses already built binaries instead of building release ones.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
corpus=$(realpath "${1:-../shared/data/tinyshakespeare.txt}")
conversations=${2:-20000}
if [ -n "${BIN_DIR:-}" ]; then
  tessera=$(realpath "$BIN_DIR/tessera")
  cd "$(dirname "$0")/.."
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
else
  bench_setup
  tessera=./target/release/tessera
fi
model=trainer/tests/fixtures/hf/llama-gqa   # a 384-token BPE tokenizer and the Llama 3 template

# A chat JSONL: question/answer conversations, some with a system prompt.
python3 - "$work/chat.jsonl" "$conversations" <<'PY'
import json, sys
things = ["king", "house", "lord", "night", "crown", "sword", "river", "tower"]
colours = ["red", "blue", "green", "white", "black", "gold"]
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        t, c = things[i % len(things)], colours[(i * 7) % len(colours)]
        messages = [{"role": "user", "content": f"What colour is the {t} number {i}? Say it plainly."},
                    {"role": "assistant", "content": f"The {t} number {i} is {c}, as it always was."}]
        if i % 4 == 0:
            messages.insert(0, {"role": "system", "content": "Answer in one short sentence."})
        f.write(json.dumps({"messages": messages}) + "\n")
PY

# id, label, then the `tessera data prepare` arguments; prints tokens, seconds and tokens/s.
measure() {
  local id=$1 label=$2
  shift 2
  local start end tokens
  start=$(date +%s.%N)
  "$tessera" data prepare --val-fraction 0 --out "$work/$id" "$@" > "$work/$id.log"
  end=$(date +%s.%N)
  tokens=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(next(v for k, v in d.items() if k.lower().replace('_', '') == 'traintokens'))" "$work/$id/dataset.json")
  python3 - "$label" "$tokens" "$start" "$end" <<'PY'
import sys
label, tokens, start, end = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
seconds = end - start
print(f"| {label} | {tokens} | {seconds:.2f} | {tokens / seconds:,.0f} |")
PY
}

echo "| input | tokens | seconds | tokens/s |"
echo "|---|---|---|---|"
measure gpt2 "text, GPT-2 BPE" --tokenizer gpt2 "$corpus"
measure hf "text, tokenizer.json" --tokenizer "$model" "$corpus"
measure chat "chat JSONL, $conversations conversations: template, mask, pack" \
  --tokenizer "$model" --format chat --context 127 "$work/chat.jsonl"
