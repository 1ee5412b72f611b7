"""The random (non-exact) basis copies every token exactly; the factored memory equals the dense one."""

import pytest
import torch

import icr_interp
from icr_interp.model.basis import ResidualBasis
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.prompts import ICRecallTask


def test_random_basis_keeps_small_groups_exact_and_copies_tokens_exactly():
    task = ICRecallTask(KnowledgeBase.random(200, 4, 200, seed=0), n_pairs=3)
    basis = ResidualBasis.make(task.vocab, task.n_ctx, d_model=128, seed=1)
    assert not basis.exact
    assert torch.allclose(basis.token @ basis.copy, basis.context, atol=1e-5)
    exact = torch.cat([basis.pos, basis.relation])
    assert torch.allclose(exact @ exact.T, torch.eye(len(exact)), atol=1e-5)
    for group in (basis.token, basis.context, basis.output):
        assert (group @ exact.T).abs().max() < 1e-5  # no leak into positions / relations
        assert torch.allclose(group.norm(dim=1), torch.ones(len(group)), atol=1e-5)
    assert (exact @ basis.copy).abs().max() < 1e-5  # positions are never copied


def test_exact_basis_copy_map():
    task = ICRecallTask(KnowledgeBase.random(16, 4, 16, seed=0), n_pairs=2)
    basis = ResidualBasis.make(task.vocab, task.n_ctx, d_model=256, seed=0)
    assert basis.exact
    assert torch.allclose(basis.token @ basis.copy, basis.context, atol=1e-5)


@pytest.mark.parametrize("overlap,d_model", [(1.0, 0), (0.0, 0), (1.0, 96)])
def test_factored_memory_equals_dense(overlap, d_model):
    task = ICRecallTask(KnowledgeBase.random(24, 4, 24, answer_overlap=overlap, seed=3), n_pairs=3)
    dense = icr_interp.build_model(task, d_model=d_model or None, memory_impl="dense")
    factored = icr_interp.build_model(task, d_model=d_model or None, memory_impl="factored")
    assert type(factored.blocks[0].mlp).__name__ == "FactoredMemory"
    batch = task.sample(32, seed=5)
    out_d, cache_d = dense.run_with_cache(batch.tokens)
    out_f, cache_f = factored.run_with_cache(batch.tokens)
    assert set(cache_d.keys()) == set(cache_f.keys())
    for name in cache_d.keys():
        a, b = cache_d[name], cache_f[name]
        finite = torch.isfinite(a)  # masked attention scores are -inf in both
        assert torch.equal(finite, torch.isfinite(b)), name
        scale = max(1.0, a[finite].abs().max().item())
        assert (a[finite] - b[finite]).abs().max().item() <= 1e-4 * scale, name
    for w in ("W_rel_in", "W_rel_out", "W_in", "W_out"):
        assert torch.allclose(getattr(dense.blocks[0].mlp, w), getattr(factored.blocks[0].mlp, w), atol=1e-5), w
