"""Models of several heads or layers, built, fine-tuned and measured: the heads and layers case studies' runs.

:func:`fine_tuned` is :func:`icr_interp.run`'s three steps for a model of ``n_layers`` x ``n_heads`` on a task
(build, fine-tune, evaluate before and after), with a saved state to reuse instead of training again. The
analyses of the result (which head reads subjects and which answers, where each job sits) are
:mod:`icr_interp.analysis.job_split`'s.
"""

from icr_interp.model.builder import build_model
from icr_interp.task.prompts import ICRecallTask
from icr_interp.tl.compat import TLModel
from icr_interp.training.trainer import evaluate, finetune


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
