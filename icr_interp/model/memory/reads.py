"""The mixed memory on a random basis: reads and writes that carry no attention crosstalk.

When the vocabulary does not fit ``d_model`` exactly (:mod:`icr_interp.model.basis`: the built-in country
base needs 1899 directions, ``default_d_model`` caps at 1024), token, context and output directions
are random unit vectors and every read of the attended context picks up crosstalk ~ 1/sqrt(d_model),
growing with how concentrated attention is.  At the mixed memory's start -- already at the Bayes
ceiling -- these crosstalk terms are the only part of the loss attention can still move, and Adam's
scale-free steps turn them into large, task-blind changes of the pattern (docs/theory.md §2b, "The start as a flat optimum").
So, where the vocabulary plus the subjects fit in the random part of the basis, the mixed memory
reads with directions that ignore everything attention can write except what it should read:

* stage I reads ``dual[t]``: ``context[t'] . dual[t] = [t == t']`` and ``token[s] . dual[t] = 0`` for
  every subject s (the query's own token), so each read is exactly the attended weight of t;
* stage II reads ``lookup[s]``: ``token[s]`` with its component in the span of the context directions
  removed and rescaled so that ``token[s] . lookup[s] = 1``, so attention's output never moves it;
* the memory subtracts the attention output's direct path (its projection on the context span),
  which an exact basis has by construction (context directions are orthogonal to output ones).

Under an exact basis nothing changes (the reference model is pinned).
"""

import torch
import torch.nn.functional as F
from dataclasses import replace
from torch import Tensor, nn

from icr_interp.model import hooks as H
from icr_interp.model.basis import ResidualBasis


def crosstalk_free(basis: ResidualBasis, subject_tokens: Tensor) -> tuple[ResidualBasis, Tensor] | None:
    """(the basis the mixed memory reads with, the ``[d_model d_model]`` projector on the context span),
    or None where the basis is exact (nothing to remove) or the context span leaves no room."""
    n_exact = basis.pos.shape[0] + basis.relation.shape[0]
    n_vocab, d_model = basis.context.shape
    if basis.exact or n_vocab + len(subject_tokens) > d_model - n_exact:
        return None
    C, T = basis.context.double(), basis.token.double()
    q, _ = torch.linalg.qr(C.T)  # [d_model vocab] orthonormal basis of the context span
    lookup = T - (T @ q) @ q.T
    lookup = lookup / (T * lookup).sum(1, keepdim=True).clamp_min(1e-6)
    qs, _ = torch.linalg.qr(T[subject_tokens].T)
    off = C - (C @ qs) @ qs.T  # context directions with the subjects' token span removed
    dual = torch.linalg.solve(off @ C.T, off)  # dual @ C.T = I, dual @ token[subjects].T = 0
    return replace(basis, token=lookup.float(), context=dual.float()), (q @ q.T).float()


@torch.no_grad()
def query_readout(model, batch) -> dict:
    """Where the memory stands at the query: the numbers behind a collapse to the BOS sink.

    Returns mean attention mass on BOS / subjects / answers, the true and the largest wrong relation
    coefficient of the relation vector, how many stage-I and stage-II neurons fire, loss and accuracy
    (``batch``: a :class:`~icr_interp.task.batch.Batch` of the model's task; one-layer models).
    """
    cache, rows = {}, torch.arange(len(batch), device=batch.tokens.device)
    grab = lambda name: lambda t, hook: cache.__setitem__(name, t[rows, ..., batch.layout.query_end, :])  # noqa: E731
    names = ["pattern", "rel_post", "relation", "mlp_post"]
    logits = model.run_with_hooks(batch.tokens, fwd_hooks=[(H.hook(0, n), grab(n)) for n in names])
    pattern, lay = cache["pattern"][:, 0], batch.layout  # [batch pos]: head 0, the query row
    rho = cache["relation"] @ model.basis.relation.T  # [batch relation]
    true = rho[rows, batch.relations]
    logits = logits[rows, lay.query_end]
    return dict(bos=float(pattern[rows, lay.bos_pos].mean()), subjects=float(pattern.gather(1, lay.subject_end).sum(1).mean()),
                answers=float(pattern.gather(1, lay.answer_end).sum(1).mean()), rel_true=float(true.mean()),
                rel_wrong=float(rho.scatter(1, batch.relations[:, None], float("-inf")).amax(1).mean()),
                stage1_firing=float((cache["rel_post"] > 0).sum(-1).float().mean()),
                stage2_firing=float((cache["mlp_post"] > 0).sum(-1).float().mean()),
                loss=float(F.cross_entropy(logits, batch.answers)), accuracy=float((logits.argmax(-1) == batch.answers).float().mean()))
