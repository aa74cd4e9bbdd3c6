"""Config validation: every malformed input is a ConfigError naming the key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from secure_fedrl.config import config_from_dict, load_config
from secure_fedrl.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def base(**sections):
    raw = {
        "federation": {"rounds": 2, "seed": 1},
        "local": {"algorithm": "ppo", "steps": 256},
        "sites": [{"name": "a", "env": "CartPole-v1", "num_envs": 2, "seed": 1}],
    }
    for key, value in sections.items():
        raw[key] = value
    return raw


def test_minimal_config_resolves_every_default():
    cfg = config_from_dict(base())
    data = cfg.to_dict()
    assert data["federation"]["rounds"] == 2
    assert data["strategy"]["name"] == "fedavg"
    assert "ppo" in data["local"]
    # the resolved TOML parses back to the same config
    again = config_from_dict(data)
    assert again.fingerprint() == cfg.fingerprint()


@pytest.mark.parametrize(
    "sections, key",
    [
        ({"federation": {"rounds": 2, "sede": 1}}, "federation.sede"),
        ({"federation": {"rounds": "ten"}}, "federation.rounds"),
        ({"federation": {"rounds": 0}}, "federation.rounds"),
        ({"strategy": {"name": "fedmagic"}}, "strategy.name"),
        ({"local": {"algorithm": "ppo", "steps": 256, "ppo": {"learning_rat": 0.1}}}, "local.ppo.learning_rat"),
        ({"local": {"algorithm": "ppo", "steps": 256, "ppo": {"learning_rate": "high"}}}, "local.ppo.learning_rate"),
        ({"local": {"algorithm": "ppo", "steps": 256, "reinforce": {}}}, "local.reinforce"),
        ({"sampling": {"fraction": 1.5}}, "sampling.fraction"),
        ({"privacy": {"unit": "client", "delta": 2.0}}, "privacy.delta"),
        ({"privacy": {"unit": "client", "clip": -1.0}}, "privacy.clip"),
        ({"privacy": {"unit": "client", "noise_multiplier": -0.5}}, "privacy.noise_multiplier"),
        ({"secure_aggregation": {"enabled": True, "bits": 40}}, "secure_aggregation.bits"),
        ({"nonsense": {}}, "nonsense"),
        ({"sites": []}, "sites"),
        ({"sites": [{"name": "a", "env": "CartPole-v1", "num_envz": 2}]}, "sites[0].num_envz"),
        ({"sites": [{"name": "a"}]}, "sites[0].env"),
        ({"sites": [{"name": "a", "env": "CartPole-v1"}, {"name": "a", "env": "CartPole-v1"}]}, "sites[1].name"),
    ],
)
def test_bad_config_names_the_key(sections, key):
    with pytest.raises(ConfigError) as info:
        config_from_dict(base(**sections))
    message = str(info.value)
    assert message.startswith(key), message
    assert "\n" not in message


def test_toml_syntax_error_is_a_config_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[federation\nrounds = 3\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_ready_configs_load():
    for path in sorted((REPO / "clients").glob("*/*.toml")):
        load_config(path)


def test_overrides_apply(tmp_path):
    path = tmp_path / "f.toml"
    path.write_text(textwrap.dedent("""
        [federation]
        rounds = 3
        [local]
        steps = 128
        [[sites]]
        name = "a"
        env = "CartPole-v1"
    """))
    cfg = load_config(path, overrides={"federation.rounds": 7})
    assert cfg.federation.rounds == 7
    # fingerprints ignore rounds (resume may extend a run) but nothing else
    assert cfg.fingerprint() == load_config(path).fingerprint()
    assert cfg.fingerprint() != load_config(path, overrides={"federation.seed": 9}).fingerprint()


def dp_base(**sections):
    return base(strategy={"name": "fedavg", "weighting": "uniform"}, **sections)


def test_threat_model_server_with_central_gaussian_is_refused():
    central = {"unit": "client", "mechanism": "gaussian", "threat_model": "server"}
    with pytest.raises(ConfigError, match=r"^privacy\.threat_model: 'server' with central Gaussian"):
        config_from_dict(dp_base(privacy=central, sampling={"fraction": 1.0}))
    auto = {"unit": "client", "threat_model": "server"}  # auto mechanism without SecAgg = central
    with pytest.raises(ConfigError, match="threat_model"):
        config_from_dict(dp_base(privacy=auto))
    ok = config_from_dict(dp_base(privacy={"unit": "client", "threat_model": "server"},
                               secure_aggregation={"enabled": True}))
    from secure_fedrl.config import resolved_threat_model

    assert resolved_threat_model(ok) == "server"
    assert resolved_threat_model(config_from_dict(dp_base(privacy={"unit": "client"}))) == "release"
    assert resolved_threat_model(config_from_dict(dp_base(privacy={"unit": "trajectory"},
                                                       local={"algorithm": "ppo", "steps": 0, "episodes": 4}))) == "server"


@pytest.mark.parametrize("sections, key", [
    ({"secure_aggregation": {"max_colluding_sites": -1}}, "secure_aggregation.max_colluding_sites"),
    ({"privacy": {"unit": "client", "max_participations": -2}}, "privacy.max_participations"),
    ({"privacy": {"unit": "client", "threat_model": "everyone"}}, "privacy.threat_model"),
])
def test_new_privacy_keys_are_validated(sections, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict(dp_base(**sections))


def test_max_participations_rule():
    from secure_fedrl.config import max_participations

    c = config_from_dict(dp_base(privacy={"unit": "client"}, sampling={"fraction": 0.1, "poisson": True},
                              federation={"rounds": 60, "seed": 1}))
    assert max_participations(c) == 13  # ceil(6 + 3 sqrt(5.4))
    c = config_from_dict(dp_base(privacy={"unit": "client", "max_participations": 4}, federation={"rounds": 60, "seed": 1}))
    assert max_participations(c) == 4
    c = config_from_dict(dp_base(privacy={"unit": "client", "max_participations": 400}, federation={"rounds": 6, "seed": 1}))
    assert max_participations(c) == 6


@pytest.mark.parametrize("value, why", [(-5.5, r"must be in \[-5, 2\]"), (2.5, r"must be in \[-5, 2\]"),
                                        (float("nan"), "expected a finite number"), (float("inf"), "expected a finite")])
def test_init_log_std_out_of_range_is_refused(value, why):
    with pytest.raises(ConfigError, match=r"^local\.init_log_std: " + why):
        config_from_dict(base(local={"algorithm": "ppo", "steps": 256, "init_log_std": value}))


@pytest.mark.parametrize("value", [-5.0, 0.0, 2.0])
def test_init_log_std_bounds_are_accepted(value):
    assert config_from_dict(base(local={"algorithm": "ppo", "steps": 256, "init_log_std": value})).local.init_log_std == value
