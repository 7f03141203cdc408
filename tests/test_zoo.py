"""The default run's trained models: documented accuracy, cache identity, cache keys."""

import dataclasses

import pytest
import torch

from netanatomy import data, subject, world, zoo
from netanatomy.train import evaluate

# Documented in README ("The built-in data"): small_vgg reaches 0.863 on the default world's
# validation split with the default recipe (3 epochs, one-cycle). The margin allows other CPUs' float order.
DOCUMENTED_VAL_ACC = 0.863
MARGIN = 0.04


@pytest.mark.slow
def test_default_small_model_reaches_documented_accuracy():
    default = subject.scale("default")
    entry = zoo.trained("small_vgg", default.world, default.recipe, progress=False)
    assert abs(entry.val_acc - DOCUMENTED_VAL_ACC) <= MARGIN, entry.val_acc
    assert entry.val_acc < 0.99  # the world's paired scenes are confusable by design
    # the cached weights are what the history claims
    val = data.get_dataset("concept_world", split="val", world=default.world)
    assert evaluate(entry.model, val)["acc"] == pytest.approx(entry.val_acc, abs=1e-6)


def test_cached_model_is_reused_and_key_tracks_world_version(monkeypatch):
    smoke = subject.scale("smoke")
    cfg, recipe = smoke.world, dataclasses.replace(smoke.recipe, epochs=1)
    first = zoo.trained("small_resnet", cfg, recipe, progress=False)
    again = zoo.trained("small_resnet", cfg, recipe, progress=False)
    assert again.path == first.path
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    assert zoo.cache_path("small_resnet", cfg, recipe) == first.path
    monkeypatch.setattr(world, "WORLD_VERSION", world.WORLD_VERSION + 1)  # a changed renderer
    assert zoo.cache_path("small_resnet", cfg, recipe) != first.path
    assert zoo.cache_path("small_resnet", cfg, dataclasses.replace(recipe, lr=0.01)) != first.path
    assert zoo.cache_path("small_resnet", cfg, dataclasses.replace(recipe, device="cpu", progress=True)) \
        == zoo.cache_path("small_resnet", cfg, recipe)  # how it runs is not what it is


def test_unknown_scale_is_a_parameter_error():
    with pytest.raises(Exception, match="parameter 'scale'.*default, smoke"):
        subject.scale("huge")


def test_trained_weights_do_not_depend_on_earlier_random_draws(tmp_path, monkeypatch):
    smoke = subject.scale("smoke")
    cfg, recipe = smoke.world, dataclasses.replace(smoke.recipe, epochs=1)
    states = []
    for i, draws in enumerate((0, 1000)):
        monkeypatch.setenv("NETANATOMY_CACHE", str(tmp_path / f"cache{i}"))
        torch.rand(draws)  # whatever ran before in the same process
        states.append(zoo.trained("small_vgg", cfg, recipe, progress=False).model.state_dict())
    for k, v in states[0].items():
        assert torch.equal(v, states[1][k]), k
