"""Golden logits of checkpoints written by older code: loading them today gives the very same logits.

``tests/data/`` holds checkpoints saved by the code of two earlier commits, each with the tokens and the logits
*that code* computed (``NAME.expected.safetensors``):

* ``legacy_tiny_pair``, ``legacy_tiny_mixed``: format 1, written before the layered package (107afe1);
* ``pre_fastfwd_two_layer`` (2 layers x 2 heads) and ``pre_fastfwd_positional`` (positional attention): format 2,
  written by 8d2f5e4, the commit before the forward pass changed ("two layers at one-layer speed", adbe5ca),
  each fine-tuned 5 steps so that W_Q/W_K are not the builder's.

The tolerance is zero (``torch.equal``): a change to the forward pass that moves any logit of an old checkpoint,
even by 1e-7, must come with an explicit migration rule and a test stating its tolerance.
"""

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from icr_interp.storage.checkpoint import load_checkpoint

DATA = Path(__file__).resolve().parents[1] / "data"
GOLDEN = {"legacy_tiny_pair": 1, "legacy_tiny_mixed": 1, "pre_fastfwd_two_layer": 2, "pre_fastfwd_positional": 2}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_old_checkpoints_give_their_own_logits_bit_for_bit(name):
    config = json.loads((DATA / name / "config.json").read_text())
    assert config["format"] == f"icr_interp-checkpoint/{GOLDEN[name]}"
    expected = safetensors.torch.load_file(DATA / f"{name}.expected.safetensors")
    model = load_checkpoint(DATA / name).model
    model.eval()
    with torch.no_grad():
        logits = model(expected["tokens"])
    assert logits.shape == expected["logits"].shape
    assert torch.equal(logits, expected["logits"]), f"{name}: max |diff| {(logits - expected['logits']).abs().max():.2e}"


def test_the_golden_set_covers_two_layers_and_positional_attention():
    cfgs = {n: json.loads((DATA / n / "config.json").read_text())["model"] for n in GOLDEN}
    assert cfgs["pre_fastfwd_two_layer"]["n_layers"] == 2 and cfgs["pre_fastfwd_two_layer"]["n_heads"] == 2
    assert cfgs["pre_fastfwd_positional"]["attention"] == "positional"


def test_a_moved_logit_fails_the_golden_check(tmp_path):
    """The check can fail: one weight nudged by 1e-6 changes the logits of the same tokens."""
    expected = safetensors.torch.load_file(DATA / "pre_fastfwd_two_layer.expected.safetensors")
    model = load_checkpoint(DATA / "pre_fastfwd_two_layer").model
    model.eval()
    with torch.no_grad():
        model.blocks[0].attn.W_Q.add_(1e-6)
        assert not torch.equal(model(expected["tokens"]), expected["logits"])
