"""`m2kd inspect`: what a bundle holds and what it costs."""

from __future__ import annotations

from pathlib import Path

from .bundle import PARTS, bytes_by_part, load_bundle, snapshot_bytes
from .classifier import describe_classifier
from .reconstruct import check_probes


def bundle_report(path: Path) -> dict:
    bundle = load_bundle(path)
    sizes = bytes_by_part(bundle)
    layers = []
    for name, mask in bundle.masks.items():
        n = mask.numel()
        owned = [int((mask == k).sum()) / n for k in range(1, bundle.num_steps + 1)]
        layers.append({"name": name, "shape": list(mask.shape), "params": n,
                       "free": int((mask == 0).sum()) / n, "owned_by_step": owned})
    total_params = sum(layer["params"] for layer in layers)
    failing = [c for c in check_probes(bundle) if not c.ok]
    return {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "arch": bundle.arch,
        "input": f"{bundle.input_spec.channels}x{bundle.input_spec.height}x"
                 f"{bundle.input_spec.width}",
        "method": bundle.method.get("name"),
        "checksum": bundle.checksum(),
        "classifier": bundle.classifier,
        # inspect shows a broken bundle, and says so; `verify` exits non-zero on it
        "verified": not failing,
        "verification": "ok" if not failing else
        f"FAILS: step {failing[0].step} probe max abs diff {failing[0].max_abs_diff:.3g} > 1e-5",
        "steps": [{"step": k, "classes": rec.classes}
                  for k, rec in enumerate(bundle.steps, start=1)],
        "bytes_by_part": sizes,
        # what the bundle adds to the shared weights: what M2KD's Table 2 counts
        "extra_bytes": sum(n for part, n in sizes.items() if part != "weights"),
        "mask_bits": bundle.stored_mask_bits,
        "mask_coding": bundle.stored_mask_coding,
        "step_dtype": bundle.stored_step_dtype,
        "stats_features": bundle.statistics_features,
        "every_snapshot_bytes": snapshot_bytes(bundle),
        "free_fraction": sum(layer["free"] * layer["params"] for layer in layers) / total_params,
        "layers": layers,
    }


PAPER_EXTRA_MB = 0.84


def _mb(n: int) -> str:
    return f"{n / 1e6:8.3f} MB"


def format_report(r: dict) -> str:
    lines = [f"{r['path']}: {r['arch']}, input {r['input']}, method {r['method']}, "
             f"{len(r['steps'])} steps", f"checksum {r['checksum']}",
             f"classifier: {describe_classifier(r['classifier'])}",
             f"verification: {r['verification']}", "", "step  classes"]
    lines += [f"{s['step']:>4}  {', '.join(s['classes'])}" for s in r["steps"]]
    lines += ["", "bytes by part"]
    lines += [f"  {part:<10}{_mb(r['bytes_by_part'][part])}" for part in PARTS]
    lines += [f"  {'file':<10}{_mb(r['file_bytes'])}",
              f"  beyond the shared weights {_mb(r['extra_bytes'])} (masks at {r['mask_bits']} "
              f"bits, {r['mask_coding']}; step parts {r['step_dtype']})",
              f"  statistics of {r.get('stats_features', 'last')} features",
              f"  without statistics {_mb(r['extra_bytes'] - r['bytes_by_part']['statistics'])} "
              f"(M2KD Table 2: {PAPER_EXTRA_MB} MB for ResNet-32, 10 CIFAR-100 steps)",
              f"  every step as its own fp32 model would take {_mb(r['every_snapshot_bytes'])} "
              f"({r['every_snapshot_bytes'] / r['file_bytes']:.1f}x this file)", "",
              f"free weights: {100 * r['free_fraction']:.1f}% overall", "",
              f"{'layer':<28}{'params':>8}{'free':>7}  owned by step 1..{len(r['steps'])} (%)"]
    for layer in r["layers"]:
        owned = " ".join(f"{100 * f:4.1f}" for f in layer["owned_by_step"])
        lines.append(f"{layer['name']:<28}{layer['params']:>8}{100 * layer['free']:6.1f}%  "
                     f"{owned}")
    return "\n".join(lines)
