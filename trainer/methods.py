"""The methods as small configurations of the engine, found by name.

Each entry says how to build the method and whether it packs its steps with
owner masks (then the bundle rebuilds every step and teachers come from it) or
not (then the trainer keeps earlier models in memory as teachers, and no
multi-step bundle is written). The error for an unknown name lists valid names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from m2kd.runtime.errors import ConfigError
from m2kd.runtime.m2kd import M2KD, PASS_WEIGHTS, M2KDConfig

from .baselines import FineTune, Joint
from .lwm import LwM
from .podnet import PODNet, PODNetConfig

DEFAULT = "default"


@dataclass(frozen=True)
class MethodSpec:
    factory: Callable[[], object]
    prune_ratio: float | None | str = DEFAULT  # None: no packing; DEFAULT: the run's ratio
    summary: str = ""
    exemplars: bool = False  # keeps old images (herding)
    nme: bool = False  # classifies by the nearest mean of exemplars
    teachers: str = "all"  # earlier models a non-packing method keeps: all, last or none
    classifier: str = DEFAULT  # "head", "stats", or DEFAULT: the run's --classifier


def _exemplar(method: Callable[[], M2KD]) -> Callable[[], M2KD]:
    """The same loss, but the step's data includes the stored exemplars of old classes."""
    def build():
        m = method()
        m.reads_old_data = True
        return m
    return build


def _m2kd(name: str, **config) -> Callable[[], M2KD]:
    return lambda: M2KD(M2KDConfig(**config), name)


METHODS: dict[str, MethodSpec] = {
    "ft": MethodSpec(FineTune, None, "fine-tuning, no distillation (lower bound)",
                     teachers="none"),
    "joint": MethodSpec(Joint, None, "all seen classes' data every step (upper bound; "
                                     "reads old data)", teachers="none"),
    "lwf_mc": MethodSpec(_m2kd("lwf_mc", teachers="last", auxiliary=False), None,
                         "iCaRL's LwF-MC: BCE, distillation from the last model (Eq. 1)",
                         teachers="last"),
    "lwm": MethodSpec(LwM, None, "LwF-MC + Grad-CAM attention distillation (LwM Eq. 3-6)",
                      teachers="last"),
    "m2kd": MethodSpec(_m2kd("m2kd"), DEFAULT, "multi-model + auxiliary distillation, "
                                               "pruning (M2KD)"),
    "m2kd_noprune": MethodSpec(_m2kd("m2kd_noprune"), None,
                               "M2KD keeping every snapshot instead of pruning"),
    "lwf_mc_aux": MethodSpec(_m2kd("lwf_mc_aux", teachers="last"), None,
                             "LwF-MC + auxiliary distillation (Sec. 4.4)", teachers="last"),
    "lwf_mc_mmd": MethodSpec(_m2kd("lwf_mc_mmd", auxiliary=False), None,
                             "multi-model distillation only (Sec. 4.4)"),
    "m2kd_skip1": MethodSpec(_m2kd("m2kd_skip1", skip=1), DEFAULT,
                             "M2KD without the first model (Sec. 4.4)"),
    "m2kd_skip2": MethodSpec(_m2kd("m2kd_skip2", skip=2), DEFAULT,
                             "M2KD without the first two models (Sec. 4.4)"),
}
# Exemplar-based, for comparison only: these READ STORED OLD IMAGES.
METHODS["icarl"] = MethodSpec(_exemplar(_m2kd("icarl", teachers="last", auxiliary=False)),
                              None, "iCaRL: LwF-MC on new data + herded exemplars, "
                                    "nearest-mean-of-exemplars (reads old images)", True, True,
                              "last")
METHODS["icarl_m2kd"] = MethodSpec(_exemplar(_m2kd("icarl_m2kd")), DEFAULT,
                                   "iCaRL with M2KD's distillation and pruning (Sec. 4.6; "
                                   "reads old images)", True, True)
METHODS["podnet"] = MethodSpec(lambda: PODNet(reads_old_data=True), None,
                               "PODNet: POD-spatial/flat + LSC/NCA, 20 exemplars per class, "
                               "CNN inference (reads old images)", True, teachers="last")
METHODS["podnet_nme"] = MethodSpec(lambda: PODNet(reads_old_data=True, name="podnet_nme"),
                                   None, "PODNet with nearest-mean-of-exemplars inference "
                                         "(reads old images)", True, True, "last")
