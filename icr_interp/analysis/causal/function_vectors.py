"""Function-vector heads (Todd et al. 2024): the field's standard way to find the heads that carry a task.

Todd et al. take each attention head's output at the last token, averaged over *clean* in-context prompts
of a task (the mean activation ``mean_z[l, h]``), and write it into prompts whose context answers are
*shuffled* across the pairs (the pairs no longer show the relation, the query and its target unchanged).
A head's *causal indirect effect* is how much that raises the probability of the query's correct answer:

    CIE(l, h) = mean over shuffled prompts of  P(target | shuffled, z[l, h] := mean_z[l, h]) - P(target | shuffled)

Heads with a large CIE carry the task (the relation, for IC-recall) from the context to the prediction;
the paper sums the top heads' mean outputs into the *function vector*.  Here every head is patched alone.

On a text task, the shuffled prompts are ``task.corrupt(batch, "shuffle")`` (the answers permuted among pairs
of equal token length, so every span keeps its place).  Patches run through the patching engine
(:func:`~icr_interp.analysis.causal.patching.patch_activations`, one :class:`~icr_interp.analysis.causal.patching.Patch` per
head, the source run being the shuffled run with the heads' means at the prediction row); its metric reads
only the prediction position, so each patch costs one row through the blocks from the patched layer on (the
suffix strategy) and gives what a hooked forward per head gives.

Example::

    clean, shuffled, _ = task.sample_pairs(64, "shuffle", seed=0)
    fv = function_vector_heads(model, clean, shuffled)
    print(fv)            # top heads by indirect effect
    fv.top(10)           # [(layer, head), ...]
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from icr_interp.analysis.causal.patching.core import Patch
from icr_interp.analysis.causal.patching.engine import base_run, patch_activations
from icr_interp.model import hooks as H
from icr_interp.task.batch import Batch
from icr_interp.task.tokens import check_model_tokens
from icr_interp.tl.compat import TLModel


@dataclass(frozen=True)
class FunctionVectorResult:
    """Causal indirect effect of every head's mean output on shuffled prompts (module docstring)."""

    indirect_effect: Float[Tensor, "layer head"]  # mean increase of P(target) when the head's z is its clean mean
    stderr: Float[Tensor, "layer head"]  # its standard error over the shuffled prompts
    p_clean: float  # mean P(target) on the clean prompts
    p_shuffled: float  # mean P(target) on the shuffled prompts (the patched runs' baseline)
    accuracy_clean: float  # top-1 accuracy on the clean prompts
    accuracy_shuffled: float  # top-1 accuracy on the shuffled prompts
    n_prompts: int  # shuffled prompts patched
    n_mean: int  # clean prompts the mean activations average over
    method: str  # "suffix" (the engine's cheapest strategy) or "engine" (its general hooked forward)

    def top(self, n: int = 10) -> list[tuple[int, int]]:
        """The ``n`` heads with the largest indirect effect, largest first."""
        order = self.indirect_effect.flatten().argsort(descending=True)[:n].tolist()
        n_heads = self.indirect_effect.shape[1]
        return [(i // n_heads, i % n_heads) for i in order]

    def to_dict(self) -> dict:
        return dict(indirect_effect=self.indirect_effect.tolist(), stderr=self.stderr.tolist(), p_clean=self.p_clean,
                    p_shuffled=self.p_shuffled, accuracy_clean=self.accuracy_clean,
                    accuracy_shuffled=self.accuracy_shuffled, n_prompts=self.n_prompts, n_mean=self.n_mean,
                    method=self.method, top=[list(h) for h in self.top(10)])

    def __str__(self) -> str:
        lines = [f"FunctionVectorResult: {self.n_prompts} shuffled prompts, means over {self.n_mean} clean ones "
                 f"({self.method}); P(target) clean {self.p_clean:.3f}, shuffled {self.p_shuffled:.3f}; "
                 f"accuracy clean {self.accuracy_clean:.3f}, shuffled {self.accuracy_shuffled:.3f}",
                 f"  {'head':>7} {'CIE':>8} {'se':>7}"]
        for layer, head in self.top(10):
            lines.append(f"  L{layer:>2}H{head:<3} {self.indirect_effect[layer, head]:8.4f} "
                         f"{self.stderr[layer, head]:7.4f}")
        return "\n".join(lines)

    __repr__ = __str__


@torch.no_grad()
def mean_head_outputs(model: TLModel, batch: Batch) -> Float[Tensor, "layer head d_head"]:
    """Every head's ``z`` at the prediction position, averaged over ``batch`` (each example's own position)."""
    check_model_tokens(model, batch.tokens, "batch.tokens")
    names = {H.hook(layer, "z") for layer in range(model.cfg.n_layers)}
    b = batch.to(model.cfg.device)
    _, cache = model.run_with_cache(b.tokens, names_filter=lambda n: n in names)
    rows = torch.arange(len(b), device=b.tokens.device)
    return torch.stack([cache[H.hook(layer, "z")][rows, b.layout.pred_pos].mean(0)
                        for layer in range(model.cfg.n_layers)])


def _target_prob(logits: Float[Tensor, "row vocab"], target: Int[Tensor, " row"]) -> Float[Tensor, " row"]:
    return logits.float().softmax(-1).gather(-1, target[:, None])[:, 0]


@dataclass(frozen=True)
class _TargetProb:
    """P(target) of each example at its prediction position; declares that position (the engine unembeds it only)."""

    targets: Int[Tensor, " batch"]
    pred: Int[Tensor, " batch"]

    def read_positions(self, n_pos: int) -> Int[Tensor, " batch"]:
        return self.pred

    def on_rows(self, rows: Float[Tensor, "batch vocab"]) -> Float[Tensor, " batch"]:
        return _target_prob(rows, self.targets.to(rows.device))

    def __call__(self, logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, " batch"]:
        return self.on_rows(logits[torch.arange(len(self.pred), device=logits.device), self.pred.to(logits.device)])


@torch.no_grad()
def function_vector_heads(model: TLModel, clean: Batch, shuffled: Batch, *, mean_over: Batch | None = None,
                          method: str | None = None, max_rows: int = 4096) -> FunctionVectorResult:
    """Causal indirect effect of every head (Todd et al. 2024), batched over heads and prompts.

    Args:
        model: any HookedTransformer (a pretrained LM on a text task, a toy model, a stock model).
        clean: in-context prompts (their prediction-position head outputs give the means, unless ``mean_over``).
        shuffled: prompts with the context answers shuffled (``task.corrupt(clean, "shuffle")``); each keeps
            its own target, whose probability is measured.
        mean_over: other clean prompts to average head outputs over (the paper uses a separate set).
        method: ``"suffix"`` (the engine's cheapest exact strategy; default) or ``"engine"`` (the engine's
            general hooked forward, for comparison).
        max_rows: rows per block call (memory bound).

    Returns:
        :class:`FunctionVectorResult` with the ``[layer head]`` indirect effects.
    """
    check_model_tokens(model, shuffled.tokens, "shuffled.tokens")
    method = method or "suffix"
    if method not in ("suffix", "engine"):
        raise ValueError(f"method must be 'suffix' or 'engine', got {method!r}")
    means = mean_head_outputs(model, clean if mean_over is None else mean_over)  # [layer head d_head]
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    dev = model.cfg.device
    sh = shuffled.to(dev)
    hooks = [H.hook(layer, "z") for layer in range(n_layers)]
    base = base_run(model, sh.tokens, hooks)
    pred = sh.layout.pred_pos
    metric = _TargetProb(sh.answers, pred)
    p_base = metric(base.logits)
    rows = torch.arange(len(sh), device=dev)
    source = {}
    for layer, hook in enumerate(hooks):  # the base run's z with every head's prediction row set to its mean
        z = base.cache[hook].clone()
        z[rows, pred] = means[layer].to(z)
        source[hook] = z
    at_pred = torch.arange(sh.tokens.shape[1], device=dev)[None] == pred[:, None]
    patches = [Patch(hook, at_pred, head=h) for hook in hooks for h in range(n_heads)]
    probs = patch_activations(model, sh.tokens, source, patches, metric, base_run=base, max_rows=max_rows,
                              strategy="general" if method == "engine" else None).reshape(n_layers, n_heads, -1)
    effect = probs - p_base  # [layer head batch]
    logits = base.logits
    clean_logits = model(clean.tokens.to(dev))[torch.arange(len(clean), device=dev), clean.layout.pred_pos.to(dev)]
    n = len(sh)
    return FunctionVectorResult(
        indirect_effect=effect.mean(-1).cpu(), stderr=(effect.std(-1) / max(1, n) ** 0.5).cpu() if n > 1
        else torch.zeros(n_layers, n_heads), p_clean=float(_target_prob(clean_logits, clean.answers.to(dev)).mean()),
        p_shuffled=float(p_base.mean()), accuracy_clean=float((clean_logits.argmax(-1) == clean.answers.to(dev)).float()
                                                             .mean()),
        accuracy_shuffled=float((logits[rows, pred].argmax(-1) == sh.answers).float().mean()), n_prompts=n,
        n_mean=len(clean if mean_over is None else mean_over), method=method)
