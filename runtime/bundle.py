"""The bundle (format v2; v1 still loads): one safetensors file holding every step of an
incremental model, and the class statistics the default classifier is built from.

This is the only module that knows tensor names and metadata keys; the spec is
docs/bundle-format.md. Loading reads safetensors only (no code execution) and checks
every key, shape, dtype, mask range and the checksum before anything is used.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from .atomic import atomic_write_bytes
from .backbones import BACKBONES, batchnorm_state, create_backbone, masked_parameter_names
from .class_stats import STATS_FEATURES, ClassStats, packed_size, statistics_dim
from .errors import BundleError, BundleFormatError, BundleIntegrityError, BundleVersionError
from .mask_packing import MASK_CODINGS, decode_mask, encode_mask, mask_bits_for
from .probe_inputs import PROBE_SEED, seeded_probe_input
from .step_precision import STEP_DTYPE_NAME, holds_16_bit_values, narrowed, widened

FORMAT_NAME = "m2kd-bundle"
FORMAT_VERSION = "2"
SUPPORTED_VERSIONS = ("1", "2")  # v1: no class statistics, the head classifies
MASK_DTYPE = torch.uint8  # owner step ids; 0 = free, so at most 255 steps
MAX_STEPS = torch.iinfo(MASK_DTYPE).max
PROBE_BATCH = 2
METADATA_KEYS = ("format", "format_version", "arch", "input_spec", "classes", "method",
                 "checksum", "created_by")
V2_METADATA_KEYS = ("classifier",)
# Feature spaces class statistics are kept in: "base" = snapshot 1 (every class),
# "own" = the snapshot of the step that learned the class.
STATS_SPACES = ("base", "own")
STATS_PARTS = ("count", "mean", "cov")
HEAD_CLASSIFIER = {"kind": "head"}


@dataclass(frozen=True)
class InputSpec:
    """What the model eats: a CxHxW float tensor normalised per channel by (x - mean) / std
    from pixel values scaled to [0, 1]."""

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_json(self) -> str:
        return json.dumps({"channels": self.channels, "height": self.height, "width": self.width,
                           "mean": list(self.mean), "std": list(self.std)})

    @classmethod
    def from_json(cls, text: str) -> InputSpec:
        d = json.loads(text)
        spec = cls(int(d["channels"]), int(d["height"]), int(d["width"]),
                   tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))
        if len(spec.mean) != spec.channels or len(spec.std) != spec.channels:
            raise BundleFormatError("input_spec: mean and std need one value per channel")
        if min(spec.channels, spec.height, spec.width) < 1 or min(spec.std) <= 0:
            raise BundleFormatError("input_spec: sizes must be >= 1 and std > 0")
        return spec


@dataclass
class StepRecord:
    """Everything that is private to one step."""

    classes: list[str]
    batchnorm: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]  # "weight" (n_seen, feature_dim), "bias" (n_seen,)
    aux_head: dict[str, torch.Tensor]  # "weight" (n_seen, aux_dim), "bias" (n_seen,)
    probe_input: torch.Tensor
    probe_logits: torch.Tensor
    # Statistics of this step's new classes per feature space (v2; empty in v1 bundles).
    stats: dict[str, ClassStats] = field(default_factory=dict)


@dataclass
class Bundle:
    arch: str
    input_spec: InputSpec
    weights: dict[str, torch.Tensor]  # shared conv weights, free entries are zero
    masks: dict[str, torch.Tensor]  # owner step per weight, uint8
    steps: list[StepRecord] = field(default_factory=list)
    method: dict = field(default_factory=dict)
    # How inference classifies (runtime/classifier.py): {"kind": "head"} or a statistics
    # classifier such as {"kind": "fecam", "space": "base", ...}.
    classifier: dict = field(default_factory=lambda: dict(HEAD_CLASSIFIER))
    # On-disk mask form (runtime/mask_packing.py): None = the most compact that fits;
    # a loaded bundle keeps its file's form, so its checksum stays the file's.
    mask_bits: int | None = None
    mask_coding: str | None = None  # mask_packing.MASK_CODINGS (None: "sorted-deflate")
    # Step-private tensors (runtime/step_precision.py): "float16" stores each one at 16 bits
    # where that is lossless; "float32" as is (None: float16).
    step_dtype: str | None = None
    # The features the class statistics describe (runtime/class_stats.py): "stages" or
    # "last"; fixed by the base step. None: "last" (every bundle written before session 17).
    stats_features: str | None = None

    @property
    def statistics_features(self) -> str:
        return self.stats_features or "last"

    @property
    def stored_mask_bits(self) -> int:
        """Bits per owner as this bundle is written: its own form, widened when needed."""
        return max(self.mask_bits or 4, mask_bits_for(self.num_steps))

    @property
    def stored_mask_coding(self) -> str:
        return self.mask_coding or "sorted-deflate"

    @property
    def stored_step_dtype(self) -> str:
        return self.step_dtype or STEP_DTYPE_NAME

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def has_class_statistics(self) -> bool:
        """Every step stores its classes' statistics (format v2 on; v1 bundles do not)."""
        return all("base" in record.stats for record in self.steps)

    @property
    def classes(self) -> list[str]:
        return self.classes_up_to(self.num_steps)

    def classes_up_to(self, step: int) -> list[str]:
        return [c for record in self.steps[:step] for c in record.classes]

    def step_of_class(self) -> list[int]:
        """Step (1-based) that introduced each class, in head order."""
        return [k + 1 for k, record in enumerate(self.steps) for _ in record.classes]

    def checksum(self) -> str:
        tensors, metadata = _to_safetensors(self, checksum="")
        return _checksum(tensors, metadata)


