"""OV read-out of every head (Geva et al. 2023, "Dissecting recall of factual associations"): which heads'
OV circuits map the subject to its attribute.

For each head (l, h) and prompt, the head's OV output for one source token -- what the head would write
at the prediction position if it attended only there::

    v = LN1_l(resid_pre_l[src]) W_V[l, h] + b_V[l, h],   out = v W_O[l, h]

is projected through the unembedding (``out W_U``: with TransformerLens's folded LayerNorm the final norm's
weight is in ``W_U``, and the remaining normalisation is a positive scale that leaves ranks unchanged), and
the rank of a token among the vocabulary is read (0 = top).  Sources and tokens:

* ``rank``: the query subject's last token -> the target answer's first token (attribute extraction);
* ``null_rank``: the same source -> another answer of the same relation (what any answer-writing head gets:
  a head ranks the *right* answer only if ``rank`` is well below this);
* ``context_rank``: each context answer's first token -> the target answer (mean over pairs);
* ``copy_rank``: each context answer's first token -> itself (a copying head).

Heads are ordered by median ``rank`` over prompts (:meth:`OVReadout.top`); comparing them with the lookup
heads found by patching (SmolLM2-135M: L23H4, layer 23) says whether the head that moves the answer also
*extracts* it in its OV circuit.  One forward pass caches the residual streams; the rest is weight products.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from icr_interp.model import hooks as H
from icr_interp.task.batch import Batch
from icr_interp.tl.compat import TLModel


@dataclass
class OVReadout:
    """Median ranks ``[layer head]`` over prompts (0 = the token is the head's top logit)."""

    rank: Float[Tensor, "layer head"]  # query subject's last token -> target answer
    null_rank: Float[Tensor, "layer head"]  # query subject's last token -> another answer of the relation
    context_rank: Float[Tensor, "layer head"]  # context answers' first tokens -> target answer
    copy_rank: Float[Tensor, "layer head"]  # context answers' first tokens -> themselves
    n_prompts: int
    d_vocab: int

    def top(self, n: int = 10, key: str = "rank") -> list[dict]:
        """The ``n`` heads with the best (lowest) median ``key`` rank."""
        values = getattr(self, key)
        order = values.flatten().argsort()[:n]
        n_heads = values.shape[1]
        return [self.head(int(i) // n_heads, int(i) % n_heads) for i in order]

    def head(self, layer: int, head: int) -> dict:
        """One head's ranks (and where it stands in the ``rank`` ordering)."""
        place = int((self.rank < self.rank[layer, head]).sum())
        return dict(head=f"L{layer}H{head}", layer=layer, index=head, rank=float(self.rank[layer, head]),
                    null_rank=float(self.null_rank[layer, head]), context_rank=float(self.context_rank[layer, head]),
                    copy_rank=float(self.copy_rank[layer, head]), place=place)

    def to_dict(self, n: int = 10) -> dict:
        return dict(n_prompts=self.n_prompts, d_vocab=self.d_vocab, top=self.top(n),
                    top_context=self.top(n, "context_rank"), top_copy=self.top(n, "copy_rank"),
                    rank=self.rank.tolist(), null_rank=self.null_rank.tolist(),
                    context_rank=self.context_rank.tolist(), copy_rank=self.copy_rank.tolist())


def null_answers(batch: Batch) -> Int[Tensor, " batch"]:
    """For each prompt, the target of another prompt of the same relation with a different target
    (the next such prompt, cyclically); the nearest different target of any relation if there is none."""
    ans, rel = batch.answers, batch.relations
    out = ans.clone()
    n = len(ans)
    for i in range(n):
        for j in [(i + d) % n for d in range(1, n)]:
            if ans[j] != ans[i] and rel[j] == rel[i]:
                out[i] = ans[j]
                break
        else:
            out[i] = next((ans[j] for j in [(i + d) % n for d in range(1, n)] if ans[j] != ans[i]), ans[i])
    return out


def head_ov(attn, x: Float[Tensor, "n d_model"]) -> Float[Tensor, "n head d_model"]:
    """What each head of ``attn`` writes for a (normalised) source residual ``x``: ``(x W_V + b_V) W_O``."""
    v = torch.einsum("nd,hde->nhe", x, attn.W_V) + attn.b_V
    return torch.einsum("nhe,hef->nhf", v, attn.W_O)


def _ranks(out: Float[Tensor, "batch head d_model"], W_U: Tensor, tokens: Int[Tensor, "batch"]) -> Tensor:
    """Rank of ``tokens[b]`` in ``out[b, h] @ W_U`` for every head: ``[batch head]`` (ties count against it,
    so a head that writes nothing ranks every token last)."""
    logits = out @ W_U  # [batch head vocab]
    target = logits.gather(-1, tokens[:, None, None].expand(-1, logits.shape[1], 1))
    return ((logits >= target).sum(-1) - 1).float()


@torch.no_grad()
def ov_readout(model: TLModel, batch: Batch, chunk: int = 16) -> OVReadout:
    """Median OV read-out ranks of every head (module docstring) on ``batch``'s prompts.

    Args:
        model: a TransformerLens model (a real LM from :func:`icr_interp.load_pretrained_lm` or ours).
        batch: prompts with their layout (:class:`~icr_interp.task.text.TextICRecallTask` or the toy task).
        chunk: prompts per forward pass.
    """
    layers, heads = model.cfg.n_layers, model.cfg.n_heads
    per = {k: [] for k in ("rank", "null_rank", "context_rank", "copy_rank")}
    nulls = null_answers(batch)
    dev = model.W_U.device
    for start in range(0, len(batch), chunk):
        b = batch[start:start + chunk].to(dev)
        null = nulls[start:start + chunk].to(dev)
        names = {H.hook(layer, "resid_pre") for layer in range(layers)}
        _, cache = model.run_with_cache(b.tokens, names_filter=lambda name: name in names, return_type=None)
        rows = torch.arange(len(b), device=dev)
        ctx_pos, ctx_tok = b.layout.answer_start, b.tokens.gather(1, b.layout.answer_start)
        out = {k: torch.zeros(len(b), layers, heads, device=dev) for k in per}
        for layer in range(layers):
            block = model.blocks[layer]
            resid = cache[H.hook(layer, "resid_pre")]
            normed = block.ln1(resid) if hasattr(block, "ln1") else resid

            q = head_ov(block.attn, normed[rows, b.layout.query_end])
            out["rank"][:, layer] = _ranks(q, model.W_U, b.answers)
            out["null_rank"][:, layer] = _ranks(q, model.W_U, null)
            k = ctx_pos.shape[1]
            c = head_ov(block.attn, normed[rows[:, None], ctx_pos].flatten(0, 1))  # [batch*pair head d_model]
            target = b.answers.repeat_interleave(k)
            out["context_rank"][:, layer] = _ranks(c, model.W_U, target).view(len(b), k, heads).mean(1)
            out["copy_rank"][:, layer] = _ranks(c, model.W_U, ctx_tok.flatten()).view(len(b), k, heads).mean(1)
        for key in per:
            per[key].append(out[key].cpu())
    med = {key: torch.cat(v).median(0).values for key, v in per.items()}
    return OVReadout(**med, n_prompts=len(batch), d_vocab=model.cfg.d_vocab)


def compare_with_lookup(readout: OVReadout, heads: list[tuple[int, int]], n: int = 10) -> dict:
    """Where heads found otherwise (e.g. the lookup heads of patching) stand in the OV read-out.

    Returns ``top`` (the ``n`` best heads by median rank), ``heads`` (each given head's ranks and place in
    that ordering; place 0 = best of all heads), ``overlap`` (given heads among the top ``n``) and
    ``chance`` (how many a random set of that size would put there: ``len(heads) n / n_heads_total``).
    """
    top = readout.top(n)
    names = {f"L{layer}H{head}" for layer, head in heads}
    total = readout.rank.numel()
    return dict(top=top, heads=[readout.head(layer, head) for layer, head in heads],
                overlap=sorted(names & {t["head"] for t in top}), chance=len(heads) * n / total)
