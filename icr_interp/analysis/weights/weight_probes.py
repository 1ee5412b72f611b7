"""Weight-only probes: what the memory, the QK circuit and the OV circuit say before any prompt is run.

After Bietti et al. 2023 ("Birth of a transformer: a memory viewpoint"), whose probes push embeddings
through weight products and read an argmax.  Nothing here calls the model: every number is a product of
its weight matrices with its clean embeddings (``W_E``, ``W_pos``) and the basis it was written in, so a
probe can be run at every checkpoint for the cost of a few matrix products, and compared with behaviour.

* **Memory** (:func:`memory_probe`).  For every stored fact (s, r): the query residual the memory would
  see with no context, ``x = W_E[s] + W_pos[query]``, plus the clean relation vector ``rho relation[r]``
  (``rho`` = 1, the unit the constructed stage-II threshold is set in; a pretrained memory's
  ``relation_gain``, the size it was fitted on), through stage II's weights::

      logits = (x + ReLU((x + rho relation[r]) W_in + b_in) W_out + b_out - x P_direct) W_U + b_U

  The accuracy of ``argmax logits == a*(s, r)`` is the memory's recall; when attention infers the relation
  (a fine-tuned model), behavioural recall (:func:`behavioural_recall`: one IC-recall prompt per fact) must
  equal it.
* **QK** (:func:`qk_probe`).  For prompts drawn from the task (token ids only; never run), the attention row
  the QK circuit predicts from each slot's clean embedding ``W_E[t_j] + W_pos[j]`` against the query's::

      score_j = (x_q W_Q + b_Q) . (x_j W_K + b_K) / sqrt(d_head),   row = softmax_{j <= q}(score)

  exact for the first layer (no LayerNorm in these models), a clean-embedding approximation for later
  ones.  The rows are scored by the pairing test (:mod:`icr_interp.analysis.scoring.pairing_test`): ``pairwise_effect``
  is the within-pair effect in attention mass, how much more balanced each answer is with its own subject
  than with re-paired ones; zero in expectation for any row that does not care which subject goes with which
  answer (a random model's rows).  The template score and its re-pairing null ride along.
* **OV** (:func:`ov_probe`).  What attending to a subject or an answer slot writes: ``v_t = (W_E[t] +
  W_pos[slot]) W_V W_O`` per head, read three ways -- which token the memory's stage I reads back
  (``context_copy``: argmax of ``v_t . context[t']`` is t), how much lands on the relation directions
  (``relation_share``: ``|v_t R^T| / |v_t|``, R the orthonormal relation directions), and what it
  writes to the logits (``direct_answer_rank``: median rank of t itself through ``W_U``).

:class:`WeightProbeTracker` logs all three along fine-tuning (a ``finetune`` callback) or over any series
of checkpoints, so emergence can be read from the weights beside the behaviour.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from icr_interp.analysis.scoring.pairing_null import pairings
from icr_interp.analysis.scoring.pairing_test import pairing_test_rows
from icr_interp.analysis.scoring.pairwise_form import pairing_scores
from icr_interp.task.batch import Batch
from icr_interp.task.prompts import ICRecallTask
from icr_interp.tl.compat import TLModel

QK_PROMPTS = 512  # prompts the QK probe predicts rows for
QK_SEED = 0  # their seed (the same prompts at every checkpoint)


@dataclass
class WeightProbes:
    """The three weight-only probes of one model (see module docstring)."""

    memory: dict  # accuracy, n_facts, per_relation, margin
    qk: dict  # pairwise_effect (mean over the last layer's heads), per_head, effect, p_value, pairwise, pairwise_null
    ov: dict  # per role (subject, answer): per-head context_copy, relation_share, direct_answer_rank
    meta: dict = field(default_factory=dict)  # layer read, prompts, relation scale

    def to_dict(self) -> dict:
        return dict(memory=self.memory, qk=self.qk, ov=self.ov, meta=self.meta)

    def __str__(self) -> str:
        return (f"memory recall {self.memory['accuracy']:.3f} over {self.memory['n_facts']} facts; "
                f"QK pairwise effect {self.qk['pairwise_effect']:+.3f} (p={min(self.qk['p_value']):.3g}); "
                f"OV context copy subject {_mean(self.ov['subject']['context_copy']):.2f} "
                f"answer {_mean(self.ov['answer']['context_copy']):.2f}")


def _mean(values) -> float:
    return float(sum(values) / max(1, len(values)))


def weight_probes(model: TLModel, task: ICRecallTask, n_prompts: int = QK_PROMPTS, seed: int = QK_SEED) -> WeightProbes:
    """Memory, QK and OV probes of an IC-recall model from its weights alone (no prompt is run).

    Args:
        model: an IC-recall model (:func:`icr_interp.build_model`, with its ``basis``).
        task: its task (the stored facts; the prompts the QK probe predicts rows for).
        n_prompts: prompts of the QK probe.
        seed: their seed.
    """
    if getattr(model, "basis", None) is None or not hasattr(model.blocks[-1].mlp, "W_in"):
        raise ValueError("weight_probes needs an IC-recall model (build_model): a basis and a memory with dense views")
    batch = task.sample(n_prompts, seed=seed)
    memory = memory_probe(model, task)
    layer = model.cfg.n_layers - 1
    qk = qk_probe(model, batch, layer)
    return WeightProbes(memory=memory, qk=qk, ov=ov_probe(model, task, layer),
                        meta=dict(layer=layer, n_prompts=n_prompts, seed=seed,
                                  relation_scale=relation_scale(model)))


def relation_scale(model: TLModel) -> float:
    """The size of a clean relation vector at stage II: 1 (constructed), ``relation_gain`` (pretrained)."""
    cfg = model.icr_config
    return float(cfg.pretrain.get("relation_gain", 1.0)) if cfg.construction == "pretrained" else 1.0


@torch.no_grad()
def memory_logits(model: TLModel, tokens: Int[Tensor, " fact"], relations: Int[Tensor, " fact"],
                  query_pos: int) -> Float[Tensor, "fact vocab"]:
    """Logits the memory's weights give facts (subject token, relation) from clean embeddings (module docstring)."""
    mem, basis = model.blocks[-1].mlp, model.basis
    dev = model.W_E.device
    x = model.W_E[tokens.to(dev)] + model.W_pos[query_pos]
    y = x + relation_scale(model) * basis.relation[relations.to(dev)]
    b_in = getattr(mem, "b_in", None)  # the factored / sparse memories keep the threshold as a number
    if not isinstance(b_in, Tensor):
        b_in = torch.full((mem.W_in.shape[1],), -float(mem.lookup_threshold), device=dev)
    out = F.relu(y @ mem.W_in + b_in) @ mem.W_out
    b_out = getattr(mem, "b_out", None)
    if isinstance(b_out, Tensor):
        out = out + b_out
    if mem.direct_path is not None:
        out = out - x @ mem.direct_path
    return (x + out) @ model.W_U + model.b_U


