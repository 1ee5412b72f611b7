"""The sparse memory is the dense memory: outputs, logits, loss, gradients, hooks, checkpoints.

Random-basis cases (small d_model) have crosstalk: every read carries
O(1/sqrt(d_model)) leaks from other directions, so the exact bound (on the
reads themselves, not on an idealised basis) is what keeps the result exact.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import icr_interp
from icr_interp.model.forward import query_logits
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.model.memory import DENSE_MAX_WEIGHTS, MemoryScales, choose_impl, construct_memory
from icr_interp.model.memory.sparse import SparseMemory
from icr_interp.task.prompts import ICRecallTask

N_WIDE = ("hook_rel_pre", "hook_rel_post", "hook_pre", "hook_post")
HOOKS = ("hook_rel_pre", "hook_rel_post", "hook_relation", "hook_pre", "hook_post")
TOL = 1e-5  # relative to the compared tensor's scale (fp32 outputs reach ~50)


def scaled_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() / max(1.0, a.abs().max().item())


def make(overlap: float, d_model: int | None, n_subjects: int = 24, n_relations: int = 4, seed: int = 3):
    task = ICRecallTask(KnowledgeBase.random(n_subjects, n_relations, n_subjects, answer_overlap=overlap, seed=seed),
                        n_pairs=3)
    model = icr_interp.build_model(task, d_model=d_model, memory_impl="dense")
    return task, model


def memory_of(model, task, impl: str):
    cfg = model.icr_config
    return construct_memory(cfg.construction, task.kb, task.vocab, model.basis, task.n_pairs,
                            MemoryScales(**cfg.scales), impl=impl)


def with_memory(model, memory):
    """The same model with another memory implementation attached (same attention weights)."""
    import copy

    other = copy.deepcopy(model)
    other.blocks[-1].mlp = memory
    other.setup()
    return other


CASES = [(1.0, None), (0.0, None), (1.0, 96), (0.0, 96)]  # pair / answer construction, exact / random basis


@pytest.mark.parametrize("overlap,d_model", CASES)
def test_sparse_memory_equals_dense_and_factored(overlap, d_model):
    task, model = make(overlap, d_model)
    basis = model.basis
    if d_model:  # random basis: real crosstalk between token and context reads
        assert not basis.exact and float((basis.token @ basis.context.T).fill_diagonal_(0).abs().max()) > 0.1
    mems = {impl: memory_of(model, task, impl) for impl in ("dense", "factored", "sparse")}
    _, cache = model.run_with_cache(task.sample(32, seed=5).tokens, names_filter="blocks.0.hook_resid_mid")
    real = cache["blocks.0.hook_resid_mid"]
    # Plus random inputs of growing norm: many neurons near threshold, and at 30 the chunk
    # falls back to the factored computation (most neurons can fire).
    gen = torch.Generator().manual_seed(0)
    noise = [s * torch.randn(4, 8, basis.d_model, generator=gen) / basis.d_model**0.5 for s in (1.0, 3.0, 30.0)]
    for x in (real, *noise):
        g = torch.randn(x.shape, generator=gen)
        results = {}
        for dtype in (torch.float32, torch.float64):
            for impl, mem in mems.items():
                xi = x.detach().to(dtype).requires_grad_(True)
                out = mem.to(dtype)(xi)
                (out * g.to(dtype)).sum().backward()
                results[impl, dtype] = (out.detach(), xi.grad)
                mem.float()
        fires = (mems["dense"].infer_relation(x) != 0).any()
        assert bool(fires) or x is not real  # real prompts fire stage I: not a comparison of zeros
        for k in range(2):  # output, input gradient
            assert scaled_error(results["dense", torch.float32][k], results["sparse", torch.float32][k]) <= TOL
            # In float64 sparse and factored compute the same numbers: nothing that fires was left out.
            assert scaled_error(results["factored", torch.float64][k], results["sparse", torch.float64][k]) <= 1e-12


@pytest.mark.parametrize("overlap,d_model", [(1.0, 96), (0.0, 96)])
def test_model_logits_loss_and_attention_gradients_match_dense(overlap, d_model):
    task, dense = make(overlap, d_model)
    sparse = with_memory(dense, memory_of(dense, task, "sparse"))
    batch = task.sample(32, seed=7)
    grads = {}
    for name, model in (("dense", dense), ("sparse", sparse)):
        for fast in (False, True):
            model.zero_grad(set_to_none=True)
            if fast:
                logits = query_logits(model, batch.tokens, batch.layout.query_end)
            else:
                full = model(batch.tokens)
                logits = full[torch.arange(len(batch)), batch.layout.query_end]
            loss = F.cross_entropy(logits, batch.answers)
            loss.backward()
            attn = model.blocks[0].attn
            grads[name, fast] = (full.detach() if not fast else logits.detach(), loss.detach(),
                                 attn.W_Q.grad.clone(), attn.W_K.grad.clone())
    for fast in (False, True):
        d, s = grads["dense", fast], grads["sparse", fast]
        assert float(d[2].abs().max()) > 1e-3  # the loss really depends on W_Q
        for a, b in zip(d, s):
            assert scaled_error(a, b) <= TOL


def test_hooks_fire_with_the_dense_values_and_edits_change_the_output():
    task, dense = make(1.0, 96)
    sparse = with_memory(dense, memory_of(dense, task, "sparse"))
    tokens = task.sample(16, seed=2).tokens
    names = [f"blocks.0.mlp.{h}" for h in HOOKS]
    _, cache_d = dense.run_with_cache(tokens, names_filter=names)
    _, cache_s = sparse.run_with_cache(tokens, names_filter=names)
    for n in names:
        assert cache_d[n].shape == cache_s[n].shape
        assert scaled_error(cache_d[n], cache_s[n]) <= TOL, n
    assert float(cache_s["blocks.0.mlp.hook_post"].gt(0).sum()) > 0

    def silence(post, hook):  # an edit of an N-wide hook must reach the output
        return torch.zeros_like(post)

    for hook in ("hook_rel_post", "hook_post"):
        hooks = [(f"blocks.0.mlp.{hook}", silence)]
        edited_d, edited_s = dense.run_with_hooks(tokens, fwd_hooks=hooks), sparse.run_with_hooks(tokens, fwd_hooks=hooks)
        assert scaled_error(edited_d, edited_s) <= TOL
        assert scaled_error(sparse(tokens), edited_s) > 1e-2  # the edit changed the logits
    assert not any(getattr(sparse.blocks[0].mlp, h).fwd_hooks for h in HOOKS)  # no hook left behind


class LargestNeuronTensor(TorchDispatchMode):
    """Records the largest tensor any operation returns with a dimension as wide as a memory stage."""

    def __init__(self, widths: set[int]):
        super().__init__()
        self.widths, self.numel = widths, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and self.widths & set(t.shape):
                self.numel = max(self.numel, t.numel())
        return out


def test_filtered_cache_builds_no_n_wide_tensor():
    task, dense = make(1.0, 256, n_subjects=100, n_relations=16)
    sparse = with_memory(dense, memory_of(dense, task, "sparse"))
    mem = sparse.blocks[0].mlp
    tokens = task.sample(16, seed=3).tokens
    widths = {mem.d_mlp, mem.votes.shape[0]}  # stage II and stage I neurons (1600 and 1483 here)
    with torch.no_grad():
        with LargestNeuronTensor(widths) as probe:
            logits, cache = sparse.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    assert not any(n.endswith(h) for n in cache.keys() for h in N_WIDE)
    # No operation returned a batch x pos x N tensor (a 1-d candidate list of length N at most).
    assert probe.numel < tokens.numel() * min(widths) / 4
    assert scaled_error(dense(tokens), logits) <= TOL
    with torch.no_grad():
        with LargestNeuronTensor(widths) as probe:
            _, cache = sparse.run_with_cache(tokens, names_filter="blocks.0.mlp.hook_post")
    assert cache["blocks.0.mlp.hook_post"].shape == (*tokens.shape, mem.d_mlp)  # asked for: materialised
    assert probe.numel >= tokens.numel() * mem.d_mlp


@pytest.mark.parametrize("overlap", [1.0, 0.0])
def test_state_dict_is_the_factored_one_and_round_trips(overlap):
    task, model = make(overlap, 96)
    sparse, factored = memory_of(model, task, "sparse"), memory_of(model, task, "factored")
    sd = sparse.state_dict()
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in factored.state_dict().items()}
    for w in ("W_rel_in", "W_rel_out", "W_in", "W_out"):
        assert torch.equal(getattr(sparse, w), getattr(factored, w)), w
    x = model.run_with_cache(task.sample(8, seed=1).tokens, names_filter="blocks.0.hook_resid_mid")[1][
        "blocks.0.hook_resid_mid"]
    factored.load_state_dict(sd)
    assert scaled_error(factored(x), sparse(x)) <= TOL
    # Another knowledge base of the same shapes: loading rebuilds the inverted indices.
    seed = next(s for s in range(4, 40) if {k: v.shape for k, v in memory_of(
        model, ICRecallTask(KnowledgeBase.random(24, 4, 24, overlap, seed=s), n_pairs=3), "sparse")
        .state_dict().items()} == {k: v.shape for k, v in sd.items()})
    other = memory_of(model, ICRecallTask(KnowledgeBase.random(24, 4, 24, overlap, seed=seed), n_pairs=3), "sparse")
    assert scaled_error(sparse(x), other(x)) > 1e-2  # different facts, different outputs
    other.load_state_dict(sd)
    assert torch.equal(sparse(x), other(x))


def test_choose_impl_and_construct_memory_spellings():
    assert choose_impl("auto", 512, 448) == "dense"  # the reference model
    assert choose_impl("auto", 10**6, 1024) == "sparse"
    assert choose_impl("auto", DENSE_MAX_WEIGHTS // 64, 64) == "dense"
    assert choose_impl("auto", DENSE_MAX_WEIGHTS // 64 + 1, 64) == "sparse"
    for impl in ("dense", "factored", "sparse"):
        assert choose_impl(impl, 10**6, 1024) == impl
    with pytest.raises(ValueError, match="memory_impl must be"):
        choose_impl("fast", 10, 10)
    task, model = make(1.0, None)
    cfg = model.icr_config
    args = (cfg.construction, task.kb, task.vocab, model.basis, task.n_pairs)
    with pytest.deprecated_call(match="""construct_memory: 'factored=...' is deprecated .* write 'impl="factored"'"""):
        assert type(construct_memory(*args, factored=True)).__name__ == "FactoredMemory"  # the old keyword
    with pytest.deprecated_call():  # any use of the old keyword warns, False included
        assert type(construct_memory(*args, factored=False)).__name__ == "AssociativeMemory"
    assert isinstance(construct_memory(*args, impl="sparse"), SparseMemory)
    with pytest.raises(ValueError, match="impl must be one of"):
        construct_memory(*args, impl="fast")
