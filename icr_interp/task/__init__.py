"""The task layer: knowledge bases of (subject, relation, answer) facts, their token vocabulary, IC-recall
prompts and their corruptions -- toy token prompts (``prompts``) and text prompts for pretrained LMs, tokenized
by the model's own tokenizer (``text``, ``text_spans``), both implementing :class:`PromptTask` (``protocol``)
and drawing with the helpers of ``sampling`` -- batches (``batch``) with their per-example span layout (``layout``),
prompt roles, and the Bayes ceiling of a set of prompts.  Nothing here knows about models.
"""

from icr_interp.task.batch import Batch, CorruptedPairs  # noqa: F401
from icr_interp.task.layout import ROLE_NAMES, Layout  # noqa: F401
from icr_interp.task.prompts import CORRUPTIONS, ICRecallTask  # noqa: F401
from icr_interp.task.protocol import PromptTask  # noqa: F401
