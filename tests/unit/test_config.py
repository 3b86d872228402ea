"""RunConfig: JSON round-trip, validation naming the field, partial JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from efm.config import (
    DataConfig,
    EnvConfig,
    ModelConfig,
    RunConfig,
    SelectConfig,
    SelfImproveConfig,
    SftConfig,
    TokenizerConfig,
    debug_config,
    default_config,
    stage_view,
)


@pytest.mark.parametrize("make", [RunConfig, default_config, debug_config], ids=["RunConfig", "default", "debug"])
def test_json_round_trip_is_identity(make) -> None:
    cfg = make()
    back = RunConfig.from_json(cfg.to_json())
    assert back == cfg
    assert back.to_json() == cfg.to_json()
    assert isinstance(back.data.fractions, tuple) and isinstance(back.self_improve.freeze, tuple)


def test_round_trip_of_non_default_values() -> None:
    cfg = debug_config().replace(
        data=DataConfig(num_episodes=30, validation_episodes=5, fractions=(0.25, 1.0), seed=3),
        tokenizer=TokenizerConfig(action_scheme="uniform", action_dim=70, uniform_bins=256,
                                  steps_to_go_bins=50),
        select=SelectConfig(policy_rule="step:40", reward_rule="last"),
        self_improve=dataclasses.replace(SelfImproveConfig(), gamma=1.0, freeze=(), runtime="ray"),
    )
    assert RunConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: SelfImproveConfig(gamma=0.0), "self_improve.gamma"),
        (lambda: SelfImproveConfig(gamma=1.5), "self_improve.gamma"),
        (lambda: SftConfig(batch_size=33), "sft.batch_size"),
        (lambda: SftConfig(eval_every=10, checkpoint_every=15), "sft.checkpoint_every"),
        (lambda: SftConfig(objectives=("bc",), batch_size=32), "sft.objectives"),
        (lambda: EnvConfig(domain="language_table"), "env.domain"),
        (lambda: DataConfig(num_episodes=10, validation_episodes=10), "data.validation_episodes"),
        (lambda: DataConfig(fractions=(0.0,)), "data.fractions"),
        (lambda: SelectConfig(policy_rule="step:abc"), "select.policy_rule"),
        (lambda: SftConfig(patience=-1), "sft.patience"),
        # early stopping ends at the best_* minima; Aloha's policy is picked 20x past its best
        (lambda: default_config("aloha-insertion").overridden({"sft": {"patience": 4}}), "sft.patience"),
        (lambda: TokenizerConfig(action_scheme="fast"), "tokenizer.action_scheme"),
        (lambda: RunConfig(env=EnvConfig(max_episode_steps=200)), "tokenizer.steps_to_go_max"),
        (lambda: default_config("aloha"), "domain"),
    ],
)
def test_invalid_values_raise_naming_the_field(build, field: str) -> None:
    with pytest.raises(ValueError, match=rf"invalid config: {field}="):
        build()


def test_overridden_merges_nested_fields_and_names_unknown_ones() -> None:
    """A partial config over a full one (what --config and Stage-2 variants apply): fields it
    names change, their siblings stay, an unknown one is an error naming its path."""
    base = default_config("tabletop")
    cfg = base.overridden({"self_improve": {"learning_rate": 5e-4}, "data": {"fractions": [0.2]}})
    assert cfg.self_improve.learning_rate == 5e-4 and cfg.data.fractions == (0.2,)
    assert cfg.self_improve.task_families == base.self_improve.task_families and cfg.sft == base.sft
    with pytest.raises(ValueError, match=r"unknown field self_improve\.lr"):
        base.overridden({"self_improve": {"lr": 1.0}})
    with pytest.raises(ValueError, match=r"self_improve\.learning_rate"):
        base.overridden({"self_improve": {"learning_rate": -1.0}})


def test_from_json_rejects_unknown_and_malformed() -> None:
    with pytest.raises(ValueError, match=r"unknown field.*'bogus'.*sft\."):
        RunConfig.from_json(json.dumps({"sft": {"bogus": 1}}))
    with pytest.raises(ValueError, match=r"unknown field.*'nope'"):
        RunConfig.from_json(json.dumps({"nope": {}}))
    with pytest.raises(ValueError, match="not JSON"):
        RunConfig.from_json("{not json")
    with pytest.raises(ValueError, match="must be an object"):
        RunConfig.from_json(json.dumps({"sft": 5}))
    with pytest.raises(ValueError, match=r"self_improve\.gamma"):
        RunConfig.from_json(json.dumps({"self_improve": {"gamma": 0}}))


@pytest.mark.parametrize(("override", "message"), [
    ({"sft": {"num_steps": 1.5}}, r"sft\.num_steps must be an integer, got 1\.5"),
    ({"data": {"validation_episodes": True}}, r"data\.validation_episodes must be an integer"),
    ({"sft": {"learning_rate": "1e-3"}}, r"sft\.learning_rate must be a number"),
    ({"tokenizer": {"cameras": "rgb"}}, r"tokenizer\.cameras must be a list, got 'rgb'"),  # not ('r', 'g', 'b')
    ({"self_improve": {"freeze": "vision_encoder"}}, r"self_improve\.freeze must be a list"),
    ({"data": {"fractions": [0.1, "0.2"]}}, r"data\.fractions\[1\] must be a number"),
    ({"model": {"compute_dtype": "float16"}}, r"model\.compute_dtype must be one of \['float32', 'bfloat16'\]"),
])
def test_from_json_checks_each_fields_type(override: dict, message: str) -> None:
    """A value of the wrong type fails when the config is read, naming the field, not when a
    step hours later first uses it (a float step count once reached SFT's range())."""
    with pytest.raises(ValueError, match=message):
        RunConfig.from_json(json.dumps(override))


def test_from_json_reads_an_integral_float_as_a_count() -> None:
    cfg = RunConfig.from_json(json.dumps({"sft": {"num_steps": 1e3}, "self_improve": {"learning_rate": 1}}))
    assert cfg.sft.num_steps == 1000 and isinstance(cfg.sft.num_steps, int)
    assert isinstance(cfg.self_improve.learning_rate, float)
    for domain in ("pointmass", "tabletop", "bananatable", "aloha-insertion"):  # every default reads back
        assert RunConfig.from_json(default_config(domain).to_json()) == default_config(domain)


def test_from_json_partial_fills_defaults() -> None:
    cfg = RunConfig.from_json(json.dumps({"sft": {"batch_size": 64}, "data": {"fractions": [0.5]}}))
    default = RunConfig()
    assert cfg.sft.batch_size == 64
    assert cfg.data.fractions == (0.5,)
    assert cfg.sft == dataclasses.replace(default.sft, batch_size=64)
    assert cfg.data == dataclasses.replace(default.data, fractions=(0.5,))
    assert cfg.self_improve == default.self_improve and cfg.env == default.env
    assert RunConfig.from_json("{}") == default


def test_flat_has_dotted_keys() -> None:
    flat = debug_config().flat()
    assert flat["sft.num_steps"] == 40
    assert flat["env.pointmass.max_speed"] == 0.1
    assert flat["self_improve.gamma"] == 0.9
    assert not any(isinstance(v, dict) for v in flat.values())


@pytest.mark.parametrize("domain", ["pointmass", "tabletop", "bananatable", "aloha-insertion"])
def test_the_data_steps_see_only_what_they_read(domain: str) -> None:
    """A run that changes training, practice, evaluation or where the model starts from hands
    the data steps the same config (so their cache keys match); one that changes the data or
    the environment does not. Every domain's config has a valid view."""
    from efm.cli import load_config

    cfg = load_config(domain)
    trained = cfg.overridden({"model": {"init": "pretrain", "init_path": "/elsewhere/pretrain"},
                              "sft": {"learning_rate": 1e-5, "num_steps": 7}, "eval": {"seed": 3},
                              "self_improve": {"max_episodes": 11}, "select": {"policy_rule": "best_steps_to_go"},
                              "data": {"fractions": [0.3]}})
    for stage in ("dataset", "subsample", "validate"):
        view = stage_view(cfg, stage)
        assert stage_view(trained, stage).to_json() == view.to_json()
        assert (view.env, view.tokenizer, view.data.seed) == (cfg.env, cfg.tokenizer, cfg.data.seed)
        assert view.model.reads_text == cfg.model.reads_text and view.sft == SftConfig()
        assert stage_view(cfg.overridden({"data": {"seed": 5}}), stage).to_json() != view.to_json()
        assert stage_view(cfg.overridden({"env": {"max_episode_steps": cfg.env.max_episode_steps - 1}}),
                          stage).to_json() != view.to_json()
    accepting = cfg.overridden({"validation": {"accept": ["some_anomaly"]}})
    assert stage_view(accepting, "dataset") == stage_view(cfg, "dataset")  # accepting an anomaly keeps the data
    assert stage_view(accepting, "validate").validation.accept == ("some_anomaly",)
    assert set(stage_view(cfg, "dataset").flat(("env", "data"))) == {
        k for k in cfg.flat() if k.startswith(("env.", "data."))}


@pytest.mark.parametrize("domain", ["pointmass", "tabletop", "bananatable", "aloha-insertion"])
def test_stage1_sees_only_what_it_reads(domain: str) -> None:
    """A run that changes only practice, evaluation or the data gate hands pretrain, sft and
    select the same config (so Stage 1 comes from the cache); one that changes training, the
    model, the selection rule or the data does not."""
    from efm.cli import load_config

    cfg = load_config(domain)
    practised = cfg.overridden({"self_improve": {"max_episodes": 11, "gamma": 0.5}, "eval": {"seed": 3},
                                "validation": {"accept": ["some_anomaly"]}, "data": {"fractions": [0.3]}})
    for stage in ("pretrain", "sft", "select"):
        view = stage_view(cfg, stage)
        assert stage_view(practised, stage).to_json() == view.to_json()
        assert (view.model, view.tokenizer, view.pretrain) == (cfg.model, cfg.tokenizer, cfg.pretrain)
        assert view.self_improve == SelfImproveConfig()
    for change in ({"sft": {"learning_rate": 1e-5}}, {"select": {"policy_rule": "last"}, "sft": {"patience": 0}},
                   {"data": {"seed": 5}}, {"model": {"init_path": "/elsewhere/pretrain"}}):
        assert stage_view(cfg.overridden(change), "sft").to_json() != stage_view(cfg, "sft").to_json()
    # Pretraining renders its own boards: the data and Stage 1's training are not its inputs.
    trained = cfg.overridden({"sft": {"learning_rate": 1e-5}, "data": {"seed": 5}})
    assert stage_view(trained, "pretrain").to_json() == stage_view(cfg, "pretrain").to_json()
    assert stage_view(cfg.overridden({"pretrain": {"seed": 4}}), "pretrain") != stage_view(cfg, "pretrain")


def test_samples_per_round() -> None:
    assert SelfImproveConfig(batch_size=16, updates_per_round=3).samples_per_round == 48


def test_practice_config_restricts_tasks_and_switches_domain() -> None:
    from efm.config import practice_config

    cfg = default_config("tabletop")
    assert cfg.self_improve.task_families == ("block2block",) and cfg.self_improve.transfer_domains == ("bananatable",)
    own = practice_config(cfg)
    assert own.domain == "tabletop" and own.env.tabletop.task_families == ("block2block",)
    assert cfg.env.tabletop.task_families != ("block2block",)  # Stage-1 data keeps every family
    banana = practice_config(cfg, "bananatable")
    assert banana.domain == "bananatable" and banana.model == cfg.model
    with pytest.raises(ValueError, match="practice domain"):
        practice_config(cfg, "pointmass")
    with pytest.raises(ValueError, match="transfer_domains"):
        cfg.replace(self_improve=dataclasses.replace(cfg.self_improve, transfer_domains=("pointmass",)))
    with pytest.raises(ValueError, match="task_families"):
        dataclasses.replace(cfg.self_improve, task_families=("block2moon",))


def test_the_table_camera_is_checked_and_banana_practice_sees_the_tables() -> None:
    from efm.cli import load_config

    top = load_config("tabletop", '{"env": {"tabletop": {"camera": "top_down"}, "bananatable": {"camera": "top_down"}}}')
    assert top.env.tabletop.camera == top.env.bananatable.camera == "top_down"
    with pytest.raises(ValueError, match=r"tabletop\.camera"):
        load_config("tabletop", '{"env": {"tabletop": {"camera": "fisheye"}}}')
    with pytest.raises(ValueError, match=r"env\.bananatable\.camera.*practice on bananatable transfers"):
        load_config("tabletop", '{"env": {"tabletop": {"camera": "top_down"}}}')  # the banana's left oblique
    with pytest.raises(ValueError, match=r"env\.bananatable\.image_height"):
        load_config("tabletop", '{"env": {"tabletop": {"image_height": 144, "image_width": 256}}}')


def test_vision_language_config_needs_text_and_vice_versa() -> None:
    cfg = default_config("tabletop")
    with pytest.raises(ValueError, match=r"tokenizer\.text_tokens"):
        cfg.replace(tokenizer=dataclasses.replace(cfg.tokenizer, text_tokens=0))
    with pytest.raises(ValueError, match="instruction objective"):
        debug_config().replace(sft=dataclasses.replace(debug_config().sft, objectives=("bc", "steps_to_go", "instruction"),
                                                      batch_size=48))
    with pytest.raises(ValueError, match=r"model\.init_path"):
        ModelConfig(variant="vl-tiny", init="big_vision")


def test_table_workspace_matches_the_simulator() -> None:
    """The effector tokens' range is the workspace the table envs clip the effector to."""
    from efm.config import TABLE_WORKSPACE
    from efm.envs.tabletop import WORKSPACE

    np.testing.assert_allclose(TABLE_WORKSPACE, WORKSPACE)
    tok = default_config("tabletop").tokenizer
    assert tok.state_key == "effector_translation"
    assert (tok.state_low, tok.state_high) == TABLE_WORKSPACE


def test_aloha_camera_config_reads_what_the_env_observes() -> None:
    """The vision-language Aloha config: the env's two stacked images and its joints (config
    cannot import the env, so the keys are repeated there), never the privileged poses the env
    still records for the demonstrator; JSON round trip."""
    from efm.config import MODEL_VARIANTS, TransformerVariant, aloha_camera_config
    from efm.data.features import input_spec
    from efm.envs.aloha import env
    from efm.models.prefix_lm import IMAGE, STATE, TEXT
    from efm.models.tokenizers import make_vocabulary

    cfg = aloha_camera_config()
    assert cfg.tokenizer.cameras == (env.RGB, env.RGB_WRIST) and cfg.tokenizer.state_key == env.JOINTS
    # The demonstrator reads the poses, so the dataset step needs them on.
    assert cfg.env.aloha.render_images and cfg.env.aloha.state_observation
    image = np.zeros((1, 8, 8, 3), np.uint8)
    observation = {env.RGB: image, env.RGB_WRIST: image, env.JOINTS: np.zeros((1, 14), np.float32),
                   env.PEG_POSE: np.ones((1, 7), np.float32), env.SOCKET_POSE: np.ones((1, 7), np.float32)}
    inputs = input_spec(make_vocabulary(cfg.tokenizer)).inputs(observation, None, {}, [env.INSTRUCTION])
    assert set(inputs) == {IMAGE, TEXT, STATE} and inputs[STATE].shape == (1, 14)
    assert isinstance(MODEL_VARIANTS[cfg.model.variant], TransformerVariant)
    assert RunConfig.from_json(cfg.to_json()) == cfg
    assert default_config("aloha-insertion").tokenizer.cameras == ("rgb",)  # state mode: no cameras read
    with pytest.raises(ValueError, match=r"model\.variant"):
        aloha_camera_config(variant="mlp-tiny")
    with pytest.raises(ValueError, match=r"env\.domain"):
        aloha_camera_config(default_config("tabletop"))


def test_shipped_aloha_camera_file_is_the_camera_config() -> None:
    """`--config configs/aloha-cameras.json` on the command line gives what the function does."""
    from efm.cli import load_config
    from efm.config import aloha_camera_config

    path = Path(__file__).parents[2] / "configs" / "aloha-cameras.json"
    assert load_config("aloha-insertion", str(path)) == aloha_camera_config()
