"""TrainConfig: every bad value is refused with a ConfigError naming the parameter; frozen; dicts round-trip."""

import dataclasses
import json

import numpy as np
import pytest

from wasap.config import ConfigError, TrainConfig


def test_defaults_are_the_papers():
    config = TrainConfig()
    assert (config.lr, config.momentum, config.weight_decay, config.dropout, config.batch_size, config.epsilon,
            config.zeta) == (0.01, 0.9, 2e-4, 0.3, 128, 20.0, 0.3)
    assert (config.ip_start, config.ip_every, config.ip_percentile) == (200, 10, 20.0)
    assert config.activation == "all-relu" and config.output_activation == "softmax"
    assert config.loss == "cross-entropy"


BAD = [
    ("hidden", dict(hidden=(100, 0, 10))),
    ("hidden", dict(hidden=(-3,))),
    ("hidden", dict(hidden=(10.5,))),
    ("lr", dict(lr=-0.01)),
    ("lr", dict(lr=0.0)),
    ("lr", dict(lr=float("nan"))),
    ("dropout", dict(dropout=1.0)),
    ("dropout", dict(dropout=-0.1)),
    ("zeta", dict(zeta=1.5)),
    ("zeta", dict(zeta=-0.1)),
    ("alpha", dict(activation="all-relu", alpha=1.5)),
    ("alpha", dict(activation="all-relu", alpha=-0.2)),
    ("alpha", dict(activation="all-relu", alpha=None)),
    ("activation", dict(activation="swish")),
    ("output_activation", dict(output_activation="softplus", loss="mse")),
    ("loss", dict(output_activation="softmax", loss="mse")),
    ("loss", dict(loss="hinge")),
    ("init", dict(init="orthogonal")),
    ("momentum", dict(momentum=1.0)),
    ("weight_decay", dict(weight_decay=-1e-4)),
    ("epsilon", dict(epsilon=0)),
    ("epsilon", dict(epsilon=float("inf"))),
    ("batch_size", dict(batch_size=0)),
    ("epochs", dict(epochs=-1)),
    ("ip_every", dict(ip_every=0)),
    ("ip_percentile", dict(ip_percentile=120)),
    ("threads", dict(threads=0)),
    ("workers", dict(workers=0)),
    ("lr", dict(lr="0.1")),
    # Counts must be integers: a float would only fail later, deep inside training (range(), slicing).
    ("epochs", dict(epochs=2.5)),
    ("batch_size", dict(batch_size=32.5)),
    ("ip_every", dict(ip_every=1.5)),
    # Seeds feed numpy.random.default_rng, which refuses negative seeds.
    ("seed", dict(seed=-1)),
    # A flag given as a string would be truthy whatever it says.
    ("importance_pruning", dict(importance_pruning="no")),
    ("zero_output", dict(zero_output="yes")),
    ("output_lr", dict(output_lr=0.0)),
    ("output_lr", dict(output_lr=float("nan"))),
    ("micro_batch", dict(micro_batch=0)),
    ("phase2_start", dict(phase2_start=-1)),
    ("warmup_epochs", dict(warmup_epochs=-1)),
    ("stall_timeout", dict(stall_timeout=float("inf"))),
    ("hidden", dict(hidden="400")),
    ("sync", dict(sync=1)),
    ("threads", dict(threads=1.5)),
]


@pytest.mark.parametrize("name,values", BAD, ids=[f"{n}={list(v.values())[-1]!r}" for n, v in BAD])
def test_bad_value_names_the_parameter(name, values):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**values)
    assert name in str(info.value)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_replace_validates():
    config = TrainConfig()
    assert config.replace(lr=0.1).lr == 0.1
    with pytest.raises(ConfigError, match="zeta"):
        config.replace(zeta=2.0)


def test_good_alternatives_accepted():
    TrainConfig(activation="relu", alpha=None)
    TrainConfig(activation="leaky-relu", alpha=0.01)
    TrainConfig(activation="tanh", output_activation="identity", loss="mse")
    TrainConfig(activation="sigmoid", output_activation="sigmoid", loss="mse", init="xavier")
    TrainConfig(dropout=0.0, zeta=0.0, weight_decay=0.0, momentum=0.0)


def test_from_dict_refuses_unknown_keys_by_name():
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 0.1, "lr": 0.1})


def test_to_dict_from_dict_round_trip():
    config = TrainConfig(hidden=(30, 20, 10), activation="leaky-relu", alpha=0.2, epsilon=5.5, zeta=0.2, epochs=7,
                         batch_size=17, lr=0.03, momentum=0.5, weight_decay=1e-3, dropout=0.1,
                         importance_pruning=True, ip_start=3, ip_every=2, ip_percentile=35.0, seed=11, threads=2,
                         workers=3, sync=True, phase2_start=4, warmup_epochs=1, micro_batch=5, lr_fan_in=3.0,
                         output_lr=0.5, zero_output=True, stall_timeout=30.0)
    values = config.to_dict()
    assert values["hidden"] == [30, 20, 10]
    # JSON-ready: survives a trip through text.
    again = TrainConfig.from_dict(json.loads(json.dumps(values)))
    assert again == config
    assert again.hidden == (30, 20, 10)
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()


def test_dicts_saved_with_the_retired_extra_field_still_load():
    # Checkpoints, summaries and models written before ``extra`` was removed carry it.
    saved = dict(TrainConfig(lr=0.05).to_dict(), extra={"note": "x"})
    assert TrainConfig.from_dict(saved) == TrainConfig(lr=0.05)


def test_a_config_cannot_be_changed_in_place():
    config = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 0.1
    assert config.lr == 0.01 and hash(config) == hash(TrainConfig())


def test_numpy_scalars_are_stored_as_python_numbers():
    # As a parameter grid hands them over; the config must stay JSON-ready.
    config = TrainConfig(hidden=np.array([8, 4]), lr=np.float32(0.5), epochs=np.int64(3),
                         importance_pruning=np.bool_(True))
    assert config.hidden == (8, 4) and type(config.hidden[0]) is int
    assert type(config.lr) is float and config.lr == 0.5 and type(config.epochs) is int
    assert config.importance_pruning is True
    json.dumps(config.to_dict())


def test_width_aware_recipe_scales_the_rates_with_the_output_fan_in():
    # 500000 x 2 at epsilon 10 is capped dense: an output neuron has n = 500000 inputs.
    config = TrainConfig.width_aware((500_000, 500_000), 2, epsilon=10, epochs=1, seed=3)
    assert (config.activation, config.init, config.zero_output, config.dropout) == ("tanh", "he-uniform-sparse",
                                                                                     True, 0.0)
    assert config.lr == pytest.approx(6e-5 * 500_000) and config.output_lr == pytest.approx(50 / 500_000)
    assert config.lr * config.weight_decay == pytest.approx(0.01 * 2e-4)  # the paper's shrink per step
    assert (config.hidden, config.epsilon, config.epochs, config.seed) == ((500_000, 500_000), 10, 1, 3)
    # The ten-layer network: 5M x 2 at epsilon 1 has 5M + 2 weights, n = 2.5M + 1.
    deep = TrainConfig.width_aware((5_000_000,) * 10, 2, epsilon=1, dropout=0.1)
    assert deep.output_lr == pytest.approx(50 / 2_500_001) and deep.lr == pytest.approx(6e-5 * 2_500_001)
    assert deep.dropout == 0.1  # an override wins
    with pytest.raises(ConfigError, match="hidden layer"):
        TrainConfig.width_aware((), 2, epsilon=1)
