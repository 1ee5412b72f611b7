"""Models of several heads or layers, built, fine-tuned and measured: the heads and layers case studies' runs
(:func:`measure` is one row of ``case_studies/heads.py``, its fine-tuned model saved as a checkpoint for ``--reuse``).

:func:`fine_tuned` is :func:`icr_interp.run`'s three steps for a model of ``n_layers`` x ``n_heads`` on a task
(build, fine-tune, evaluate before and after), with a saved state to reuse instead of training again. The
analyses of the result (which head reads subjects and which answers, where each job sits) are
:mod:`icr_interp.analysis.causal.job_split`'s.
"""

from pathlib import Path

from icr_interp.analysis.causal.job_split import head_split
from icr_interp.analysis.scoring.templates import score_templates
from icr_interp.model.builder import ICRModel, build_model
from icr_interp.seeds import offset_seed
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.prompts import ICRecallTask
from icr_interp.tl.compat import TLModel
from icr_interp.training.trainer import evaluate, finetune

SCORE_KEYS = ("pairwise", "pairwise_null", "p_value", "balance", "best")  # per-head scores a row keeps


def fine_tuned(task: ICRecallTask, n_layers: int, n_heads: int, seed: int, *, n_eval: int = 1024,
               state: dict | None = None, **train) -> tuple[TLModel, dict]:
    """Build, measure the start, fine-tune (``train``: :func:`icr_interp.training.trainer.finetune` overrides), measure again.

    ``state``: a state dict of the same build already fine-tuned (then nothing trains; the start is still measured).
    Returns the model and ``{"start_accuracy", "accuracy", "ceiling", "trained"}``.
    """
    model = build_model(task, n_layers=n_layers, n_heads=n_heads, seed=seed)
    start = evaluate(model, task, n_prompts=n_eval, seed=seed)["accuracy"]
    if state is None:
        finetune(model, task, seed=seed, progress=False, **train)
    else:
        model.load_state_dict(state)
    after = evaluate(model, task, n_prompts=n_eval, seed=seed)
    return model, dict(start_accuracy=start, accuracy=after["accuracy"], ceiling=after["ceiling"],
                       trained=state is None)


def model_path(models: Path, s: int, r: int, k: int, seed_: int, layers: int, heads: int) -> Path:
    """Where the fine-tuned model of this build is saved (and reused with ``--reuse``): a checkpoint directory."""
    return models / f"{s}x{r}x{k}_s{seed_}_L{layers}H{heads}"


def save_state(path: Path, model: TLModel, task: ICRecallTask, **metrics) -> None:
    """Save the fine-tuned model as a checkpoint (versioned format, safetensors weights, atomic; never pickle)."""
    from icr_interp.storage.checkpoint import save_checkpoint

    save_checkpoint(path, model, task, force=True, **metrics)


def load_state(path: Path, n_layers: int, n_heads: int) -> dict | None:
    """The state dict of a checkpoint saved by :func:`save_state`, or None if ``path`` does not exist.

    The checkpoint is validated as any other (digest, format, shapes; no code runs) and must hold a model of
    ``n_layers`` x ``n_heads``; anything else is a one-line ValueError that says to delete it to retrain.
    """
    from icr_interp.storage.checkpoint import CheckpointError, load_checkpoint

    if not path.exists():
        return None
    try:
        model = load_checkpoint(path).model
    except CheckpointError as e:
        raise ValueError(f"--reuse: {e}; delete {path} to retrain") from None
    if (model.cfg.n_layers, model.cfg.n_heads) != (n_layers, n_heads):
        raise ValueError(f"--reuse: {path} holds a {model.cfg.n_layers}-layer, {model.cfg.n_heads}-head model, "
                         f"not {n_layers} x {n_heads}; delete it to retrain")
    return model.state_dict()


def measure(s: int, r: int, k: int, seed_: int, layers: int, heads: int, models: Path, reuse: bool, train: dict,
            n_eval: int, n_template: int) -> tuple[dict, ICRModel, ICRecallTask]:
    """One row (start -> final accuracy, per-head and combined template scores, split verdict), model, task."""
    task = ICRecallTask(KnowledgeBase.random(s, r, s, answer_overlap=1.0, seed=seed_), n_pairs=k)
    path = model_path(models, s, r, k, seed_, layers, heads)
    train = {key: value for key, value in train.items() if value is not None}
    path = path.with_name(path.name + "".join(f"_{key}{value}" for key, value in sorted(train.items())))
    state = load_state(path, layers, heads) if reuse else None
    model, row = fine_tuned(task, layers, heads, seed_, n_eval=n_eval, state=state, **train)
    if state is None:
        save_state(path, model, task, start_accuracy=row["start_accuracy"], accuracy=row["accuracy"])
    batch = task.sample(n_template, seed=offset_seed(seed_, "head_scores"))
    scores = score_templates(model, batch).to_dict()
    pick = lambda d: {key: d[key] for key in SCORE_KEYS}  # noqa: E731
    row.update(train=train, reused=state is not None, shape=f"{s}x{r}x{k}", seed=seed_, n_layers=layers, n_heads=heads,
               heads=[dict(layer=h["layer"], head=h["head"], **pick(h)) for h in scores["per_head"]],
               combined=[dict(layer=c["layer"], head_shares=c["head_shares"], **pick(c)) for c in scores["combined"]],
               split=head_split(model, batch).to_dict())
    return row, model, task