def memory_correct(model: TLModel, task: ICRecallTask, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Per stored fact (``kb.triplets()`` order): whether the weights recall it, and its logit margin."""
    facts, query_pos = task.kb.triplets(), task.n_ctx - 1
    correct, margins = [], []
    for part in facts.split(chunk):
        s, r, a = part.T
        logits = memory_logits(model, task.vocab.subject_token(s), r, query_pos)
        target = task.vocab.answer_token(a).to(logits.device)
        right = logits.gather(1, target[:, None])[:, 0]
        other = logits.scatter(1, target[:, None], float("-inf")).amax(1)
        correct.append((logits.argmax(-1) == target).float().cpu())
        margins.append((right - other).cpu())
    return torch.cat(correct), torch.cat(margins)


def memory_probe(model: TLModel, task: ICRecallTask) -> dict:
    """Recall of every stored fact from the memory's weights (module docstring).

    Returns:
        ``accuracy``, ``n_facts``, ``per_relation`` (accuracy per relation) and ``margin`` (mean logit of
        the answer minus the best other token).
    """
    correct, margins = memory_correct(model, task)
    rel = task.kb.triplets()[:, 1]
    per_rel = [float(correct[rel == r].mean()) for r in range(task.kb.n_relations) if (rel == r).any()]
    return dict(accuracy=float(correct.mean()), n_facts=len(correct), per_relation=per_rel,
                margin=float(margins.mean()))


def per_fact_prompts(task: ICRecallTask, seed: int = 0) -> Batch:
    """One IC-recall prompt per stored fact (query s under relation r, k other subjects of r as context).

    Facts whose relation has fewer than k + 1 subjects are left out (no prompt can ask them).
    """
    gen = torch.Generator().manual_seed(seed)
    facts = task.kb.triplets()
    keep = torch.isin(facts[:, 1], torch.nonzero(task.relation_weights > 0).flatten())
    relations, subjects, queries = [], [], []
    for s, r, _ in facts[keep].tolist():
        pool = torch.nonzero(task.kb.table[r] >= 0).flatten()
        pool = pool[pool != s][torch.randperm(len(pool) - 1, generator=gen)[: task.n_pairs]]
        relations.append(r), subjects.append(pool), queries.append(s)
    return task._build(torch.tensor(relations), torch.stack(subjects), torch.tensor(queries))


@torch.no_grad()
def behavioural_recall(model: TLModel, task: ICRecallTask, seed: int = 0, batch_size: int = 1024) -> float:
    """Accuracy of the model on one IC-recall prompt per stored fact (:func:`per_fact_prompts`): what the
    memory probe predicts once attention infers the relation.  Runs the model (the behaviour)."""
    from icr_interp.training.trainer import prediction_logits

    batch = per_fact_prompts(task, seed).to(model.W_E.device)
    right = 0
    for start in range(0, len(batch), batch_size):
        part = batch[start:start + batch_size]
        right += int((prediction_logits(model, part).argmax(-1) == part.answers).sum())
    return right / len(batch)


def qk_rows(model: TLModel, tokens: Int[Tensor, "batch pos"], query_pos: Int[Tensor, " batch"],
            layer: int) -> Float[Tensor, "head batch pos"]:
    """The query rows a layer's QK circuit predicts from clean embeddings (module docstring)."""
    attn = model.blocks[layer].attn
    x = model.W_E[tokens] + model.W_pos[: tokens.shape[1]]  # [batch pos d_model]
    rows = torch.arange(len(tokens), device=tokens.device)
    q = torch.einsum("bd,hde->bhe", x[rows, query_pos], attn.W_Q) + attn.b_Q  # [batch head d_head]
    k = torch.einsum("bpd,hde->bhpe", x, attn.W_K) + attn.b_K[:, None]  # [batch head pos d_head]
    scores = torch.einsum("bhe,bhpe->bhp", q, k) / math.sqrt(attn.W_Q.shape[-1])
    causal = torch.arange(tokens.shape[1], device=tokens.device)[None, :] > query_pos[:, None]  # [batch pos]
    return scores.masked_fill(causal[:, None], float("-inf")).softmax(-1).transpose(0, 1)


def pairwise_effect(rows: Float[Tensor, "head batch pos"], batch: Batch) -> dict:
    """Within-pair effect of query rows (one layer's, as :func:`~icr_interp.analysis.scoring.attention.query_rows`
    gives them), by the pairing test (:func:`~icr_interp.analysis.scoring.pairing_test.pairing_test_rows`: is each
    answer balanced with its own subject more than with re-paired ones?).

    Returns ``pairwise_effect`` (the effect in attention mass, mean over heads), ``per_head`` (it, per head),
    ``effect`` (renormalised over the pair tokens, per head), ``p_value`` (per head), and the template
    scores ``pairwise`` / ``pairwise_null`` (per head: the pairwise score and its mean over re-pairings).
    """
    lay = batch.layout
    sub = rows.gather(2, lay.subject_end[None].expand(rows.shape[0], -1, -1).to(rows.device))  # [head batch pair]
    ans = rows.gather(2, lay.answer_end[None].expand(rows.shape[0], -1, -1).to(rows.device))
    test = pairing_test_rows(sub, ans)
    scores = pairing_scores(sub, ans, pairings(sub.shape[-1]))  # [head batch perm]
    return dict(pairwise_effect=float(test.effect_mass.mean()), per_head=test.effect_mass.tolist(),
                effect=test.effect.tolist(), p_value=test.p_value.tolist(),
                pairwise=scores[..., 0].mean(-1).tolist(), pairwise_null=scores.mean((-1, -2)).tolist())


@torch.no_grad()
def qk_probe(model: TLModel, batch: Batch, layer: int) -> dict:
    """Pairwise effect of the rows the QK weights predict on ``batch`` (its tokens; it is not run)."""
    tokens = batch.tokens.to(model.W_E.device)
    return pairwise_effect(qk_rows(model, tokens, batch.layout.pred_pos.to(tokens.device), layer), batch)


@torch.no_grad()
def ov_probe(model: TLModel, task: ICRecallTask, layer: int) -> dict:
    """What attending to each subject / answer slot writes, per head (module docstring).

    Each token ``t`` of a role sits at that role's first slot; ``v_t = (W_E[t] + W_pos[slot]) W_V W_O``.
    """
    attn, basis, vocab = model.blocks[layer].attn, model.basis, task.vocab
    lay = task.layout(1)
    relation = torch.linalg.qr(basis.relation.T)[0].T  # orthonormal rows spanning the relation directions
    out = {}
    for role, tokens, slot in (("subject", vocab.subject_token(torch.arange(task.kb.n_subjects)), lay.subject_end),
                               ("answer", vocab.answer_token(torch.arange(task.kb.n_answers)), lay.answer_end)):
        tokens = tokens.to(model.W_E.device)
        x = model.W_E[tokens] + model.W_pos[int(slot[0, 0])]
        v = torch.einsum("td,hde,hef->htf", x, attn.W_V, attn.W_O)  # [head token d_model]
        copy = (v @ basis.context.T).argmax(-1) == tokens  # [head token]
        share = (v @ relation.T).norm(dim=-1) / v.norm(dim=-1).clamp_min(1e-12)
        logits = v @ model.W_U
        rank = ((logits >= logits.gather(-1, tokens[None, :, None].expand(v.shape[0], -1, 1))).sum(-1) - 1).float()
        out[role] = dict(context_copy=copy.float().mean(-1).tolist(), relation_share=share.mean(-1).tolist(),
                         direct_answer_rank=rank.median(-1).values.tolist())
    return out


class WeightProbeTracker:
    """Logs :func:`weight_probes` over training (a ``finetune`` callback) or over any checkpoint series.

    ``tracker(step, model)`` appends ``{"step": step, **probes.to_dict()}`` every ``every`` steps
    (and at step 0); with ``behaviour`` also what the model *does* on the same prompts (it runs them):
    ``behaviour_recall`` (:func:`behavioural_recall`), ``measured_pairwise_effect`` (the measured rows'
    within-pair effect) and ``accuracy`` (on the QK probe's prompts).  ``tracker.series`` holds the rows.
    """

    def __init__(self, task: ICRecallTask, every: int = 10, n_prompts: int = QK_PROMPTS, seed: int = QK_SEED,
                 behaviour: bool = False):
        self.task, self.every, self.n_prompts, self.seed, self.behaviour = task, every, n_prompts, seed, behaviour
        self.series: list[dict] = []

    def __call__(self, step: int, model: TLModel, history=None) -> None:
        if step % self.every:
            return
        row = dict(step=step, **weight_probes(model, self.task, self.n_prompts, self.seed).to_dict())
        if self.behaviour:
            from icr_interp.analysis.scoring.attention import query_rows
            from icr_interp.training.trainer import prediction_logits

            batch = self.task.sample(self.n_prompts, seed=self.seed).to(model.W_E.device)
            with torch.no_grad():
                rows = query_rows(model, batch)[-1]
                accuracy = float((prediction_logits(model, batch).argmax(-1) == batch.answers).float().mean())
            row.update(behaviour_recall=behavioural_recall(model, self.task, self.seed), accuracy=accuracy,
                       measured_pairwise_effect=pairwise_effect(rows, batch)["pairwise_effect"])
        self.series.append(row)


def probe_series(model: TLModel, task: ICRecallTask, every: int = 10, n_prompts: int = QK_PROMPTS,
                 **finetune_options) -> list[dict]:
    """Fine-tune ``model`` (in place) and log the three probes beside behaviour every ``every`` steps.

    Args:
        model, task: an IC-recall model (memory fitted) and its task.
        every: steps between rows (the last step is always logged).
        n_prompts: prompts of the QK probe and of the behavioural accuracy.
        **finetune_options: passed to :func:`icr_interp.finetune` (steps, n_samples, lr...).
    """
    from icr_interp.training.trainer import finetune

    tracker = WeightProbeTracker(task, every=every, n_prompts=n_prompts, behaviour=True)
    history = finetune(model, task, callback=tracker, progress=False, **finetune_options)
    last = history.step[-1] + 1 if history.step else 0
    if not tracker.series or tracker.series[-1]["step"] != last:
        tracker.every = 1
        tracker(last, model)
    return tracker.series
