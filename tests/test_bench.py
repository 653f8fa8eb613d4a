"""`m2kd bench` on a tiny grid writes a report with every method and the plots."""

from __future__ import annotations

import json

from click.testing import CliRunner

from m2kd.runtime.cli import cli


def test_bench_writes_report_and_plots(tmp_path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(cli, ["bench", "--preset", "digits", "--methods", "ft,m2kd_stats",
                                      "--seeds", "0,1", "--epochs", "1", "--finetune-epochs", "0",
                                      "--arch", "resnet_small", "--device", "cpu",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    assert "| ft |" in report and "| m2kd_stats |" in report and "±" in report
    assert "backbone resnet_small" in report  # --arch, named in the report
    assert (out / "accuracy_per_step.png").stat().st_size > 1000
    assert (out / "confusion_matrices.png").stat().st_size > 1000
    runs = [json.loads((out / "runs" / "m2kd_stats" / f"seed{s}" / "results.json").read_text())
            for s in (0, 1)]
    assert all(r["config"]["finetune_epochs"] == 0 for r in runs)  # pruned, not fine-tuned
    # the same runs scored by their sigmoid head: m2kd's result without a second training
    head_row = next(line for line in report.splitlines() if line.startswith("| m2kd (head) |"))
    heads = [100 * r["steps"][-1]["head_top1"] for r in runs]
    assert head_row.split("|")[2].strip().startswith(f"{sum(heads) / 2:.1f}")
    # those runs are not another backbone's
    again = CliRunner().invoke(cli, ["bench", "--preset", "digits", "--methods", "ft",
                                     "--seeds", "0", "--arch", "resnet20", "--cached-only",
                                     "--out", str(out)])
    assert again.exit_code != 0 and "Traceback" not in again.output
    assert "was run with backbone resnet_small, not resnet20" in again.output
    # nor runs of another recipe: they would enter the report under this command's name
    other = CliRunner().invoke(cli, ["bench", "--preset", "digits", "--methods", "m2kd_stats",
                                     "--seeds", "0", "--epochs", "2", "--finetune-epochs", "0",
                                     "--arch", "resnet_small", "--cached-only",
                                     "--out", str(out)])
    assert other.exit_code != 0 and "Traceback" not in other.output
    assert "was run with epochs=1, not 2" in other.output
    # --augment reaches the runs' recipe (auto: the digits' own, none)
    shifted = CliRunner().invoke(cli, ["bench", "--preset", "digits", "--methods", "m2kd_stats",
                                       "--seeds", "0", "--epochs", "1", "--finetune-epochs", "0",
                                       "--arch", "resnet_small", "--augment", "shift",
                                       "--cached-only", "--out", str(out)])
    assert shifted.exit_code != 0 and "was run with augment='none', not 'shift'" in shifted.output
    # and so do the base step's own (the digits' default: the other steps')
    base = CliRunner().invoke(cli, ["bench", "--preset", "digits", "--methods", "m2kd_stats",
                                    "--seeds", "0", "--epochs", "1", "--finetune-epochs", "0",
                                    "--arch", "resnet_small", "--base-epochs", "3",
                                    "--cached-only", "--out", str(out)])
    assert base.exit_code != 0 and "was run with base_epochs=None, not 3" in base.output
    # a run written before rotation classes existed had none
    path = out / "runs" / "m2kd_stats" / "seed0" / "results.json"
    old = json.loads(path.read_text())
    del old["config"]["base_rotations"]
    path.write_text(json.dumps(old))
    legacy = CliRunner().invoke(cli, ["bench", "--preset", "digits", "--methods", "m2kd_stats",
                                      "--seeds", "0", "--epochs", "1", "--finetune-epochs", "0",
                                      "--arch", "resnet_small", "--cached-only",
                                      "--out", str(out)])
    assert "was run with base_rotations=False, not True" in legacy.output


def test_bench_refuses_unknown_method_before_running(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "--methods", "ft,nope", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "unknown method 'nope'" in result.output


def test_kept_models_count_every_snapshot_the_classifier_reads():
    from m2kd.runtime.classifier import classifier_config
    from m2kd.trainer.protocol import frozen_models

    stats, pseudo, head = (classifier_config(k) for k in ("stats", "pseudo", "head"))
    # fine-tuning classified with statistics keeps snapshots 1 and 2 beside model 3
    assert frozen_models("none", stats, 3) == 2 and frozen_models("none", head, 3) == 0
    # LwF-MC also keeps model 3 frozen as the next step's teacher
    assert frozen_models("last", stats, 3) == 3 and frozen_models("last", head, 3) == 1
    assert frozen_models("last", pseudo, 3) == 2  # base snapshot + teacher
    assert frozen_models("none", pseudo, 1) == 0


def test_bench_refuses_an_unknown_backbone_before_running(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "--methods", "ft", "--arch", "resnet7",
                                      "--out", str(tmp_path)])
    assert result.exit_code != 0 and "unknown backbone 'resnet7'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()


def test_cached_only_without_runs_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "--methods", "ft", "--seeds", "0", "--out",
                                      str(tmp_path), "--cached-only"])
    assert result.exit_code != 0 and "no cached runs of ft" in result.output
    assert "Traceback" not in result.output


def test_teachers_seeing_the_shift_is_compared_only_where_images_are_shifted(tmp_path):
    """Runs written before `teachers_see_shift` existed had unshifted teachers; that
    changes nothing unless the images were shifted."""
    from dataclasses import asdict, replace

    import pytest

    from m2kd.runtime.engine import StepConfig
    from m2kd.runtime.errors import ConfigError
    from m2kd.trainer.bench import _check_same_run

    def written_before_the_field(config):
        stored = json.loads(json.dumps(asdict(config)))
        del stored["teachers_see_shift"]
        return {"arch": "resnet_small", "config": stored}

    flipped, shifted = StepConfig(augment="flip"), StepConfig(augment="shift")
    _check_same_run(written_before_the_field(flipped), "resnet_small", flipped, tmp_path)
    with pytest.raises(ConfigError, match="teachers_see_shift=False, not True"):
        _check_same_run(written_before_the_field(shifted), "resnet_small", shifted, tmp_path)
    legacy = replace(shifted, teachers_see_shift=False)
    _check_same_run(written_before_the_field(shifted), "resnet_small", legacy, tmp_path)
    # a run written before the base step had an augmentation of its own used `augment`
    shifted_base = replace(flipped, base_augment="shift")
    _check_same_run(written_before_the_field(shifted_base), "resnet_small", shifted_base,
                    tmp_path)
    stored = written_before_the_field(shifted_base)
    del stored["config"]["base_augment"]
    with pytest.raises(ConfigError, match="base_augment=None, not 'shift'"):
        _check_same_run(stored, "resnet_small", shifted_base, tmp_path)


def test_a_cached_run_of_other_method_settings_is_refused(tmp_path):
    from dataclasses import asdict

    import pytest

    from m2kd.runtime.engine import StepConfig
    from m2kd.runtime.errors import ConfigError
    from m2kd.trainer.bench import _check_same_run, _method_params

    config = StepConfig()
    now = _method_params("podnet")
    stored = {"arch": "resnet_small", "config": json.loads(json.dumps(asdict(config))),
              "method": "podnet", "method_params": {**now, "balanced_updates": 0}}
    with pytest.raises(ConfigError, match="podnet's balanced_updates=0, not 200"):
        _check_same_run(stored, "resnet_small", config, tmp_path, now)
    _check_same_run({**stored, "method_params": now}, "resnet_small", config, tmp_path, now)
    del stored["method_params"]  # written before runs recorded them: not compared
    _check_same_run(stored, "resnet_small", config, tmp_path, now)


def test_a_cached_m2kd_run_from_before_a_new_parameter_counts_as_run_without_it(tmp_path):
    from dataclasses import asdict

    import pytest

    from m2kd.runtime.engine import StepConfig
    from m2kd.runtime.errors import ConfigError
    from m2kd.trainer.bench import _check_same_run, _method_params

    config = StepConfig()
    now = _method_params("m2kd")
    new_fields = ("old_features", "feature_distillation", "feature_statistics")
    before = {k: v for k, v in now.items() if k not in new_fields}
    stored = {"arch": "resnet_small", "config": json.loads(json.dumps(asdict(config))),
              "method": "m2kd", "method_params": before}
    _check_same_run(stored, "resnet_small", config, tmp_path, now)
    with pytest.raises(ConfigError, match="m2kd's old_features=0.0, not 0.5"):
        _check_same_run(stored, "resnet_small", config, tmp_path, _method_params("m2kd_proto"))


def test_a_cached_pass_run_from_before_batch_statistics_is_not_taken_for_one_with_them(
        tmp_path):
    """Session 15's m2kd_pass runs distilled features against an eval-mode teacher; the
    field is compared only where feature distillation is on."""
    from dataclasses import asdict

    import pytest

    from m2kd.runtime.engine import StepConfig
    from m2kd.runtime.errors import ConfigError
    from m2kd.trainer.bench import _check_same_run, _method_params

    config = StepConfig()
    now = _method_params("m2kd_pass")
    assert now["feature_statistics"] == "batch"
    session15 = {k: v for k, v in now.items() if k != "feature_statistics"}
    stored = {"arch": "resnet_small", "config": json.loads(json.dumps(asdict(config))),
              "method": "m2kd_pass", "method_params": session15}
    with pytest.raises(ConfigError, match="feature_statistics='running', not 'batch'"):
        _check_same_run(stored, "resnet_small", config, tmp_path, now)
    proto = _method_params("m2kd_proto")  # no feature distillation: the field is moot
    stored = {**stored, "method": "m2kd_proto",
              "method_params": {k: v for k, v in proto.items() if k != "feature_statistics"}}
    _check_same_run(stored, "resnet_small", config, tmp_path, proto)


def test_a_cached_run_from_before_stage_statistics_is_refused_where_they_classify(tmp_path):
    """Runs written before `stats_features` existed kept the last stage's statistics; that
    changes a statistics classifier's numbers, not the head's."""
    from dataclasses import asdict

    import pytest

    from m2kd.runtime.engine import StepConfig
    from m2kd.runtime.errors import ConfigError
    from m2kd.trainer.bench import _check_same_run

    def written_before_the_field(config):
        stored = json.loads(json.dumps(asdict(config)))
        del stored["stats_features"]
        return {"arch": "resnet_small", "config": stored}

    stats, head = StepConfig(), StepConfig(classifier="head")
    with pytest.raises(ConfigError, match="stats_features='last', not 'stages'"):
        _check_same_run(written_before_the_field(stats), "resnet_small", stats, tmp_path)
    _check_same_run(written_before_the_field(head), "resnet_small", head, tmp_path)
    last = StepConfig(stats_features="last")
    _check_same_run(written_before_the_field(last), "resnet_small", last, tmp_path)
