"""The TransformerLens line switch (icr_interp.tl.compat) and the 4.x mirror of HookedTransformer.

Runs on either line.  On 3.x the mirror is built beside TransformerLens's own
``HookedTransformer`` and must match it exactly: hook names and order,
``state_dict`` keys, seeded initial weights, logits and every cached
activation, bit for bit.  On both lines the golden hook names of
``tests/model/test_builder.py`` hold, the mirror's ``hook_attn_scores`` is really
pre-softmax, and a checkpoint written under the *other* line (by the other
virtual environment's interpreter: ``.venv-tl4`` from ``.venv`` and back)
loads here with identical logits.
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from _golden_hooks import GOLDEN_HOOKS

import icr_interp
from icr_interp import ICRecallTask, KnowledgeBase, build_model, load_checkpoint
from icr_interp.tl import compat
from icr_interp.tl.config import MirrorConfig
from icr_interp.tl.mirror import MirrorTransformer

ROOT = Path(__file__).resolve().parents[2]
STOCK = dict(n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=64, d_vocab=50, n_ctx=8, act_fn="gelu",
             normalization_type="LN", device="cpu")  # the stock model of test_patching / test_templates
FLAGS = ("use_attn_result", "use_split_qkv_input", "use_attn_in", "use_hook_mlp_in")
on_3x = pytest.mark.skipif(compat.TL_LINE != 3, reason="compares with TransformerLens 3.x's HookedTransformer")


def tokens(n: int = 4, pos: int = 7, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randint(vocab, (n, pos), generator=torch.Generator().manual_seed(seed))


def mirror_like_model_py(model: torch.nn.Module) -> MirrorTransformer:
    """The mirror built the way model.py builds an ICRModel, carrying ``model``'s memory and weights.

    Config as ``model._tl_config``; ``move_to_device=False`` as ``ICRModel.__init__``; the memory swapped in as
    ``blocks[-1].mlp``, ``cfg.d_mlp`` set to its width, ``setup()``, then ``.to(device, print_details=False)``.
    """
    c = model.cfg
    cfg = MirrorConfig(n_layers=c.n_layers, d_model=c.d_model, d_head=c.d_model, n_heads=c.n_heads, n_ctx=c.n_ctx,
                       d_vocab=c.d_vocab, d_mlp=1, act_fn="relu", normalization_type=None,
                       positional_embedding_type="standard", default_prepend_bos=False, seed=None, device="cpu")
    mirror = MirrorTransformer(cfg, move_to_device=False)
    memory = copy.deepcopy(model.blocks[-1].mlp)
    mirror.blocks[-1].mlp = memory
    mirror.cfg.d_mlp = memory.d_mlp
    mirror.setup()
    mirror.load_state_dict(model.state_dict(), strict=True)
    return mirror.to("cpu", print_details=False)


# ------------------------------------------------------------------ the switch
def test_line_switch_picks_the_right_base():
    assert compat.TL_LINE == int(compat.TL_VERSION.split(".")[0])
    model = build_model(ICRecallTask(KnowledgeBase.random(8, 2, 8, 1.0, seed=0), n_pairs=2))
    assert isinstance(model, compat.ModelBase) and compat.HookedTransformer is compat.ModelBase
    if compat.TL_LINE == 3:
        import transformer_lens

        assert compat.ModelBase is transformer_lens.HookedTransformer  # 3.x users keep the real thing
        assert compat.HookedTransformerConfig is transformer_lens.HookedTransformerConfig
    else:
        from transformer_lens.model_protocol import TransformerLensModel

        assert compat.ModelBase is MirrorTransformer and compat.HookedTransformerConfig is MirrorConfig
        assert isinstance(model, TransformerLensModel)  # what 4.x's patching is typed to
        with pytest.raises(ImportError, match="removed in TransformerLens 4.0"):
            from transformer_lens import HookedTransformer  # noqa: F401


def test_golden_hook_names_on_this_line(shared_task):
    model = build_model(shared_task)
    assert list(model.hook_dict) == GOLDEN_HOOKS
    assert list(mirror_like_model_py(model).hook_dict) == GOLDEN_HOOKS


# ------------------------------------------------------- mirror == HookedTransformer (3.x)
@on_3x
@pytest.mark.parametrize("n_heads, n_layers", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_mirror_equals_hooked_transformer_for_our_models(shared_task, n_heads, n_layers):
    """Our models: hooks, state_dict, logits and every activation identical (bit for bit)."""
    model = build_model(shared_task, n_heads=n_heads, n_layers=n_layers, d_model=40)
    mirror = mirror_like_model_py(model)
    assert list(mirror.hook_dict) == list(model.hook_dict)
    assert [(k, v.shape) for k, v in mirror.state_dict().items()] == [(k, v.shape) for k, v in
                                                                      model.state_dict().items()]
    batch = shared_task.sample(16, seed=4)
    with torch.no_grad():
        ref, ref_cache = model.run_with_cache(batch.tokens)
        got, cache = mirror.run_with_cache(batch.tokens)
    assert torch.equal(got, ref) and ref[:, -1].abs().max() > 1  # the memory fires: not a comparison of zeros
    assert list(cache.keys()) == list(ref_cache.keys())
    assert all(torch.equal(cache[k], ref_cache[k]) for k in ref_cache.keys())


@on_3x
@pytest.mark.parametrize("overrides", [{}, dict(normalization_type=None, act_fn="relu"), dict(attn_only=True),
                                       dict(n_layers=1, n_heads=4, d_head=8, attention_dir="bidirectional")])
def test_mirror_equals_stock_hooked_transformer(overrides):
    """Stock configs (LayerNorm, gelu, attention-only): same seeded weights, same logits and caches, every flag."""
    kw = {**STOCK, **overrides, "seed": 0}
    ref, mirror = compat.HookedTransformer(compat.HookedTransformerConfig(**kw)), MirrorTransformer(MirrorConfig(**kw))
    assert list(mirror.hook_dict) == list(ref.hook_dict)
    assert list(mirror.state_dict()) == list(ref.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(mirror.state_dict().values(), ref.state_dict().values()))
    x = tokens()
    for flag in (None, *FLAGS):
        if flag:  # flags accumulate: the last pass has all four on
            setattr(ref.cfg, flag, True)
            setattr(mirror.cfg, flag, True)
        with torch.no_grad():
            (out_r, cache_r), (out_m, cache_m) = ref.run_with_cache(x), mirror.run_with_cache(x)
        assert torch.equal(out_m, out_r), flag
        assert list(cache_m.keys()) == list(cache_r.keys()), flag
        assert max((cache_m[k] - cache_r[k]).abs().max().item() for k in cache_r.keys()) == 0.0, flag
    loss_r, loss_m = ref(x, return_type="loss"), mirror(x, return_type="loss")
    assert torch.equal(loss_m, loss_r) and 3.0 < loss_m.item() < 5.0  # ~ln 50 for random weights


@on_3x
def test_mirror_residual_entry_points_match():
    """start_at_layer / stop_at_layer as 3.x: the residual before block 1, then the rest of the model."""
    kw = {**STOCK, "seed": 3}
    ref, mirror = compat.HookedTransformer(compat.HookedTransformerConfig(**kw)), MirrorTransformer(MirrorConfig(**kw))
    x = tokens(seed=1)
    with torch.no_grad():
        mid_r, mid_m = ref(x, stop_at_layer=1), mirror(x, stop_at_layer=1)
        assert torch.equal(mid_m, mid_r) and mid_m.shape == (4, 7, 32)
        assert torch.equal(mirror(mid_m, start_at_layer=1), ref(mid_r, start_at_layer=1))
        assert torch.equal(mirror(mid_m, start_at_layer=1), mirror(x))


# ------------------------------------------------------------------ mirror on either line
def test_attn_scores_hook_is_pre_softmax_and_editable():
    """Adding 50 to one key's score moves (almost) all attention there; the pattern is its softmax."""
    model = MirrorTransformer(MirrorConfig(**{**STOCK, "seed": 0}))
    x = tokens()
    _, cache = model.run_with_cache(x)
    scores, pattern = cache["blocks.0.attn.hook_attn_scores"], cache["blocks.0.attn.hook_pattern"]
    assert torch.allclose(scores.softmax(-1), pattern, atol=1e-6)
    assert torch.isinf(scores[0, 0, 0, 1]) and scores[0, 0, 0, 1] < 0  # causal mask: -inf before softmax

    def boost(act, hook):
        act = act.clone()
        act[:, :, -1, 2] += 50.0
        return act

    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_attn_scores", boost)]):
        _, edited = model.run_with_cache(x, names_filter="blocks.0.attn.hook_pattern")
    assert edited["blocks.0.attn.hook_pattern"][:, :, -1, 2].min() > 0.999
    assert pattern[:, :, -1, 2].max() < 0.9


