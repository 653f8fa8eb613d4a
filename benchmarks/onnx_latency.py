"""Latency (batch 1) and throughput (batch 64) of the ways to run step K of a bundle,
measured side by side in one process, plus file sizes.

Compared: `Runtime.scorer(K)` (what `Runtime.predict` and `m2kd serve` run: rebuilt
once, BatchNorm folded, cached) with the head, with the one-pass statistics classifiers
(pseudo, and the default stats-base: pseudo + base FeCAM) and with stats (pseudo + own
FeCAM: K forward passes), against a plain
torch model of the same architecture (random weights, BatchNorm folded, channels-last
on the CPU like the runtime; also shown in NCHW); the per-step
and all-steps ONNX graphs against that plain model exported the same way.
Usage: python benchmarks/onnx_latency.py [--bundle B] [--arch resnet32] [--repeats 50]
Without --bundle it builds a 3-step bundle of random data (cost, not accuracy), and
times `stats-base` also on the same bundle built with last-stage statistics only.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from m2kd.runtime.fold_batchnorm import fold_batchnorm
from m2kd.export.onnx_export import OPSET, all_steps_graph_bytes, step_graph_bytes
from m2kd.runtime.api import Runtime
from m2kd.runtime.backbones import create_backbone
from m2kd.runtime.bundle import InputSpec, load_bundle, save_bundle
from m2kd.runtime.engine import StepConfig, StepData, run_step
from m2kd.runtime.classifier import StepScorer, classifier_config
from m2kd.runtime.devices import fast_memory_format
from m2kd.runtime.m2kd import M2KD
from m2kd.runtime.reconstruct import model_of_step


def synthetic_bundle(arch: str, steps: int, stats_features: str = StepConfig.stats_features):
    spec = InputSpec(3, 32, 32, (0.5,) * 3, (0.25,) * 3)
    bundle, g = None, torch.Generator().manual_seed(0)
    for k in range(steps):
        data = StepData(torch.randn(64, 3, 32, 32, generator=g), torch.arange(64) % 10 + 10 * k)
        cfg = StepConfig(epochs=1, lr=0.1, device="cpu", progress=False,
                         stats_features=stats_features)
        bundle, _ = run_step(bundle, data, [f"c{k}_{i}" for i in range(10)], M2KD(), cfg,
                             arch=arch, input_spec=spec)
    return bundle


def plain_graph(bundle) -> bytes:
    import io

    model = create_backbone(bundle.arch, len(bundle.classes), bundle.input_spec.channels).eval()
    model = fold_batchnorm(model)

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            logits = self.m(x).logits
            return logits, torch.softmax(logits, 1)

    s = bundle.input_spec
    buf = io.BytesIO()
    # the same exporter settings as export/onnx_export.py
    torch.onnx.export(Plain(), (torch.zeros(2, s.channels, s.height, s.width),), buf,
                      input_names=["input"], output_names=["logits", "probabilities"],
                      dynamic_axes={"input": {0: "batch"}}, opset_version=OPSET, dynamo=False)
    return buf.getvalue()


def timed(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bundle")
    p.add_argument("--arch", default="resnet32")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--onnx-classifier", default="stats-base",
                   help="the classifier baked into the ONNX graphs (stats-base: the default, "
                        "one pass)")
    args = p.parse_args()
    import onnxruntime as ort

    torch.set_num_threads(2)
    bundle = load_bundle(args.bundle) if args.bundle else synthetic_bundle(args.arch, 3)
    k = bundle.num_steps
    s = bundle.input_spec
    exported = copy.copy(bundle)
    exported.classifier = classifier_config(args.onnx_classifier)
    graphs = {"per-step onnx": step_graph_bytes(exported, k),
              "all-steps onnx": all_steps_graph_bytes(exported),
              "plain onnx": plain_graph(bundle)}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    sessions = {n: ort.InferenceSession(d, options, providers=["CPUExecutionProvider"])
                for n, d in graphs.items()}
    # The plain model as the runtime serves one: BatchNorm folded, in the CPU's fastest
    # memory format (channels-last); the NCHW row shows what that layout is worth.
    plain = fold_batchnorm(model_of_step(bundle, k)).eval()
    layout = fast_memory_format(torch.device("cpu"))
    torch_models = {"plain torch": StepScorer([copy.deepcopy(plain)], None, layout)
                    .to(memory_format=layout).eval(),
                    "plain torch NCHW": plain}
    for kind in ("head", "pseudo", "stats-base", "stats"):
        variant = copy.copy(bundle)
        variant.classifier = classifier_config(kind)
        torch_models[f"runtime {kind}"] = Runtime(variant, device="cpu").scorer(k)
    if not args.bundle:  # the same training, statistics of the last stage only (64-d)
        last = synthetic_bundle(args.arch, 3, "last")
        torch_models["stats-base, last"] = Runtime(last, device="cpu").scorer(k)
    rows = {}
    for batch in (1, 64):
        x = torch.randn(batch, s.channels, s.height, s.width)
        feed = {"input": x.numpy()}
        with torch.no_grad():
            for name, model in torch_models.items():
                rows.setdefault(name, []).append(timed(lambda x=x, m=model: m(x), args.repeats))
        for name, sess in sessions.items():
            f = dict(feed, step=np.array([k])) if name == "all-steps onnx" else feed
            rows.setdefault(name, []).append(
                timed(lambda sess=sess, f=f: sess.run(["logits"], f), args.repeats))
    print(f"{bundle.arch}, input {s.channels}x{s.height}x{s.width}, step {k} of {k}, CPU "
          f"({torch.get_num_threads()} threads), median of {args.repeats}")
    print(f"{'':17}{'batch 1 ms':>11}{'batch 64 img/s':>16}{'vs plain (b1, b64)':>22}")
    for name, (t1, t64) in rows.items():
        plain = rows["plain onnx" if "onnx" in name else "plain torch"]
        print(f"{name:17}{1000 * t1:>11.3f}{64 / t64:>16.0f}"
              f"{t1 / plain[0]:>12.2f}x{t64 / plain[1]:>9.2f}x")
    print("torch rows against plain torch, onnx rows (classifier "
          f"{args.onnx_classifier}) against plain onnx; runtime stats runs the {k} "
          "snapshots it reads, the others one")
    with tempfile.TemporaryDirectory() as tmp:
        save_bundle(bundle, f"{tmp}/b.safetensors")
        bundle_bytes = os.path.getsize(f"{tmp}/b.safetensors")
    print(f"sizes: per-step {len(graphs['per-step onnx'])} B, all-steps "
          f"{len(graphs['all-steps onnx'])} B, {k} per-step files "
          f"{sum(len(step_graph_bytes(bundle, j)) for j in range(1, k + 1))} B, "
          f"bundle {bundle_bytes} B")


if __name__ == "__main__":
    main()
