"""How tests/data/golden-v1.safetensors and golden-v2.safetensors were made. Never
regenerate a released version's file: its job is to prove that files written by an
old m2kd keep loading. golden-v1 was written by m2kd 0.1.0 (format v1) with
StepConfig(epochs=1, lr=0.5) under the paper's reduction; golden-v2 by this script:

    python tests/data/make_golden.py v2
"""

import sys

from m2kd.runtime.bundle import save_bundle
from m2kd.runtime.engine import StepConfig, run_step
from m2kd.runtime.m2kd import M2KD
from m2kd.trainer.datasets import load_digits_dataset
from m2kd.trainer.protocol import Protocol, step_data

if __name__ == "__main__":
    version = sys.argv[1] if len(sys.argv) > 1 else "v2"
    ds = load_digits_dataset(seed=0)
    protocol = Protocol(2, 2, list(range(10)))
    head = {c: i for i, c in enumerate(protocol.order)}
    bundle = None
    for classes in protocol.steps()[:2]:
        data = step_data(ds.train_images, ds.train_labels, classes, head)
        bundle, _ = run_step(bundle, data, [str(c) for c in classes], M2KD(),
                             StepConfig(epochs=1, device="cpu", progress=False),
                             arch="resnet_small", input_spec=ds.input_spec)
    print(save_bundle(bundle, f"tests/data/golden-{version}.safetensors"))
