"""How tests/data/golden-v1.safetensors was made. Never regenerate it for format v1:
its job is to prove that v1 files written by an old m2kd keep loading."""

from m2kd.runtime.bundle import save_bundle
from m2kd.runtime.engine import StepConfig, run_step
from m2kd.runtime.m2kd import M2KD
from m2kd.trainer.datasets import load_digits_dataset
from m2kd.trainer.protocol import Protocol, step_data

if __name__ == "__main__":
    ds = load_digits_dataset(seed=0)
    protocol = Protocol(2, 2, list(range(10)))
    head = {c: i for i, c in enumerate(protocol.order)}
    bundle = None
    for classes in protocol.steps()[:2]:
        data = step_data(ds.train_images, ds.train_labels, classes, head)
        bundle, _ = run_step(bundle, data, [str(c) for c in classes], M2KD(),
                             StepConfig(epochs=1, lr=0.5, device="cpu", progress=False),
                             arch="resnet_small", input_spec=ds.input_spec)
    print(save_bundle(bundle, "tests/data/golden-v1.safetensors"))
