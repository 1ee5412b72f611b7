"""The task layer: knowledge bases of (subject, relation, answer) facts, their token vocabulary, IC-recall
prompts with per-example span layouts and corruptions -- toy token prompts (``prompts``) and text prompts
for pretrained LMs, tokenized by the model's own tokenizer (``text``, ``text_spans``) -- prompt roles, and
the Bayes ceiling of a set of prompts.  Nothing here knows about models.
"""

from icr_interp.task.prompts import (  # noqa: F401
    CORRUPTIONS, Layout, ROLE_NAMES, Batch, ICRecallTask, CorruptedPairs,
)
