"""The champion alias: moved only by a better score on the same evaluation (a real MLflow store)."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from training.init_weights import resolve_init
from training.model import ModelConfig, build_model
from training.model_aliases import CHAMPION, Evaluation
from training.model_logging import log_model
from training.tracking import create_run


def register(uri: str, value: float, key: str = "disfa-abc, 3 folds") -> str:
    run = create_run(uri, "aliases", "r")
    model = build_model(ModelConfig(width=0.0625, num_outputs=12))
    evaluation = Evaluation(key=key, metric="f1", value=value, higher_is_better=True)
    logged = log_model(run, model, pixel_mean=0.5, register_as="m", evaluation=evaluation)
    return logged.registered_version


def test_champion_moves_only_to_a_better_version_on_the_same_evaluation(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)

    def champion() -> str:
        return str(client.get_model_version_by_alias("m", CHAMPION).version)

    first = register(uri, 0.50)
    assert champion() == first
    worse = register(uri, 0.40)
    assert champion() == first
    assert "does not beat" in client.get_model_version("m", worse).description
    other = register(uri, 0.90, key="another DISFA cache, 3 folds")  # higher, not comparable
    assert champion() == first
    assert "evaluated differently" in client.get_model_version("m", other).description
    better = register(uri, 0.60)
    assert champion() == better
    description = client.get_model_version("m", better).description
    assert "beats v1's 0.5000" in description and "disfa-abc" in description
    # Every --pretrained/--model flag reads models:/NAME@ALIAS (and MLflow's models:/NAME/latest).
    for uri_of_model in ("models:/m@champion", "models:/m/latest"):
        weights = resolve_init(uri_of_model, uri)
        assert weights.pixel_mean == 0.5 and weights.state_dict