# Without exemplars a sharp scale lets the new proxies claim every image (MNIST B2, seeds
# 0-1: eta 8 ends at 19.9 / 20.0 with old 0 %, eta 1 at 34.5 / 38.7): docs/methods.md.
METHODS["podnet_free"] = MethodSpec(lambda: PODNet(PODNetConfig(eta_init=1.0, eta_min=1.0),
                                                   name="podnet_free"), None,
                                    "PODNet exemplar-free, CNN inference", teachers="last")
# Remedies for over-confident teachers (documented options; `m2kd` stays the paper's form).
METHODS["m2kd_t2"] = MethodSpec(_m2kd("m2kd_t2", temperature=2.0), DEFAULT,
                                "M2KD, teacher logits / 2 before the sigmoid")
METHODS["lwf_mc_t2"] = MethodSpec(_m2kd("lwf_mc_t2", teachers="last", auxiliary=False,
                                        temperature=2.0), None,
                                  "LwF-MC, teacher logits / 2 before the sigmoid",
                                  teachers="last")
METHODS["m2kd_s05"] = MethodSpec(_m2kd("m2kd_s05", target_scale=0.5), DEFAULT,
                                 "M2KD, teacher scores x 0.5 (discounted old-class claims)")
METHODS["lwf_mc_s05"] = MethodSpec(_m2kd("lwf_mc_s05", teachers="last", auxiliary=False,
                                         target_scale=0.5), None,
                                   "LwF-MC, teacher scores x 0.5", teachers="last")
# PASS (Zhu et al. 2021) on top of the distillation: the old classes' Gaussian
# pseudo-features from the stored statistics as the head's negatives ("proto"), the
# previous model's pooled features distilled ("fkd"), or both ("pass"; docs/methods.md).
_PASS_PARTS = {"proto": {"old_features": PASS_WEIGHTS["old_features"]},
               "fkd": {"feature_distillation": PASS_WEIGHTS["feature_distillation"]},
               "pass": dict(PASS_WEIGHTS)}
_PASS_WHAT = {"proto": "the old classes' pseudo-features as the head's negatives",
              "fkd": "the previous model's features distilled",
              "pass": "PASS: the old classes' pseudo-features + feature distillation"}
for _part, _config in _PASS_PARTS.items():
    METHODS[f"m2kd_{_part}"] = MethodSpec(_m2kd(f"m2kd_{_part}", **_config), DEFAULT,
                                          f"M2KD + {_PASS_WHAT[_part]}")
    # LwF-MC distils from the last model, but its maps need every earlier one: kept.
    METHODS[f"lwf_mc_{_part}"] = MethodSpec(
        _m2kd(f"lwf_mc_{_part}", teachers="last", auxiliary=False, **_config), None,
        f"LwF-MC + {_PASS_WHAT[_part]}", teachers="all" if "old_features" in _config else "last")
# The same methods, classified by a statistics classifier (runtime/classifier.py): `stats`
# (k passes at step k) or the default `stats-base` (one pass). Longest suffix first, so
# that a name's suffix can be found by `endswith` (trainer/bench.py).
STATS_SUFFIXES = {"_stats_base": "stats-base", "_stats": "stats"}
for _name in ("ft", "lwf_mc", "m2kd", "m2kd_noprune", *(f"{m}_{p}" for m in ("m2kd", "lwf_mc")
                                                          for p in _PASS_PARTS)):
    _spec = METHODS[_name]
    for _suffix, _classifier in STATS_SUFFIXES.items():
        METHODS[f"{_name}{_suffix}"] = MethodSpec(
            _spec.factory, _spec.prune_ratio, _spec.summary + "; the statistics classifier "
            f"(--classifier {_classifier})", teachers=_spec.teachers, classifier=_classifier)
for _ratio in (0.6, 0.7, 0.8, 0.9):  # Table 1's pruning-ratio sweep
    METHODS[f"m2kd_p{int(_ratio * 100)}"] = MethodSpec(
        _m2kd(f"m2kd_p{int(_ratio * 100)}"), _ratio, f"M2KD with pruning ratio {_ratio}")


def method_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def create_method(name: str):
    return method_spec(name).factory()
