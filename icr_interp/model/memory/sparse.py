"""An exact sparse evaluation of the constructed memories: compute only the neurons that can fire.

Both stages of a constructed memory (:mod:`icr_interp.model.memory.table`) are thresholded
sums of two *reads* of the input, each an exact number per row:

* stage I, neuron n with keys (a, b):  ``pre = c[a] + c[b] - theta[n]``  with
  ``c = x @ context.T``.  ``pre > 0`` needs ``max(c[a], c[b]) > theta[n] / 2``
  (a one-key neuron needs ``c[a] > theta[n]``), so the candidates are the neurons
  an inverted index lists under the few *hot* tokens of each row (hot: above the
  smallest of these bounds over all neurons);
* stage II, neuron (s, r):  ``pre = u[s] + w[r] - theta2``  with
  ``u = y @ token.T``, ``w = y @ relation.T``.  ``pre > 0`` needs
  ``u[s] > theta2 - w[r]``: per row and relation, the subjects above that
  bound are a prefix of the row's subjects sorted by ``u`` (one top-k).

No orthonormality is assumed: crosstalk only changes the reads, and the bound
is on the reads themselves.  Selection keeps a margin of a worst-case fp32
error bound of the reads (``_slack``), so every omitted neuron has
pre-activation <= 0 in the dense memory too, hence output 0 and gradient 0:
logits, loss and gradients equal the dense memory's to float rounding
(tests/model/test_memory_sparse.py; derivation in docs/theory.md).  The kept
neurons are recomputed with autograd from gathered rows, so gradients reach
``x`` through both stages exactly as in the dense memory.  Cost per row: the
two dense reads (O(vocab * d_model)) plus O(candidates * d_model), instead of
O(n_facts) (factored) or O(n_facts * d_model) (dense).

Hooks sized to what is read: the N-wide hook points (``hook_rel_pre``,
``hook_rel_post``, ``hook_pre``, ``hook_post``) are only materialised when a
hook is registered on them (``run_with_hooks``, ``model.hooks``, or
``run_with_cache`` whose ``names_filter`` selects them).  Then that stage runs
the :class:`~icr_interp.model.memory.factored.FactoredMemory` way, so the hook sees the dense
``[batch pos n_neurons]`` values and an edit to them changes the output.  With
no such hook (e.g. ``names_filter`` naming only ``hook_pattern``) no
``n_neurons x pos x batch`` tensor is ever built.  ``hook_relation`` is
``d_model`` wide and always runs.
"""

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from icr_interp.model.basis import ResidualBasis
from icr_interp.model.memory.factored import FactoredMemory
from icr_interp.model.memory.registry import register
from icr_interp.model.memory.table import MemoryTable

ROW_CHUNK = 256  # rows per dense read: bounds the [rows vocab] temporaries of long full forwards
# A chunk whose candidates exceed this fraction of all its (row, neuron) pairs runs the
# factored way: same result, and a bad input (e.g. thresholds <= 0) costs no more than factored.
DENSE_FRACTION = 0.25
# A read's backward multiplies its gradient (nonzero only at the reads of firing neurons) by the
# directions; below this density a sparse product is faster than the dense one (measured on 2 cores:
# 4x faster at 1.6% density, equal near 6%).
SPARSE_GRAD_DENSITY = 0.05


def _hooked(*points: HookPoint) -> bool:
    """Whether any of these hook points has a forward or backward hook registered."""
    return any(p.fwd_hooks or p.bwd_hooks for p in points)


class _Read(torch.autograd.Function):
    """``rows @ directions.T`` whose backward multiplies a mostly-zero gradient as a sparse matrix."""

    @staticmethod
    def forward(ctx, rows, directions):
        ctx.save_for_backward(directions)
        return rows @ directions.T

    @staticmethod
    def backward(ctx, grad):
        (directions,) = ctx.saved_tensors
        if int(torch.count_nonzero(grad)) < SPARSE_GRAD_DENSITY * grad.numel():
            return torch.sparse.mm(grad.to_sparse(), directions), None
        return grad @ directions, None


def _span(tokens: Tensor) -> tuple[int, int]:
    """Smallest id range holding ``tokens``: its directions are read as one contiguous view."""
    return (int(tokens.min()), int(tokens.max()) + 1) if len(tokens) else (0, 0)


def _ranges(start: Int[Tensor, " k"], count: Int[Tensor, " k"]) -> Int[Tensor, " total"]:
    """``cat([arange(s, s + c) for s, c in zip(start, count)])`` without a Python loop."""
    offsets = torch.cumsum(count, 0) - count
    return torch.arange(int(count.sum()), device=count.device) + torch.repeat_interleave(start - offsets, count)