# ---------------------------------------------------------------- tensor names

def _step_prefix(k: int) -> str:
    return f"step.{k}."


def _to_safetensors(bundle: Bundle, checksum: str) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {}
    bits, coding = bundle.stored_mask_bits, bundle.stored_mask_coding
    private = narrowed if bundle.stored_step_dtype == STEP_DTYPE_NAME else (lambda t: t)
    derived_probes = _probes_are_seeded(bundle)
    for name, w in bundle.weights.items():
        tensors[f"backbone.{name}"] = w
        tensors[f"mask.{name}"] = encode_mask(bundle.masks[name], w, bits, coding)
    for k, rec in enumerate(bundle.steps, start=1):
        p = _step_prefix(k)
        for name, t in rec.batchnorm.items():
            tensors[f"{p}bn.{name}"] = private(t)
        for part in ("weight", "bias"):
            tensors[f"{p}head.{part}"] = private(rec.head[part])
            tensors[f"{p}aux_head.{part}"] = private(rec.aux_head[part])
        if not derived_probes:
            tensors[f"{p}probe.input"] = rec.probe_input
        tensors[f"{p}probe.logits"] = rec.probe_logits
        for space, stats in rec.stats.items():
            for part in STATS_PARTS:
                tensors[f"{p}stats.{space}.{part}"] = private(getattr(stats, part))
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    from . import __version__
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "arch": bundle.arch,
        "input_spec": bundle.input_spec.to_json(),
        "classes": json.dumps([rec.classes for rec in bundle.steps]),
        "method": json.dumps(bundle.method, sort_keys=True),
        "created_by": f"m2kd {__version__}",
        "checksum": checksum,
        "classifier": json.dumps(bundle.classifier, sort_keys=True),
    }
    if bits == 4:  # absent = 8, so bundles written before packing keep their checksum
        metadata["mask_bits"] = "4"
    if coding != "raw":  # absent = raw, likewise
        metadata["mask_coding"] = coding
    if bundle.stored_step_dtype == STEP_DTYPE_NAME:  # absent = float32, likewise
        metadata["step_dtype"] = STEP_DTYPE_NAME
    if bundle.statistics_features != "last":  # absent = last, likewise
        metadata["stats_features"] = bundle.statistics_features
    if derived_probes:  # absent: every step stores its probe input
        metadata["probe_seed"] = str(PROBE_SEED)
    return tensors, metadata


def _probes_are_seeded(bundle: Bundle) -> bool:
    """True when every step's probe input is the seeded one, so none needs storing."""
    if not bundle.steps:
        return False
    seeded = make_probe_input(bundle.input_spec)
    return all(torch.equal(rec.probe_input, seeded) for rec in bundle.steps)