def test_attn_result_sums_to_attn_out():
    model = MirrorTransformer(MirrorConfig(**{**STOCK, "seed": 1}))
    with pytest.raises(AssertionError, match="use_attn_result"):  # it never fires without the flag (as 3.x)
        model.add_hook("blocks.0.attn.hook_result", lambda act, hook: act)
    model.cfg.use_attn_result = True
    _, cache = model.run_with_cache(tokens())
    result = cache["blocks.0.attn.hook_result"]  # [batch pos head d_model]
    assert result.shape == (4, 7, 2, 32)
    assert torch.allclose(result.sum(2) + model.blocks[0].attn.b_O, cache["blocks.0.hook_attn_out"], atol=1e-6)
    assert isinstance(cache, compat.ActivationCache)
    assert cache.stack_activation("attn_out").shape == (2, 4, 7, 32)


def test_mirror_properties_and_state_round_trip():
    model = MirrorTransformer(MirrorConfig(**{**STOCK, "seed": 2}))
    assert model.W_Q.shape == (2, 2, 32, 16) and model.W_O.shape == (2, 2, 16, 32) and model.b_Q.shape == (2, 2, 16)
    assert model.W_E.shape == (50, 32) and model.W_pos.shape == (8, 32) and model.W_U.shape == (32, 50)
    assert model.W_in.shape == (2, 32, 64) and model.W_E_pos.shape == (58, 32)
    assert model.QK.AB.shape == (2, 2, 32, 32) and model.cfg.attn_scale == 4.0  # sqrt(d_head)
    assert model.cfg.initializer_range == pytest.approx(0.8 / 32**0.5)
    assert model.W_Q.std().item() == pytest.approx(0.8 / 32**0.5, rel=0.1)
    again = MirrorTransformer(MirrorConfig(**STOCK))
    again.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(again(tokens()), model(tokens()))
    assert model.to("cpu", print_details=False) is model and model.cfg.device == "cpu"
    assert torch.equal(model.to_tokens(torch.tensor([1, 2, 3])), torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match="tokenizer"):
        model.to_tokens("no tokenizer here")


