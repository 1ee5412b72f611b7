"""The training layer: fine-tuning the attention (only W_Q/W_K train) and evaluating a model on a task.
"""

from icr_interp.training.trainer import (  # noqa: F401
    DEFAULT_TRAINABLE, SCHEDULES, TrainConfig, History, default_recipe, trainable_names, trainable_parameters, batch_logits, finetune, evaluate,
)


def __getattr__(name: str):
    from icr_interp._moved import module_attr

    return module_attr(__name__, name)
