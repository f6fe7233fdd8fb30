"""Model configs: YAML -> frozen dataclasses, every mistake reported with the file and the field."""

from __future__ import annotations

import dataclasses

import pytest

import vlm
from vlm.config import ConfigError, apply_overrides, read_yaml, to_dict
from vlm.models.config import model_config_from_dict


def write(tmp_path, text: str, name: str = "model.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_an_unknown_key_is_rejected_by_name_with_the_keys_that_exist(tmp_path):
    path = write(tmp_path, "name: m\narch: dual_encoder\nembed_dimm: 64\n")
    with pytest.raises(ConfigError, match=r"model\.yaml: unknown key\(s\) \['embed_dimm'\].*embed_dim"):
        vlm.get_model_config(path)


def test_an_unknown_nested_key_is_rejected_with_its_path(tmp_path):
    path = write(tmp_path, "name: m\narch: dual_encoder\nimage: {widht: 64}\n")
    with pytest.raises(ConfigError, match=r"model\.yaml: image: unknown key\(s\) \['widht'\] for ImageTowerConfig"):
        vlm.get_model_config(path)


@pytest.mark.parametrize("line, message", [
    ("image: {depth: two}", r"image\.depth: expected int, got 'two'"),
    ("image: {depth: true}", r"image\.depth: expected int, got True"),
    ("image: 3", r"image: expected a mapping for ImageTowerConfig"),
    ("vqa_answers: red", r"vqa_answers: expected a list"),
    ("vqa_answers: [red, [blue]]", r"vqa_answers\[1\]: expected str"),
    ("quick_gelu: 1", r"quick_gelu: expected bool, got 1"),
])
def test_a_value_of_the_wrong_type_names_the_field(tmp_path, line, message):
    path = write(tmp_path, f"name: m\narch: dual_encoder\n{line}\n")
    with pytest.raises(ConfigError, match=rf"model\.yaml: {message}"):
        vlm.get_model_config(path)


def test_yes_and_no_stay_answers_rather_than_becoming_booleans(tmp_path):
    path = write(tmp_path, "name: m\narch: early_fusion\nvqa_answers: [yes, no, 2, red]\n")
    assert vlm.get_model_config(path).vqa_answers == ("yes", "no", "2", "red")
    assert read_yaml(write(tmp_path, "flag: true\noff_switch: false\n", "flags.yaml")) == \
        {"flag": True, "off_switch": False}


def test_integers_are_accepted_where_floats_are_expected(tmp_path):
    config = vlm.get_model_config(write(tmp_path, "name: m\narch: dual_encoder\nimage: {mlp_ratio: 2}\n"))
    assert config.image.mlp_ratio == 2.0 and isinstance(config.image.mlp_ratio, float)


@pytest.mark.parametrize("arch_line", ["", "arch: late_fusion\n"], ids=["missing", "unknown"])
def test_the_arch_field_must_name_a_family(tmp_path, arch_line):
    expected = r"model\.yaml: field 'arch' must be one of \['dual_encoder', 'early_fusion'\]"
    with pytest.raises(ConfigError, match=expected):
        vlm.get_model_config(write(tmp_path, f"name: m\n{arch_line}"))


def test_a_missing_required_field_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.yaml: .*'name'"):
        vlm.get_model_config(write(tmp_path, "arch: dual_encoder\n"))


def test_an_early_fusion_vocabulary_must_leave_room_for_the_mask_token(tmp_path):
    with pytest.raises(ConfigError, match=r"vocab_size must exceed 49408"):
        vlm.get_model_config(write(tmp_path, "name: m\narch: early_fusion\nvocab_size: 49408\n"))


def test_files_that_are_missing_or_not_yaml_mappings_are_reported(tmp_path):
    with pytest.raises(ConfigError, match=r"absent\.yaml: no such config file"):
        vlm.get_model_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        vlm.get_model_config(write(tmp_path, "name: [unclosed\n", "broken.yaml"))
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping at the top level, got list"):
        vlm.get_model_config(write(tmp_path, "- a\n- b\n", "list.yaml"))


def test_an_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown model 'clip-huge'; known: clip-base16, .*fusion-tiny"):
        vlm.create_model("clip-huge")


def test_overrides_set_nested_values_and_are_checked_like_the_file():
    config = vlm.get_model_config("clip-tiny", ["image.width=48", "embed_dim=16", "init_logit_bias=-10"])
    assert (config.image.width, config.embed_dim, config.init_logit_bias) == (48, 16, -10.0)
    assert config.image.depth == vlm.get_model_config("clip-tiny").image.depth
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['depthh'\]"):
        vlm.get_model_config("clip-tiny", ["image.depthh=3"])
    with pytest.raises(ConfigError, match=r"override 'image\.width': expected key=value"):
        apply_overrides({}, ["image.width"])
    with pytest.raises(ConfigError, match=r"override 'name\.x=1': 'name' is not a section"):
        apply_overrides({"name": "m"}, ["name.x=1"])


def test_overrides_do_not_change_the_data_they_start_from():
    data = {"image": {"width": 32}}
    apply_overrides(data, ["image.width=64"])
    assert data == {"image": {"width": 32}}


def test_every_named_config_survives_a_round_trip_through_plain_data():
    for name in vlm.list_models():
        config = vlm.get_model_config(name)
        assert model_config_from_dict(to_dict(config)) == config, name


def test_configs_are_frozen():
    config = vlm.get_model_config("clip-tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.embed_dim = 3


def test_floats_written_without_a_dot_are_floats(tmp_path):
    from vlm.train import load_train_config

    path = tmp_path / "recipe.yaml"
    path.write_text("model: clip-tiny\nobjective: clip\ndata: {train: x.csv}\nlr: 5e-4\nweight_decay: 1E-2\n")
    config = load_train_config(path, ["warmup_steps=10", "eps=1e-8"])
    assert (config.lr, config.weight_decay, config.eps, config.warmup_steps) == (5e-4, 1e-2, 1e-8, 10)