def test_mirror_stays_in_eval_mode_after_setup():
    """4.x's patching needs eval mode: setup() (construction, and after a module swap) provides it."""
    model = MirrorTransformer(MirrorConfig(**STOCK))
    assert not any(m.training for m in model.modules())
    model.blocks[-1].mlp = torch.nn.Sequential(torch.nn.Identity())  # a fresh module is in training mode
    assert model.blocks[-1].mlp.training
    model.setup()
    assert not any(m.training for m in model.modules())
    model.train()
    assert compat.ensure_eval(model) is model and not model.training


@pytest.mark.parametrize("bad, match", [(dict(positional_embedding_type="rotary"), "positional_embedding_type"),
                                        (dict(normalization_type="RMS"), "normalization_type"),
                                        (dict(n_key_value_heads=1), "n_key_value_heads"),
                                        (dict(act_fn="solu_ln"), "act_fn")])
def test_mirror_refuses_what_it_does_not_implement(bad, match):
    with pytest.raises(NotImplementedError, match=match):
        MirrorTransformer(MirrorConfig(**{**STOCK, **bad}))


# ------------------------------------------------------------------ checkpoints across lines
OTHER_LINE_SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
from safetensors.torch import save_file
from icr_interp import ICRecallTask, KnowledgeBase, build_model, save_checkpoint
from icr_interp.tl import compat
from icr_interp.training.trainer import finetune
out = sys.argv[1]
task = ICRecallTask(KnowledgeBase.random(16, 4, 16, 1.0, seed=0), n_pairs=2)
model = build_model(task, n_heads=2)
finetune(model, task, n_samples=64, steps=10, batch_size=16, progress=False)
save_checkpoint(out + "/ckpt", model, task)
stock = compat.ModelBase(compat.HookedTransformerConfig(**json.loads(sys.argv[2]), seed=0))
x = torch.randint(50, (4, 8), generator=torch.Generator().manual_seed(5))
with torch.no_grad():
    save_file({k: v.contiguous() for k, v in stock.state_dict().items()}, out + "/stock.safetensors")
    save_file({"icr": model(task.sample(16, seed=3).tokens), "stock": stock(x), "x": x}, out + "/logits.safetensors")
