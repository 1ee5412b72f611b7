"""The IC-recall HookedTransformer: hook names, frozen weights, geometry, variants, and the shape checker."""

import pytest
import torch
from jaxtyping import TypeCheckError

import icr_interp
from icr_interp.model.memory import AssociativeMemory
from icr_interp.task.prompts import Layout
from icr_interp.training.trainer import query_logits

from _golden_hooks import GOLDEN_HOOKS


def test_shape_checker_is_active(shared_task):
    """conftest's import hook checks jaxtyping shapes at runtime: mis-shaped calls raise."""
    model = icr_interp.build_model(shared_task)
    batch = shared_task.sample(4, seed=0)
    assert query_logits(model, batch.tokens, batch.layout.query_end).shape == (4, 37)
    with pytest.raises(TypeCheckError, match="query_pos"):  # batch 4 vs 3
        query_logits(model, batch.tokens, batch.layout.query_end[:3])
    with pytest.raises(TypeCheckError):  # [batch pos] expected, got [batch]
        query_logits(model, batch.tokens[:, 0], batch.layout.query_end)
    with pytest.raises(TypeCheckError):  # the memory wants [batch pos d_model]
        model.blocks[0].mlp(torch.zeros(4, 128))
    with pytest.raises(TypeCheckError):  # dataclass fields are checked too: batch 4 vs 5
        Layout(torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long),
               torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeCheckError):  # dtype: Int expected
        Layout(*(torch.zeros(4, 2),) * 2, *(torch.zeros(4),) * 2)


def test_golden_hook_names(shared_task):
    model = icr_interp.build_model(shared_task)
    assert list(model.hook_dict) == GOLDEN_HOOKS
    _, cache = model.run_with_cache(shared_task.sample(2, seed=0).tokens)
    assert set(cache.keys()) <= set(GOLDEN_HOOKS)
    assert {"blocks.0.mlp.hook_relation", "blocks.0.attn.hook_pattern", "blocks.0.hook_mlp_out"} <= set(cache.keys())


