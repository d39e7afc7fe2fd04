"""What one bench run measures (`Plan`): rounds, history lengths, batch sizes, data sizes, and the
full and `--quick` plans."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Plan:
    """What one bench run measures; `quick` shrinks rounds and data so it finishes in about a minute."""

    quick: bool
    threads: tuple[int, ...]
    device: str
    epochs: int
    train_rows: int | None  # rows of each training split used (None: all)
    lengths: tuple[int, ...] = (20, 100, 500)
    batch: int = 256
    latency_rounds: int = 300
    throughput_rounds: int = 10
    candidates: int = 100
    candidate_rounds: int = 50
    load_rounds: int = 10
    rss_rows: tuple[int, ...] = (100_000, 1_000_000)
    load_model_mb: float | None = 10.0  # also time Scorer.load on the optimised model padded to this size
    train_batch: int = 256
    lr: float = 1e-3
    # fp32 against fp16 (torch and ONNX) at these batch sizes, history precision_seq; by default on a GPU only
    precision_batches: tuple[int, ...] = ()
    precision_seq: int = 100
    precision_rounds: int = 20
    # torch.compile modes benched as engines (torch_compile); none unless asked: compiling takes minutes
    compile_modes: tuple[str, ...] = ()
    compile_backend: str = "inductor"
    # (candidates N, history L) of the candidate-ranking workload against torch.compile (torch_compile)
    candidate_shapes: tuple[tuple[int, int], ...] = ()


def make_plan(quick: bool, threads: tuple[int, ...], device: str, epochs: int | None,
              compile_modes: tuple[str, ...] | None = None, lengths: tuple[int, ...] | None = None) -> Plan:
    """compile_modes None: torch.compile's default mode in the full bench, none in --quick."""
    gpu = device == "cuda"
    if quick:
        plan = Plan(quick=True, threads=threads, device=device, epochs=epochs or 1, train_rows=1000,
                    lengths=(20, 100), latency_rounds=30, throughput_rounds=3, candidate_rounds=5, load_rounds=3,
                    rss_rows=(5_000, 20_000), load_model_mb=None, precision_batches=(1, 256) if gpu else (),
                    precision_rounds=5, compile_modes=compile_modes or (), candidate_shapes=((100, 50),))
    else:
        plan = Plan(quick=False, threads=threads, device=device, epochs=epochs or 2, train_rows=None,
                    precision_batches=(1, 256, 1024, 4096) if gpu else (),
                    compile_modes=("default",) if compile_modes is None else compile_modes,
                    candidate_shapes=((100, 50), (100, 200), (1000, 50), (1000, 200)))
    return replace(plan, lengths=lengths) if lengths else plan