class SparseMemory(FactoredMemory):
    """A constructed memory evaluated at the neurons that can fire (see module docstring).

    Same buffers as :class:`~icr_interp.model.memory.factored.FactoredMemory` (so the same
    ``state_dict`` keys and shapes, the same checkpoints), the same dense
    weight views (``W_rel_in``, ``W_rel_out``, ``W_in``, ``W_out``), the same
    hook points and the same function.  The inverted indices are derived from
    those buffers (non-persistent) and rebuilt after ``load_state_dict``.
    The N-wide hooks are built only when hooked (module docstring).
    """

    def __init__(self, table: MemoryTable, basis: ResidualBasis, construction: str):
        super().__init__(table, basis, construction)
        self._build_index()
        self.register_load_state_dict_post_hook(lambda module, incompatible: module._build_index())

    def _build_index(self) -> None:
        """Inverted index token -> stage-I neurons, and table (subject, relation) -> stage-II neuron."""
        n_vocab, n_rel = len(self.context), len(self.votes)
        two_keys = self.key_b < n_vocab
        keys = torch.cat([self.key_a, self.key_b[two_keys]])
        self.read_span = _span(keys)  # stage I reads context[lo:hi]
        lo, hi = self.read_span
        local_a = self.key_a - lo
        local_b = torch.where(two_keys, self.key_b - lo, hi - lo)  # hi - lo: the pad column "no token"
        entry_token = torch.cat([local_a, local_b[two_keys]])
        entry_neuron = torch.cat([torch.arange(n_rel), torch.arange(n_rel)[two_keys]]).to(self.key_a.device)
        order = torch.argsort(entry_token, stable=True)
        degree = torch.bincount(entry_token, minlength=hi - lo)
        for name, value in dict(local_a=local_a, local_b=local_b, index_neuron=entry_neuron[order],
                                index_ptr=F.pad(torch.cumsum(degree, 0), (1, 0))).items():
            self.register_buffer(name, value, persistent=False)
        # Stage I: c[a] + c[b] > theta needs max(c[a], c[b]) > theta / 2; one key alone needs c[a] > theta.
        bounds = torch.where(two_keys, self.threshold / 2, self.threshold)
        self.hot_bound = float(bounds.min()) if len(bounds) else 0.0
        self.lookup_span = _span(self.subject)  # stage II reads token[lo:hi]
        lo2, hi2 = self.lookup_span
        fact_of = torch.full((hi2 - lo2, len(self.relation)), -1, dtype=torch.long, device=self.subject.device)
        fact_of[self.subject - lo2, self.relation_id] = torch.arange(len(self.subject), device=self.subject.device)
        if int((fact_of >= 0).sum()) != len(self.subject):
            raise ValueError("a sparse memory needs one stage-II neuron per (subject, relation)")
        self.register_buffer("fact_of", fact_of, persistent=False)
        self.answer_span = _span(self.answer)  # stage II writes output[lo:hi]
        # Largest direction norm: scales the fp error bound of one read (see _slack).
        self.dir_norm = float(torch.cat([self.context, self.token, self.relation]).norm(dim=1).max())

    def _slack(self, rows: Float[Tensor, "row d_model"]) -> Float[Tensor, " row"]:
        """Margin covering fp32 rounding: |fl(x.v) - x.v| <= gamma_d |x| |v| per read (Higham),
        doubled for the two reads of a neuron and again for the dense memory's own rounding."""
        gamma = (rows.shape[-1] + 2) * torch.finfo(rows.dtype).eps / 2
        return 8 * gamma * self.dir_norm * rows.detach().norm(dim=-1)

    # ------------------------------------------------------------------ forward
    def infer_relation(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """Stage I (sparse unless its N-wide hooks are hooked)."""
        if _hooked(self.hook_rel_pre, self.hook_rel_post):
            return super().infer_relation(x)
        rows = x.reshape(-1, x.shape[-1])
        if not len(rows):  # nothing to read (an empty batch)
            return torch.zeros_like(x)
        coef = torch.cat([self._relation_coef(chunk) for chunk in rows.split(ROW_CHUNK)])
        return self.relation_vector(coef).reshape(x.shape)

    def lookup(self, y: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """Stage II (sparse unless its N-wide hooks are hooked)."""
        if _hooked(self.hook_pre, self.hook_post):
            return super().lookup(y)
        rows = y.reshape(-1, y.shape[-1])
        if not len(rows):
            return torch.zeros_like(y)
        return torch.cat([self._lookup_rows(chunk) for chunk in rows.split(ROW_CHUNK)]).reshape(y.shape)

    def _relation_coef(self, rows: Float[Tensor, "row d_model"]) -> Float[Tensor, "row relation"]:
        """Each row's relation coefficients ``post @ votes`` from the stage-I neurons that can fire."""
        lo, hi = self.read_span
        c = F.pad(_Read.apply(rows, self.context[lo:hi]), (0, 1))  # [row tokens+1]; last column: "no token"
        with torch.no_grad():
            slack = self._slack(rows)
            hot = c.detach() > (self.hot_bound - slack)[:, None]
            hot[:, -1] = False
            hot_row, hot_token = torch.nonzero(hot, as_tuple=True)
            start, count = self.index_ptr[hot_token], self.index_ptr[hot_token + 1] - self.index_ptr[hot_token]
            dense = int(count.sum()) > DENSE_FRACTION * len(rows) * len(self.votes)
            if not dense:
                row, neuron = hot_row.repeat_interleave(count), self.index_neuron[_ranges(start, count)]
                a, b = self.local_a[neuron], self.local_b[neuron]
                # A neuron listed under both hot keys is taken once: from key a if a is hot, else from b.
                first = (hot_token.repeat_interleave(count) == a) | ~hot[row, a]
                keep = first & (c[row, a] + c[row, b] - self.threshold[neuron] > -slack[row])
                row, neuron, a, b = row[keep], neuron[keep], a[keep], b[keep]
        if dense:
            return F.relu(c[:, self.local_a] + c[:, self.local_b] - self.threshold) @ self.votes
        # Read the kept neurons from c: their gradient flows back through c's (sparse) backward.
        pre = c[row, a] + c[row, b] - self.threshold[neuron]
        fire = pre.detach() > 0  # the rest have output 0 and gradient 0: drop them before gathering votes
        pre, row, neuron = pre[fire], row[fire], neuron[fire]
        coef = torch.zeros(len(rows), self.votes.shape[1], dtype=rows.dtype, device=rows.device)
        return coef.index_add(0, row, pre[:, None] * self.votes[neuron])

    def _lookup_rows(self, rows: Float[Tensor, "row d_model"]) -> Float[Tensor, "row d_model"]:
        """Stage II output from the (subject, relation) neurons that can fire."""
        lo, hi = self.lookup_span
        u, w = _Read.apply(rows, self.token[lo:hi]), rows @ self.relation.T  # [row subjects], [row relation]
        with torch.no_grad():
            bound = self.lookup_threshold - w.detach() - self._slack(rows)[:, None]
            n_top = int((u.detach() > bound.min(1, keepdim=True).values).sum(1).max())
            top_u, top_s = u.detach().topk(n_top, dim=1)  # descending: the subjects above a bound are a prefix
            count = n_top - torch.searchsorted(top_u.flip(1).contiguous(), bound.contiguous(), right=True)
            dense = int(count.sum()) > DENSE_FRACTION * len(rows) * len(self.subject)
            if not dense:
                pair_row, pair_rel = torch.nonzero(count >= 0, as_tuple=True)  # every (row, relation), row-major
                n = count.flatten()
                row, rel = pair_row.repeat_interleave(n), pair_rel.repeat_interleave(n)
                s = top_s[row, _ranges(torch.zeros_like(n), n)]
                neuron = self.fact_of[s, rel]
                row, neuron, s = row[neuron >= 0], neuron[neuron >= 0], s[neuron >= 0]
        if dense:
            return super().lookup(rows[:, None])[:, 0]
        pre = u[row, s] + w[row, self.relation_id[neuron]] - self.lookup_threshold
        fire = pre.detach() > 0
        pre, row, neuron = pre[fire], row[fire], neuron[fire]
        answer = self.answer[neuron]
        if len(row) * rows.shape[1] <= 2 * u.numel():  # gathered output rows: no larger than the read
            out = torch.zeros_like(rows).index_add(0, row, pre[:, None] * self.output[answer])
        else:  # many firing: one [row answers] @ [answers d_model] product (as the factored memory does)
            lo3, hi3 = self.answer_span
            per_answer = torch.zeros(len(rows), hi3 - lo3, dtype=rows.dtype, device=rows.device)
            out = per_answer.index_put((row, answer - lo3), pre, accumulate=True) @ self.output[lo3:hi3]
        return self.logit_gain * out


@register("sparse")
def build_sparse(table: MemoryTable, basis: ResidualBasis, construction: str) -> SparseMemory:
    """A sparse memory holding ``table``'s neurons written in ``basis``."""
    return SparseMemory(table, basis, construction)
