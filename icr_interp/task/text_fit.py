"""Whether a text task fits its model: the tokenizer, the BOS rule, the context length and the vocabulary.

:class:`~icr_interp.task.text.TextICRecallTask` takes either a tokenizer or the model itself.  From a model
it reads what prompts must respect -- its tokenizer, ``cfg.default_prepend_bos`` (the loader's per-model
truth: SmolLM2 none, Gemma ``<bos>``), ``cfg.n_ctx`` and ``cfg.d_vocab`` -- and every mismatch is refused in
one line naming it: a model without a tokenizer, a prompt longer than the context, a token id past the
vocabulary (a tokenizer of another model).  The task layer knows nothing of models: the model is read by duck
typing (anything with ``cfg`` and ``tokenizer``, a ``HookedTransformer`` or a TransformerLens 4 bridge).
"""

from collections.abc import Sequence

from icr_interp.task import limits
from icr_interp.task import text_spans as T

TARGET_CHUNK = 4096  # facts tokenized per call when computing targets (bounds memory on a huge CSV)
TOKEN_BYTES = 200  # a token in the tokenizer's Python output: its id, its offsets tuple, list slots (upper bound)


def is_model(x) -> bool:
    """Whether ``x`` looks like a TransformerLens model (a ``cfg`` with ``n_ctx`` and ``d_vocab``)."""
    cfg = getattr(x, "cfg", None)
    return cfg is not None and hasattr(cfg, "n_ctx") and hasattr(cfg, "d_vocab")


def adds_bos(tokenizer) -> bool:
    """Whether ``tokenizer`` prepends its BOS token by itself (its ``add_special_tokens`` behaviour)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a")["input_ids"]
    return bos is not None and len(ids) > 0 and ids[0] == bos


def resolve_model(tokenizer_or_model, prepend_bos: bool | None) -> tuple:
    """``(tokenizer, bos_id or None, {"n_ctx", "d_vocab"} or {})`` from a model or a bare tokenizer."""
    model = is_model(tokenizer_or_model)
    tok = getattr(tokenizer_or_model, "tokenizer", None) if model else tokenizer_or_model
    if tok is None:
        raise ValueError("the model has no tokenizer (model.tokenizer is None): set one (model.set_tokenizer) or "
                         "pass a tokenizer" if model else "a tokenizer (or a model with one) is needed, got None")
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"text prompts need a fast tokenizer (one that returns offsets), got {type(tok).__name__}")
    if prepend_bos is not None and not isinstance(prepend_bos, bool):
        raise ValueError(f"prepend_bos must be True, False or None, got {prepend_bos!r}")
    if prepend_bos is None:
        cfg = getattr(tokenizer_or_model, "cfg", None)
        prepend_bos = bool(getattr(cfg, "default_prepend_bos", True)) if model else adds_bos(tok)
    if prepend_bos and getattr(tok, "bos_token_id", None) is None:
        raise ValueError("prepend_bos is true but the tokenizer has no BOS token (pass prepend_bos=False)")
    cfg = tokenizer_or_model.cfg if model else None
    limits = dict(n_ctx=int(cfg.n_ctx), d_vocab=int(cfg.d_vocab)) if model else {}
    return tok, (int(tok.bos_token_id) if prepend_bos else None), limits


def check_ids(task, ids: Sequence[int], what: str) -> None:
    """One line if ``ids`` reach past the model's ``d_vocab`` (a tokenizer of another model)."""
    d_vocab = task.limits.get("d_vocab")
    if d_vocab is not None and ids and max(ids) >= d_vocab:
        raise ValueError(f"{what} use token id {max(ids)}, but the model's d_vocab is {d_vocab}: the tokenizer "
                         f"({len(task.tokenizer)} tokens) does not match the model")


def check_length(task, kb=None, n_tokens: int | None = None) -> None:
    """One line if a prompt of ``n_tokens`` (or, given ``kb``, the templates alone) exceeds the model's n_ctx.

    With ``kb`` (at construction) the estimate is the template text and prefix without any name, tokenized
    piece by piece, less one token per boundary: a lower bound on every prompt, known before any fact is
    tokenized.
    """
    n_ctx = task.limits.get("n_ctx")
    if n_ctx is None:
        return
    k = task.n_pairs
    if kb is not None:
        pieces = [task.prefix, T.render(task.pair_template, s="", a="")[0], T.render(task.query_template, s="")[0]]
        lengths = [len(ids) for ids in T.tokenize(task.tokenizer, pieces)["input_ids"]]
        n_tokens = lengths[0] + k * lengths[1] + lengths[2] + int(task.bos) - (2 * k + 2)
        if n_tokens <= n_ctx:
            return
    if n_tokens is not None and n_tokens > n_ctx:
        raise ValueError(f"prompts of {'at least ' if kb is not None else ''}{n_tokens} tokens exceed the model's "
                         f"context n_ctx={n_ctx} (k={k}, pair template of {len(task.pair_template)} characters, "
                         f"prefix of {len(task.prefix)}): use fewer pairs or shorter templates")


def targets_in_chunks(tokenizer, prompts: Sequence[str], follows: Sequence[str]) -> list[int]:
    """:func:`~icr_interp.task.text_spans.first_tokens` over chunks of :data:`TARGET_CHUNK` prompts."""
    out = []
    for start in range(0, len(prompts), TARGET_CHUNK):
        out += T.first_tokens(tokenizer, prompts[start:start + TARGET_CHUNK], follows[start:start + TARGET_CHUNK])
    return out


def check_sample_bytes(task, n_prompts: int) -> None:
    """One line before tokenizing ``n_prompts`` prompts whose text (longest names, templates) would not fit in
    memory: a byte-level tokenizer gives at most one token per byte, each :data:`TOKEN_BYTES` in its output."""
    kb = task.kb
    if getattr(task, "_longest", None) is None:
        task._longest = tuple(max((len(x.encode()) for x in names), default=0) for names in (kb.subjects, kb.answers))
    subject, answer = task._longest
    chars = (len(task.prefix.encode()) + task.n_pairs * (len(task.pair_template.encode()) + subject + answer)
             + len(task.query_template.encode()) + subject)
    limits.check_bytes(n_prompts * chars * TOKEN_BYTES, f"tokenizing {n_prompts} prompts of up to {chars} bytes")
