import math
import re
import dataclasses

import pytest
import yaml

from ecombot.config import FIELDS, TrainConfig, default_yaml_text, load_config
from ecombot.errors import ConfigError


def test_documented_yaml_matches_the_dataclass_defaults():
    documented = yaml.safe_load(default_yaml_text())
    defaults = TrainConfig().to_dict()
    assert set(documented) == FIELDS
    assert documented == defaults
    lines = default_yaml_text().splitlines()
    for name in FIELDS:  # every field is preceded by a comment (directly or in its group)
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{name}:"))
        assert any(lines[j].startswith("#") for j in range(max(0, index - 3), index)), name


def test_file_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rank: 4\nlearning_rate: 2e-4\nmethod: dora\n")
    cfg = load_config(path, rank=None, method="qlora", max_steps=7)
    assert (cfg.rank, cfg.learning_rate, cfg.method, cfg.max_steps) == (4, 2e-4, "qlora", 7)
    assert cfg.run_dir.name == "qlora"


@pytest.mark.parametrize("text, message", [
    ("rnak: 4\n", "unknown config field"),
    ("method: prefix\n", "'method': must be one of lora, qlora, dora"),
    ("rank: 0\n", "'rank': must be a positive integer"),
    ("learning_rate: fast\n", "'learning_rate': must be a number"),
    ("val_fraction: 0.6\ntest_fraction: 0.5\n", "sum to less than 1"),
    ("- 1\n", "expected a mapping"),
    ("rank: [\n", "not valid YAML"),
    ("batch_size: many\n", "'batch_size': must be a positive integer or auto"),
    ("handoff_share: 1.5\n", "'handoff_share': must be in [0, 1)"),
    ("ungrounded_share: -0.1\n", "'ungrounded_share': must be in [0, 1)"),
    ("rule_share: 1\n", "'rule_share': must be in [0, 1)"),
    ("knowledge_k: 0\n", "'knowledge_k': must be a positive integer"),
])
def test_bad_config_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_system_prompt_defaults():
    assert TrainConfig().resolved_system_prompt() is None
    assert TrainConfig(system_prompt="").resolved_system_prompt() is None
    assert TrainConfig(system_prompt="Custom").resolved_system_prompt() == "Custom"
    assert {f.name for f in dataclasses.fields(TrainConfig)} == FIELDS


@pytest.mark.parametrize("n_train, steps, batch, lr", [
    (63, 160, 4, 1e-3),      # a store FAQ: 16 rows a pass, 10 passes
    (200, 150, 4, 1e-3),
    (1800, 225, 8, 1e-3),    # the built-in data: one pass is enough steps
    (50_000, 1000, 8, 5e-4),  # a big log: capped, not days
])
def test_auto_settings_follow_the_data_size(n_train, steps, batch, lr):
    from ecombot.config import fit_to_data

    cfg, recipe = fit_to_data(load_config(None), n_train)
    total = cfg.max_steps if cfg.max_steps > 0 else math.ceil(n_train / cfg.batch_size) * cfg.epochs
    assert (total, cfg.batch_size, cfg.learning_rate) == (steps, batch, lr)
    assert cfg.eval_steps == max(10, steps // 10)
    assert recipe.reason.startswith(f"{n_train} training conversations: {steps} steps of {batch} conversations")


def test_numbers_given_replace_the_size_rule():
    from ecombot.config import fit_to_data

    cfg, recipe = fit_to_data(load_config(None, epochs=2, learning_rate=2e-4, batch_size=8, eval_steps=50), 63)
    assert (cfg.epochs, cfg.learning_rate, cfg.batch_size, cfg.eval_steps, cfg.max_steps) == (2, 2e-4, 8, 50, -1)
    assert "passes" not in recipe.reason


def test_a_recorded_config_trains_on_as_it_was_recorded():
    """Resume and `learn` rebuild a run's config from run_config.json: one recorded before ungrounded prompts keeps
    none; a recorded share, and every other recorded value, is kept as it was."""
    before = {k: v for k, v in TrainConfig(learning_rate=3e-4).to_dict().items() if k != "ungrounded_share"}
    assert TrainConfig.recorded(before) == TrainConfig(learning_rate=3e-4, ungrounded_share=0.0)
    assert TrainConfig.recorded(TrainConfig(ungrounded_share=0.2).to_dict()).ungrounded_share == 0.2
    assert TrainConfig().ungrounded_share == 0.1
