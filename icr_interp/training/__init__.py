"""The training layer: fine-tuning the attention (only W_Q/W_K train) and evaluating a model on a task.
"""

from icr_interp.training.trainer import (  # noqa: F401
    DEFAULT_TRAINABLE, SCHEDULES, EVAL_SALT, TrainConfig, History, default_recipe, trainable_names, trainable_parameters, batch_logits, finetune, evaluate,
)
