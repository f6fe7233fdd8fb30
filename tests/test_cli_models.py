"""`vlm models` and `vlm info`, called through `vlm.cli.main` as a user's shell would."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import vlm
from vlm.cli import main
from vlm.models.checkpoint import model_payload, save_checkpoint
from vlm.models.parameter_count import config_parameter_count


def test_vlm_models_lists_all_seven_names_with_their_family_and_size(capsys):
    assert main(["models"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[1:]}
    assert sorted(rows) == ["clip-base16", "clip-base32", "clip-small", "clip-tiny",
                            "fusion-base32", "fusion-small", "fusion-tiny"]
    assert rows["clip-base32"] == ["dual_encoder", "151,277,313"]  # OpenCLIP ViT-B-32's count
    assert rows["fusion-tiny"][0] == "early_fusion"
    assert rows["clip-tiny"][1] == f"{vlm.count_parameters(vlm.create_model('clip-tiny')):,}"


@pytest.mark.parametrize("name", vlm.list_models())
@pytest.mark.parametrize("variant", ["plain", "vqa head", "logit bias"])
def test_worked_out_parameter_counts_match_the_built_models(name, variant):
    """`vlm models` counts from the config (building needs timm, seconds to import): it must match the model."""
    config = vlm.get_model_config(name)
    if variant == "vqa head":
        config = dataclasses.replace(config, vqa_answers=("yes", "no", "2"))
    if variant == "logit bias" and config.arch == "dual_encoder":
        config = dataclasses.replace(config, init_logit_bias=-10.0)
    with torch.device("meta"):  # shapes only: no memory, no random init for the ViT-B sizes
        assert config_parameter_count(config) == vlm.count_parameters(vlm.create_model(config))


def test_vlm_info_shows_a_checkpoints_size_config_and_training_step(tmp_path, clip_tiny, capsys):
    save_checkpoint(model_payload(clip_tiny) | {"step": 120}, tmp_path / "run.pt")
    assert main(["info", str(tmp_path / "run.pt")]) == 0
    out = capsys.readouterr().out
    assert f"parameters: {vlm.count_parameters(clip_tiny):,}" in out
    assert "training step: 120" in out
    assert '"name": "clip-tiny"' in out and '"arch": "dual_encoder"' in out


def test_vlm_info_on_a_broken_file_prints_one_line_naming_it_and_exits_2(tmp_path, capsys):
    (tmp_path / "broken.pt").write_bytes(b"\x00" * 64)
    assert main(["info", str(tmp_path / "broken.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("vlm info: error:") and "broken.pt" in err


def test_an_unknown_subcommand_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2