def _checksum(tensors: dict[str, torch.Tensor], metadata: dict) -> str:
    """sha256 over sorted (name, dtype, shape, bytes) and the metadata without checksum."""
    h = hashlib.sha256()
    meta = {k: v for k, v in metadata.items() if k not in ("checksum", "created_by")}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------- save

def save_bundle(bundle: Bundle, path: str | os.PathLike) -> str:
    """Validate and write atomically; returns the checksum written."""
    validate(bundle)
    tensors, metadata = _to_safetensors(bundle, checksum="")
    metadata["checksum"] = _checksum(tensors, metadata)
    atomic_write_bytes(path, safetensors_save(tensors, metadata=metadata))
    return metadata["checksum"]


# ---------------------------------------------------------------- load

def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Only the header: cheap, reads no tensor data."""
    with _open(path) as f:
        return _check_header(f.metadata())


def load_bundle(path: str | os.PathLike, check_checksum: bool = True) -> Bundle:
    with _open(path) as f:
        metadata = _check_header(f.metadata())
        try:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as e:  # safetensors raises its own error types on bad data
            raise BundleFormatError(f"{path}: unreadable tensor data ({e})") from None
    bundle = _from_safetensors(tensors, metadata)
    validate(bundle)
    if check_checksum:
        actual = _checksum(tensors, metadata)
        if actual != metadata["checksum"]:
            raise BundleIntegrityError(
                f"{path}: checksum mismatch (file says {metadata['checksum'][:19]}..., "
                f"content is {actual[:19]}...): the file was altered or damaged")
    return bundle


class _open:
    """`safe_open` with every failure turned into a BundleError that names the file."""

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self):
        if not self.path.is_file():
            raise BundleError(f"{self.path}: no such bundle file")
        try:
            self._ctx = safe_open(str(self.path), framework="pt")
            return self._ctx.__enter__()
        except Exception as e:
            raise BundleFormatError(f"{self.path}: not a safetensors bundle ({e})") from None

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _check_header(metadata: dict | None) -> dict[str, str]:
    metadata = metadata or {}
    if metadata.get("format") != FORMAT_NAME:
        raise BundleFormatError(f"not an m2kd bundle (format is {metadata.get('format')!r})")
    version = metadata.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise BundleVersionError(
            f"bundle format version {version!r} is not supported by this m2kd "
            f"(supports {', '.join(SUPPORTED_VERSIONS)}); upgrade m2kd to read it")
    required = METADATA_KEYS + (V2_METADATA_KEYS if version != "1" else ())
    missing = [k for k in required if k not in metadata]
    if missing:
        raise BundleFormatError(f"bundle metadata lacks {', '.join(missing)}")
    return metadata


MAX_METADATA_CHARS = 1_000_000  # per value; a real bundle's largest is a few KB
MAX_METADATA_DEPTH = 8


def _nesting_depth(value) -> int:
    """Depth of nested lists / dicts, computed without recursion."""
    depth, level = 0, [(value, 1)]
    while level:
        item, d = level.pop()
        if isinstance(item, (list, dict)):
            depth = max(depth, d)
            if d > MAX_METADATA_DEPTH:
                return d
            children = item.values() if isinstance(item, dict) else item
            level.extend((child, d + 1) for child in children)
    return depth


def parse_metadata_json(metadata: dict, key: str, default: str | None = None):
    """One metadata value as JSON, refusing oversized or deeply nested values."""
    text = metadata.get(key, default)
    if text is None:
        raise BundleFormatError(f"bundle metadata lacks {key}")
    if len(text) > MAX_METADATA_CHARS:
        raise BundleFormatError(f"metadata {key!r} is over {MAX_METADATA_CHARS} characters")
    try:
        value = json.loads(text)
    except RecursionError:
        raise BundleFormatError(f"metadata {key!r} is nested deeper than "
                                f"{MAX_METADATA_DEPTH}") from None
    except ValueError as e:
        raise BundleFormatError(f"metadata {key!r} is not valid JSON ({e})") from None
    if _nesting_depth(value) > MAX_METADATA_DEPTH:
        raise BundleFormatError(f"metadata {key!r} is nested deeper than {MAX_METADATA_DEPTH}")
    return value


def _parsed_metadata(metadata: dict):
    classes = parse_metadata_json(metadata, "classes")
    method = parse_metadata_json(metadata, "method")
    classifier = parse_metadata_json(metadata, "classifier", json.dumps(HEAD_CLASSIFIER))
    try:
        spec = InputSpec.from_json(metadata["input_spec"])
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise BundleFormatError(f"bundle metadata 'input_spec' is malformed "
                                f"({e.__class__.__name__})") from None
    if not isinstance(classes, list) or not all(
            isinstance(c, list) and all(isinstance(n, (str, int)) for n in c) for c in classes):
        raise BundleFormatError("metadata 'classes' must be a list of per-step lists of names")
    if not isinstance(method, dict):
        raise BundleFormatError("metadata 'method' must be an object")
    if not isinstance(classifier, dict) or not isinstance(classifier.get("kind"), str):
        raise BundleFormatError("metadata 'classifier' must be an object with a 'kind'")
    return classes, method, classifier, spec


def _stored_form(metadata: dict) -> dict:
    """The on-disk form a loaded bundle keeps, so that re-saving it changes no byte."""
    bits = metadata.get("mask_bits", "8")
    if bits not in ("4", "8"):
        raise BundleFormatError(f"metadata 'mask_bits' must be 4 or 8, got {bits!r}")
    coding = metadata.get("mask_coding", "raw")
    step_dtype = metadata.get("step_dtype", "float32")
    if coding not in MASK_CODINGS:
        raise BundleFormatError(f"metadata 'mask_coding' must be one of "
                                f"{', '.join(MASK_CODINGS)}, got {coding!r}")
    if step_dtype not in ("float32", STEP_DTYPE_NAME):
        raise BundleFormatError(f"metadata 'step_dtype' must be float32 or "
                                f"{STEP_DTYPE_NAME}, got {step_dtype!r}")
    stats_features = metadata.get("stats_features", "last")
    if stats_features not in STATS_FEATURES:
        raise BundleFormatError(f"metadata 'stats_features' must be one of "
                                f"{', '.join(STATS_FEATURES)}, got {stats_features!r}")
    return {"mask_bits": int(bits), "mask_coding": coding,
            "step_dtype": step_dtype, "stats_features": stats_features}


def _seeded_probe(seed: str, spec: InputSpec) -> torch.Tensor:
    if seed != str(PROBE_SEED):
        raise BundleFormatError(f"metadata 'probe_seed' must be {PROBE_SEED}, got {seed!r}")
    return make_probe_input(spec)


def _from_safetensors(tensors: dict[str, torch.Tensor], metadata: dict) -> Bundle:
    classes, method, classifier, spec = _parsed_metadata(metadata)
    form = _stored_form(metadata)
    pool = dict(tensors)

    def take(name: str) -> torch.Tensor:
        if name not in pool:
            raise BundleFormatError(f"bundle lacks tensor {name!r}")
        return pool.pop(name)

    weights = {n[len("backbone."):]: t for n, t in tensors.items() if n.startswith("backbone.")}
    orphans = sorted(n for n in tensors if n.startswith("mask.") and n[5:] not in weights)
    if orphans:
        raise BundleFormatError(f"bundle lacks tensor 'backbone.{orphans[0][5:]}' "
                                f"(its mask is present)")
    masks = {name: decode_mask(take(f"mask.{name}"), weights[name], form["mask_bits"],
                               form["mask_coding"], f"mask.{name}")
             for name in weights}
    for name in weights:
        pool.pop(f"backbone.{name}")
    steps = []
    for k, step_classes in enumerate(classes, start=1):
        p = _step_prefix(k)
        bn_names = [n for n in pool if n.startswith(f"{p}bn.")]
        steps.append(StepRecord(
            classes=[str(c) for c in step_classes],
            batchnorm={n[len(f"{p}bn."):]: widened(pool.pop(n)) for n in bn_names},
            head={part: widened(take(f"{p}head.{part}")) for part in ("weight", "bias")},
            aux_head={part: widened(take(f"{p}aux_head.{part}")) for part in ("weight", "bias")},
            probe_input=(take(f"{p}probe.input") if "probe_seed" not in metadata
                         else _seeded_probe(metadata["probe_seed"], spec)),
            probe_logits=take(f"{p}probe.logits"),
            stats={space: ClassStats(*(widened(pool.pop(f"{p}stats.{space}.{part}"))
                                       for part in STATS_PARTS))
                   for space in STATS_SPACES if f"{p}stats.{space}.count" in pool},
        ))
    if pool:
        raise BundleFormatError(f"bundle has unexpected tensors: {', '.join(sorted(pool)[:5])}")
    return Bundle(metadata["arch"], spec, weights, masks, steps, method, classifier, **form)


# ---------------------------------------------------------------- validation

def validate(bundle: Bundle) -> None:
    """Check every name, shape, dtype and mask value against the architecture."""
    if bundle.arch not in BACKBONES:
        raise BundleFormatError(f"unknown architecture {bundle.arch!r}")
    if not 1 <= bundle.num_steps <= MAX_STEPS:
        raise BundleFormatError(f"a bundle holds 1..{MAX_STEPS} steps, this one {bundle.num_steps}")
    names = bundle.classes
    if len(set(names)) != len(names) or any(not rec.classes for rec in bundle.steps):
        raise BundleFormatError("class names must be unique and every step must add classes")
    if bundle.statistics_features not in STATS_FEATURES:
        raise BundleFormatError(f"stats_features must be one of {', '.join(STATS_FEATURES)}, "
                                f"got {bundle.statistics_features!r}")
    skeleton = _skeleton(bundle.arch, bundle.input_spec.channels)
    _check_weights(bundle, skeleton)
    bn_shapes = {n: t.shape for n, t in batchnorm_state(skeleton).items()}
    for k, rec in enumerate(bundle.steps, start=1):
        _check_step(k, rec, bundle, bn_shapes, skeleton)


@functools.lru_cache(maxsize=8)
def _skeleton(arch: str, channels: int) -> torch.nn.Module:
    """The architecture's modules, for their names and shapes only (never modified, so
    one per architecture serves every validation in the process).

    Built on the CPU, not on the meta device: meta's initialisers import torch._dynamo,
    1.7 s of every command's start. The global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        return create_backbone(arch, 1, channels)