print(json.dumps({"line": compat.TL_LINE, "version": compat.TL_VERSION}))
"""


def other_line_python() -> Path | None:
    """The interpreter of the other line's virtual environment (``ICR_OTHER_PYTHON`` overrides)."""
    if os.environ.get("ICR_OTHER_PYTHON"):
        return Path(os.environ["ICR_OTHER_PYTHON"])
    venv = ".venv-tl4" if compat.TL_LINE == 3 else ".venv"
    candidate = ROOT / venv / "bin" / "python"
    return candidate if candidate.exists() else None


def test_checkpoint_from_the_other_line_gives_identical_logits(tmp_path):
    """Save (checkpoint + raw safetensors state_dict) under the other line, load under this one: equal logits."""
    python = other_line_python()
    if python is None:
        pytest.skip("no virtual environment of the other TransformerLens line (.ci/run creates .venv-tl4)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    run = subprocess.run([str(python), "-c", OTHER_LINE_SCRIPT, str(tmp_path), json.dumps(STOCK)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    other = json.loads(run.stdout.strip().splitlines()[-1])
    if other["line"] == compat.TL_LINE:
        pytest.skip(f"{python} runs the same TransformerLens line ({other['version']})")
    saved = load_file(tmp_path / "logits.safetensors")
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert isinstance(ckpt.model, compat.ModelBase) and list(ckpt.model.hook_dict) == GOLDEN_HOOKS
    with torch.no_grad():
        assert torch.equal(ckpt.model(ckpt.task.sample(16, seed=3).tokens), saved["icr"])
        stock = compat.ModelBase(compat.HookedTransformerConfig(**STOCK))
        stock.load_state_dict(load_file(tmp_path / "stock.safetensors"), strict=True)
        assert torch.equal(stock(saved["x"]), saved["stock"])
    assert saved["icr"][:, -1].abs().max() > 1 and saved["stock"].std() > 0.1  # real logits, not zeros
    print(f"checkpoint TransformerLens {other['version']} -> {compat.TL_VERSION}: identical logits")
    sys.stdout.flush()


def test_icr_interp_imports_no_moved_transformer_lens_name():
    """Outside compat and the mirror, nothing imports HookedTransformer(Config) from TransformerLens itself."""
    offenders = []
    for path in sorted((ROOT / "icr_interp").rglob("*.py")):
        if path.name in ("compat.py",) or path.name.startswith("tl_"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith(("from transformer_lens", "import transformer_lens")) and (
                    "HookedTransformer" in line or "hook_points import HookedRootModule" in line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}")
    assert icr_interp.__version__ and offenders == []
