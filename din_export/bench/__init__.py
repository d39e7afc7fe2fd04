"""`din-export bench`: torch, the ONNX variants and DeepCTR-Torch on the same weights, measured fairly.

    prepare MovieLens-100K and Taobao -> train ours and DeepCTR-Torch's DIN (alternating epochs)
      -> export the Taobao run: plain, optimised, optimised int8 -> engines on the same weights
      -> latency, throughput, candidates, load, size, din-score memory -> table, JSON, PNG

Fairness (docs/din-reference.md, "Benchmarking fairly"): every engine runs in this one process, warmed
up, in alternating rounds (the order rotates each round), and the figures are medians and ratios of
medians; malloc's mmap and trim thresholds are pinned for this process and for din-score's. The
machine's load average is recorded at the start and the end: on a shared machine it moves everything.
docs/bench.md holds the results and the exact commands.

Modules: `plan` (what a run measures), `timing` (alternating rounds, malloc), `data` (datasets and
inputs), `peers` (the DeepCTR-Torch adapter), `training` (training speed and quality), `exports` (the
exported variants, Scorer.load), `engines` (every engine on the same weights and their workloads),
`torch_compile`, `flops` (FLOPs per row, the CPU's peak), `candidates` (1 user x N candidates),
`memory` (din-score's peak RSS), `report` (targets, Markdown, chart), `run` (the whole run). The
command is `din_export.cli.bench`.
"""
