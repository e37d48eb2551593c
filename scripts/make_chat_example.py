#!/usr/bin/env python3
"""Writes examples/data/chat-qa.jsonl: 120 synthetic question/answer conversations with fixed
answers (chat JSONL: {"messages": [{"role", "content"}, ...]}), the data of
examples/chat-finetune.yaml. Deterministic: the same file every time."""

import json
import pathlib

THINGS = ["king", "house", "lord", "night", "crown", "sword", "river", "tower",
          "horse", "field", "storm", "bell"]
COLOURS = ["red", "blue", "green", "white", "black", "gold"]

out = pathlib.Path(__file__).resolve().parent.parent / "examples/data/chat-qa.jsonl"
lines = []
for i in range(120):
    thing = THINGS[i % len(THINGS)]
    colour = COLOURS[(i * 7 + i // len(THINGS)) % len(COLOURS)]
    messages = [
        {"role": "user", "content": f"What colour is the {thing} number {i}?"},
        {"role": "assistant", "content": f"The {thing} number {i} is {colour}."},
    ]
    if i % 4 == 0:
        messages.insert(0, {"role": "system", "content": "Answer in one short sentence."})
    lines.append(json.dumps({"messages": messages}))
out.write_text("\n".join(lines) + "\n")
print(f"wrote {len(lines)} conversations to {out}")