def test_only_attention_qk_trains(shared_task):
    from icr_interp.training.trainer import trainable_names

    model = icr_interp.build_model(shared_task)
    assert sorted(trainable_names(model)) == ["blocks.0.attn.W_K", "blocks.0.attn.W_Q", "blocks.0.attn.b_K",
                                              "blocks.0.attn.b_Q"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    icr_interp.finetune(model, shared_task, n_samples=32, steps=3, seed=0, progress=False)
    changed = sorted(n for n, p in model.named_parameters() if not torch.equal(p, before[n]))
    assert {"blocks.0.attn.W_K", "blocks.0.attn.W_Q"} <= set(changed) <= set(trainable_names(model))
    frozen = {"embed.W_E", "pos_embed.W_pos", "unembed.W_U", "blocks.0.attn.W_V", "blocks.0.attn.W_O",
              "blocks.0.mlp.W_rel_in", "blocks.0.mlp.W_in", "blocks.0.mlp.W_out"}
    assert frozen.isdisjoint(changed)
    assert all(p.requires_grad for p in model.parameters())  # building freezes nothing; training restores flags


def test_embeddings_are_the_basis(shared_task):
    model = icr_interp.build_model(shared_task)
    basis = model.basis
    assert basis.exact and model.cfg.d_model == basis.d_model == 128  # 3 * 37 + 6 + 4 = 121 -> 128
    assert torch.equal(model.W_E, basis.token)
    assert torch.equal(model.W_pos, basis.pos)
    assert torch.equal(model.W_U, basis.output.T)
    assert torch.count_nonzero(model.b_U) == 0
    every = torch.cat([basis.token, basis.pos, basis.context, basis.relation, basis.output])
    assert torch.allclose(every @ every.T, torch.eye(121), atol=1e-5)  # exactly orthonormal


def test_ov_copies_into_context_directions(shared_task):
    model = icr_interp.build_model(shared_task)
    basis, attn = model.basis, model.blocks[0].attn
    ov = basis.token @ attn.W_V[0] @ attn.W_O[0]
    # Scaled by 2k = 4 so uniform attention over the 4 context tokens gives each weight 1.
    assert torch.allclose(ov, 4 * basis.context, atol=1e-5)
    assert torch.allclose(basis.pos @ attn.W_V[0], torch.zeros(6, 128), atol=1e-5)  # positions are not copied


def test_memory_is_the_last_mlp(shared_task):
    model = icr_interp.build_model(shared_task)
    assert isinstance(model.blocks[-1].mlp, AssociativeMemory)
    assert model.blocks[-1].mlp.construction == model.icr_config.construction == "pair"
    assert model.icr_config.memory == "constructed"
    assert model.blocks[0].mlp.hook_relation.name == "blocks.0.mlp.hook_relation"


def test_initial_attention_is_answer_tilted(shared_task):
    """With init_scale=0 the query's attention scores are exactly init_tilt on answer slots, 0 elsewhere."""
    model = icr_interp.build_model(shared_task, init_scale=0.0, init_tilt=2.0)
    batch = shared_task.sample(8, seed=0)
    _, cache = model.run_with_cache(batch.tokens, names_filter="blocks.0.attn.hook_attn_scores")
    scores = cache["blocks.0.attn.hook_attn_scores"][:, 0, -1]  # query row
    expected = torch.tensor([0.0, 0.0, 2.0, 0.0, 2.0, 0.0]).expand(8, -1)
    assert torch.allclose(scores, expected, atol=1e-5)
    # The default (random W_Q/W_K on top) starts answer-heavy, i.e. not pairwise.
    model = icr_interp.build_model(shared_task)
    _, cache = model.run_with_cache(batch.tokens, names_filter="blocks.0.attn.hook_pattern")
    row = cache["blocks.0.attn.hook_pattern"][:, 0, -1].mean(0)
    answers, subjects = row[batch.layout.answer_end[0]], row[batch.layout.subject_end[0]]
    assert (answers > 5 * subjects).all()


def test_seed_controls_basis_and_init(shared_task):
    a, b, c = (icr_interp.build_model(shared_task, seed=s) for s in (3, 3, 4))
    assert torch.equal(a.W_Q, b.W_Q) and torch.equal(a.W_E, b.W_E)
    assert not torch.equal(a.W_E, c.W_E) and not torch.equal(a.W_Q, c.W_Q)


@pytest.mark.parametrize("n_heads, n_layers", [(2, 1), (1, 2), (2, 2)])
def test_variants_build_and_run(shared_task, n_heads, n_layers):
    model = icr_interp.build_model(shared_task, n_heads=n_heads, n_layers=n_layers)
    batch = shared_task.sample(8, seed=0)
    logits = model(batch.tokens)
    assert logits.shape == (8, 6, 37) and torch.isfinite(logits).all()
    assert isinstance(model.blocks[-1].mlp, AssociativeMemory) and len(model.blocks) == n_layers
    assert model.blocks[0].attn.W_Q.shape == (n_heads, 128, 128)
    for block in model.blocks[:-1]:  # earlier MLPs are zeroed, not memories
        assert not isinstance(block.mlp, AssociativeMemory)
        assert all(torch.count_nonzero(p) == 0 for p in block.mlp.parameters())
    last = n_layers - 1
    assert f"blocks.{last}.mlp.hook_relation" in model.hook_dict
    assert len([n for n in model.hook_dict if n.endswith("hook_relation")]) == 1
    from icr_interp.training.trainer import trainable_names

    trainable = trainable_names(model)
    assert {n.split(".")[-1] for n in trainable} == {"W_Q", "W_K", "b_Q", "b_K"}
    assert len(trainable) == 4 * n_layers


def test_two_heads_split_the_ov_copy(shared_task):
    """Two heads with identical patterns (no random QK) write what one head writes: OV is divided by n_heads."""
    batch = shared_task.sample(16, seed=1)
    with torch.no_grad():
        one = icr_interp.build_model(shared_task, n_heads=1, init_scale=0.0)(batch.tokens)
        two = icr_interp.build_model(shared_task, n_heads=2, init_scale=0.0)(batch.tokens)
    assert torch.allclose(one, two, atol=1e-4)
    assert float(one[:, -1].max()) > 1.0  # the memory fires: the comparison is not between zeros


def test_build_model_rejects_bad_arguments(shared_task):
    with pytest.raises(ValueError, match="memory must be one of"):
        icr_interp.build_model(shared_task, memory="lookup_table")
    with pytest.raises(ValueError, match="n_heads must be an integer"):
        icr_interp.build_model(shared_task, n_heads=0)
    with pytest.raises(TypeError):
        icr_interp.build_model(shared_task, not_a_field=1)


def test_small_d_model_uses_random_unit_basis(shared_task):
    model = icr_interp.build_model(shared_task, d_model=64)
    assert not model.basis.exact and model.cfg.d_model == 64
    assert torch.allclose(model.W_E.norm(dim=1), torch.ones(37), atol=1e-5)
    logits = model(shared_task.sample(4, seed=0).tokens)
    assert logits.shape == (4, 6, 37) and torch.isfinite(logits).all()


def test_config_round_trips(shared_task):
    model = icr_interp.build_model(shared_task, init_tilt=1.5, seed=2)
    cfg = model.icr_config.to_dict()
    assert cfg["construction"] == "pair" and cfg["d_model"] == 128 and cfg["init_tilt"] == 1.5 and cfg["seed"] == 2
    again = icr_interp.model.builder.model_from_config(shared_task, icr_interp.ModelConfig(**cfg))
    for (n, p), (_, q) in zip(model.named_parameters(), again.named_parameters()):
        assert torch.equal(p, q), n
