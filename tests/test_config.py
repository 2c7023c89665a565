"""Typed configs: YAML + overrides, one-line errors naming the key, frozen after validation."""

import pytest

from posttrain.config import (DPOConfig, RLConfig, SFTConfig, dump_config, load_config, parse_overrides)
from posttrain.errors import ConfigError


def test_overrides_parse_dotted_keys_and_scalars():
    assert parse_overrides(["data.train=x.jsonl", "lr=1e-4", "max_steps=10", "packing=true"]) == {
        "data": {"train": "x.jsonl"}, "lr": 1e-4, "max_steps": 10, "packing": True}


def test_yaml_then_overrides_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.001\nmax_steps: 5\ndata:\n  train: a.jsonl\n")
    cfg = load_config(SFTConfig, str(f), ["max_steps=7"])
    assert (cfg.lr, cfg.max_steps, cfg.data.train) == (0.001, 7, "a.jsonl")


def test_frozen_after_validation():
    cfg = load_config(SFTConfig, None, [])
    with pytest.raises(Exception):
        cfg.lr = 1.0  # type: ignore[misc]
    with pytest.raises(Exception):
        cfg.data.train = "x"  # type: ignore[misc]


@pytest.mark.parametrize("override,message", [
    (["lrr=1"], "config: unknown key 'lrr' (did you mean 'lr'?)"),
    (["data.trian=x"], "config: unknown key 'data.trian' (did you mean 'data.train'?)"),
    (["lr=abc"], "config: key 'lr': input should be a valid number, unable to parse string as a number "
                 "(got 'abc')"),
    (["max_steps=0"], "config: key 'max_steps': input should be greater than or equal to 1 (got 0)"),
    (["lr_schedule=foo"], "config: key 'lr_schedule': input should be 'cosine', 'linear' or 'constant' "
                          "(got 'foo')"),
    (["data.max_len=64", "data.max_prompt_len=64"],
     "config: data.max_prompt_len must be smaller than data.max_len"),
    (["novalue"], "override 'novalue' is not of the form key=value"),
    (["lr=nan"], "config: key 'lr': input should be a finite number (got nan)"),  # not "less than or equal to 1"
    (["max_grad_norm=inf"], "config: key 'max_grad_norm': input should be a finite number (got inf)"),
])
def test_bad_config_one_line(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(SFTConfig, None, override)
    assert str(e.value) == message


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("lr: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: "):
        load_config(SFTConfig, str(f), [])
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(SFTConfig, str(tmp_path / "missing.yaml"), [])
    g = tmp_path / "list.yaml"
    g.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(SFTConfig, str(g), [])


def test_dump_roundtrip():
    cfg = load_config(RLConfig, None, ["algo=ppo", "generation.temperature=0.7"])
    import yaml
    again = RLConfig.model_validate(yaml.safe_load(dump_config(cfg)))
    assert again == cfg and again.generation.temperature == 0.7


def test_common_keys_shared_by_stages():
    for cls in (SFTConfig, DPOConfig, RLConfig):
        for key in ("model", "data", "output_dir", "seed", "max_steps"):
            assert key in cls.model_fields


@pytest.mark.parametrize("overrides,message", [
    # E_π[∇ log π/π_ref] = E_π[∇ log π] = Σ_y ∇π(y) = ∇1 = 0: a k1 loss term moves nothing in expectation.
    (["algo=grpo", "kl_estimator=k1"], "kl_estimator=k1 as a loss term"),
    (["algo=rloo", "kl_mode=loss", "kl_estimator=k1"], "zero expected gradient"),
    # rollout 8 × 4 = 32 completions, 2 epochs of 2 minibatches of 16: 4 updates, 3 of them off-policy
    (["algo=rloo", "ppo_epochs=2", "minibatch_size=16"], "only the first of the 4 updates"),
    (["algo=reinforce", "ppo_epochs=3"], "only the first of the 3 updates"),
])
def test_rl_combinations_that_cannot_work_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RLConfig, None, overrides)


def test_rl_combinations_next_to_the_rejected_ones_are_accepted():
    assert load_config(RLConfig, None, ["algo=grpo", "kl_estimator=k2"]).resolved_kl_estimator == "k2"
    assert load_config(RLConfig, None, ["algo=rloo", "kl_estimator=k1"]).resolved_kl_mode == "reward"
    assert load_config(RLConfig, None, ["algo=rloo", "ppo_epochs=2", "policy_loss=ppo"]).updates_per_step == 2
    assert load_config(RLConfig, None, ["algo=reinforce"]).updates_per_step == 1
