"""The `facs` command line: generated help, YAML + flag precedence, clear errors."""

from __future__ import annotations

import dataclasses
import re

import pytest

from cluster.cli import build_parser, main
from pipeline.corpus.config import CorpusBuildConfig
from pipeline.options import ConfigError, at_least, load_config, overrides_from_args
from training.finetune_config import FinetuneConfig
from training.predict_config import PredictConfig
from training.pretrain_config import PretrainConfig
from tune.scaling_config import ScalingStudyConfig
from tune.sweep_config import SweepConfig


def all_flags(cls, prefix: str = "") -> list[str]:
    flags = []
    for field in dataclasses.fields(cls):
        name = prefix + field.name
        if dataclasses.is_dataclass(field.type) or (
            isinstance(field.type, str) and field.type.endswith("Config")
        ):
            flags += all_flags(field.default_factory().__class__, name + "-")
        else:
            flags.append("--" + name.replace("_", "-"))
    return flags


def test_corpus_build_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["corpus", "build", "--help"])
    text = capsys.readouterr().out
    flags = all_flags(CorpusBuildConfig)
    assert "--face-detector" in flags and "--labels-release-csv" in flags
    for flag in flags:
        assert flag in text, flag


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    yaml_file = tmp_path / "build.yaml"
    yaml_file.write_text("corpus: /data/c\nbatch_size: 8\nface:\n  detector: none\n  margin: 0.3\n")
    args = build_parser().parse_args(
        ["corpus", "build", "--config", str(yaml_file), "--face-margin", "0.1"]
    )
    config = load_config(CorpusBuildConfig, args.config, overrides_from_args(args))
    assert (config.corpus, config.batch_size, config.face.detector, config.face.margin) == (
        "/data/c",
        8,
        "none",
        0.1,
    )
    assert config.workers == CorpusBuildConfig().workers


def test_unknown_yaml_key_is_named(tmp_path):
    yaml_file = tmp_path / "bad.yaml"
    yaml_file.write_text("corpus: x\nbatchsize: 8\n")
    with pytest.raises(ConfigError, match="batchsize"):
        load_config(CorpusBuildConfig, yaml_file)


def test_a_failed_config_check_names_the_config_the_field_the_bound_and_the_value():
    with pytest.raises(ValueError, match=r"^PredictConfig: expected workers >= 1, got 0$"):
        PredictConfig(workers=0)
    with pytest.raises(ValueError, match=r"^ScalingStudyConfig: expected concurrent >= 1, got 0$"):
        ScalingStudyConfig(concurrent=0)


@pytest.mark.parametrize("stage", [PredictConfig, PretrainConfig, FinetuneConfig])
@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("workers", 0, "workers >= 1, got 0"),
        ("gpus_per_worker", -1.0, "gpus_per_worker >= 0, got -1.0"),
        ("cpus_per_worker", 0.0, "cpus_per_worker > 0, got 0.0"),
    ],
)
def test_every_stage_with_ray_workers_checks_their_resources_alike(stage, field, value, expected):
    """Training's DDP ranks and predict's model actors are declared once (``RayWorkers``): the
    same flags, the same bounds (predict used to accept actors with no CPU)."""
    with pytest.raises(ValueError, match=rf"^{stage.__name__}: expected {re.escape(expected)}$"):
        stage(**{field: value})
    flags = all_flags(stage)
    assert {"--workers", "--gpus-per-worker", "--cpus-per-worker"} <= set(flags)
    assert stage(gpus_per_worker=0.5).use_gpu and not stage().use_gpu


def test_an_optional_lower_bound_accepts_none_and_still_checks_a_value():
    assert at_least("max_steps", None, 1, optional=True)[0]
    assert at_least("max_steps", 0, 1, optional=True) == (False, "max_steps >= 1, got 0")
    assert not at_least("max_steps", None, 1)[0]


def test_output_help_names_the_local_default_each_stage_really_uses():
    from tune import scaling, sweep

    def help_of(cls, name: str) -> str:
        return next(f for f in dataclasses.fields(cls) if f.name == name).metadata["help"]

    assert f"else {sweep.DEFAULT_STORAGE} " in help_of(SweepConfig, "storage_path")
    assert f"else {scaling.DEFAULT_OUTPUT} " in help_of(ScalingStudyConfig, "output")


def test_build_without_input_says_what_to_give(tmp_path, capsys, ray_local):
    code = main(["corpus", "build", "--corpus", str(tmp_path / "c")])
    assert code == 2
    assert "--images" in capsys.readouterr().err