def _expect(t: torch.Tensor, shape, dtype, what: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise BundleFormatError(f"{what}: shape {tuple(t.shape)}, expected {tuple(shape)}")
    if t.dtype != dtype:
        raise BundleFormatError(f"{what}: dtype {t.dtype}, expected {dtype}")


def _check_weights(bundle: Bundle, skeleton) -> None:
    expected = masked_parameter_names(skeleton)
    params = dict(skeleton.named_parameters())
    if sorted(expected) != sorted(bundle.weights):
        missing = set(expected) - set(bundle.weights)
        extra = set(bundle.weights) - set(expected)
        raise BundleFormatError(f"backbone weights do not match {bundle.arch}: "
                                f"missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}")
    for name in expected:
        _expect(bundle.weights[name], params[name].shape, torch.float32, f"backbone.{name}")
        if not torch.isfinite(bundle.weights[name]).all():  # masks are ordered by |w|
            raise BundleFormatError(f"backbone.{name}: weights must be finite")
        mask = bundle.masks[name]
        _expect(mask, params[name].shape, MASK_DTYPE, f"mask.{name}")
        top = int(mask.max()) if mask.numel() else 0
        if top > bundle.num_steps:
            raise BundleFormatError(
                f"mask.{name}: owner {top} is out of range (bundle has {bundle.num_steps} steps)")


def _check_step(k: int, rec: StepRecord, bundle: Bundle, bn_shapes: dict, skeleton) -> None:
    p = f"step.{k}."
    if sorted(rec.batchnorm) != sorted(bn_shapes):
        raise BundleFormatError(f"{p}bn: BatchNorm entries do not match {bundle.arch}")
    for name, shape in bn_shapes.items():
        _expect(rec.batchnorm[name], shape, torch.float32, f"{p}bn.{name}")
    n_seen = len(bundle.classes_up_to(k))
    for part, dim in (("head", skeleton.feature_dim), ("aux_head", skeleton.aux_dim)):
        head = getattr(rec, part)
        _expect(head["weight"], (n_seen, dim), torch.float32, f"{p}{part}.weight")
        _expect(head["bias"], (n_seen,), torch.float32, f"{p}{part}.bias")
    spec = bundle.input_spec
    _expect(rec.probe_input, (PROBE_BATCH, spec.channels, spec.height, spec.width),
            torch.float32, f"{p}probe.input")
    _expect(rec.probe_logits, (PROBE_BATCH, n_seen), torch.float32, f"{p}probe.logits")
    dim = statistics_dim(BACKBONES[bundle.arch].widths, bundle.statistics_features)
    for space, stats in rec.stats.items():
        _check_stats(f"{p}stats.{space}", stats, len(rec.classes), dim)


def _check_stats(what: str, stats: ClassStats, n: int, dim: int) -> None:
    """Shapes, dtypes, finite values, counts >= 1 and covariances positive semi-definite."""
    _expect(stats.count, (n,), torch.int64, f"{what}.count")
    _expect(stats.mean, (n, dim), torch.float32, f"{what}.mean")
    _expect(stats.cov, (n, packed_size(dim)), torch.float32, f"{what}.cov")
    if int(stats.count.min()) < 1:
        raise BundleFormatError(f"{what}.count: every class needs at least one image")
    if not (torch.isfinite(stats.mean).all() and torch.isfinite(stats.cov).all()):
        raise BundleFormatError(f"{what}: statistics must be finite")
    eig = torch.linalg.eigvalsh(stats.covariances().double())
    if (eig.amin(dim=1) < -_rounding_slack(stats.cov, dim, eig.abs().amax(dim=1))).any():
        raise BundleFormatError(f"{what}.cov: a covariance is not positive semi-definite")


def _rounding_slack(cov: torch.Tensor, dim: int, largest: torch.Tensor) -> torch.Tensor:
    """How far below zero rounding may push an eigenvalue: 1e-4 of the largest for float32
    values. For values rounded to 16 bits the rounding matrix E has |E_ij| <= 2^-11 |C_ij|
    + 2^-25 (subnormals), so |E|_2 <= D (2^-11 lambda_max + 2^-25). A class with fewer
    images than dimensions has a rank-deficient covariance whose zero eigenvalues land
    anywhere in that band."""
    if holds_16_bit_values(cov):
        return dim * (2.0 ** -11 * largest + 2.0 ** -25)
    return 1e-4 * largest.clamp(min=1e-12)


def make_probe_input(spec: InputSpec) -> torch.Tensor:
    """The probe batch of new steps (normalised input space), derived from PROBE_SEED
    (runtime/probe_inputs.py) so it need not be stored. Older files stored a
    `torch.randn` batch; those are read and kept as stored."""
    return seeded_probe_input(PROBE_BATCH, spec.channels, spec.height, spec.width, PROBE_SEED)


# ---------------------------------------------------------------- sizes

PARTS = ("weights", "masks", "batchnorm", "heads", "probes", "statistics")


def part_of(name: str) -> str:
    """Which part of the bundle a tensor name belongs to (for size accounting)."""
    if name.startswith("backbone."):
        return "weights"
    if name.startswith("mask."):
        return "masks"
    if ".bn." in name:
        return "batchnorm"
    if ".probe." in name:
        return "probes"
    if ".stats." in name:
        return "statistics"
    return "heads"


def bytes_by_part(bundle: Bundle) -> dict[str, int]:
    tensors, _ = _to_safetensors(bundle, checksum="")
    sizes = dict.fromkeys(PARTS, 0)
    for name, t in tensors.items():
        sizes[part_of(name)] += t.numel() * t.element_size()
    return sizes


def snapshot_bytes(bundle: Bundle) -> int:
    """Bytes of keeping every step as a separate fp32 model (what the masks avoid)."""
    per_weights = sum(w.numel() * 4 for w in bundle.weights.values())
    total = 0
    for rec in bundle.steps:
        total += per_weights + sum(t.numel() * 4 for t in rec.batchnorm.values())
        total += sum(t.numel() * 4 for part in (rec.head, rec.aux_head) for t in part.values())
    return total
