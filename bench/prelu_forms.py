"""PReLU over (N, H) in onnxruntime's CPU provider, three ways to write it in ONNX (docs/bench.md,
"PReLU as Max"):

- `where`: Greater, Mul, Where, what torch.where(x > 0, x, alpha x) (model.PReLU) exports as;
- `prelu`: ONNX's own PRelu op with a per-channel slope;
- `max`: Mul, Max, what optimize.MaxPReLU exports as (max(x, alpha x), alpha <= 1 after `fold_prelu`).

    python bench/prelu_forms.py [--rows 25600] [--widths 16,32,80] [--threads 1] [--rounds 50] [--json OUT]

25,600 rows are the positions of a B=256, L=100 batch. Each form is its own one-node-chain graph fed the
same float32 input, timed in alternating rounds (din_export.bench.timing.alternate); p50 per form and
its ratio to `where`. The three outputs are checked equal first.
"""

from __future__ import annotations

import argparse
import datetime
import os

import numpy as np
import onnxruntime as ort
from machine import cpu_model  # bench/, on the path when this script runs
from onnx import TensorProto, helper

from din_export.bench.timing import alternate, quantiles
from din_export.schema import write_json_atomic

FORMS = ("where", "prelu", "max")


def graph(form: str, width: int, alpha: np.ndarray) -> bytes:
    slope = helper.make_tensor("alpha", TensorProto.FLOAT, [width], alpha)
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    nodes = {
        "where": [helper.make_node("Greater", ["x", "zero"], ["positive"]),
                  helper.make_node("Mul", ["alpha", "x"], ["scaled"]),
                  helper.make_node("Where", ["positive", "x", "scaled"], ["y"])],
        "prelu": [helper.make_node("PRelu", ["x", "alpha"], ["y"])],
        "max": [helper.make_node("Mul", ["alpha", "x"], ["scaled"]), helper.make_node("Max", ["x", "scaled"], ["y"])],
    }[form]
    body = helper.make_graph(nodes, form, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])],
                             [slope, zero] if form == "where" else [slope])
    return helper.make_model(body, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=25_600)
    parser.add_argument("--widths", default="16,32,80")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    rng = np.random.default_rng(0)
    report = {"cpu": cpu_model(), "threads": args.threads, "rows": args.rows, "rounds": args.rounds,
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "load_before": os.getloadavg(), "widths": {}}
    for width in (int(w) for w in args.widths.split(",")):
        x = rng.standard_normal((args.rows, width), dtype=np.float32)
        alpha = rng.uniform(0.0, 1.0, width).astype(np.float32)
        sessions = {f: ort.InferenceSession(graph(f, width, alpha), options, providers=["CPUExecutionProvider"])
                    for f in FORMS}
        outputs = {f: s.run(None, {"x": x})[0] for f, s in sessions.items()}
        for f in FORMS[1:]:
            np.testing.assert_array_equal(outputs[f], outputs["where"], err_msg=f)
        feeds = {"x": x}
        times = alternate({f: (lambda s=s, feeds=feeds: s.run(None, feeds)) for f, s in sessions.items()},
                          args.rounds)
        p50 = {f: quantiles(t)["p50_ms"] for f, t in times.items()}
        report["widths"][width] = {f: {"p50_ms": p50[f], "vs_where": p50["where"] / p50[f]} for f in FORMS}
        print(f"{args.rows} x {width}: " + ", ".join(f"{f} {p50[f]:.3f} ms ({p50['where'] / p50[f]:.2f}x)"
                                                      for f in FORMS))
    report["load_after"] = os.getloadavg()
    if args.json:
        write_json_atomic(args.json, report)


if __name__ == "__main__":
    main()
