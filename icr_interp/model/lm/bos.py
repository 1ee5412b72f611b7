"""The BOS rule of a registered LM, kept on the tokenizer that TransformerLens sets up (3.x and 4.x alike)."""

from pathlib import Path


def bos_tokenizer(tokenizer_dir: Path, prepend_bos: bool):
    """The cached tokenizer with ``add_bos_token`` set to the model's BOS rule (and nothing else changed)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if getattr(tokenizer, "add_bos_token", None) != prepend_bos and tokenizer.bos_token is not None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, add_bos_token=prepend_bos)
    return tokenizer


def keep_bos_rule(model, prepend_bos: bool) -> None:
    """Make ``prepend_bos`` the truth on a model whose tokenizer TransformerLens has set up.

    TransformerLens (3.x's ``set_tokenizer``, 4.x's boot) rebuilds the tokenizer with ``add_bos_token=True``
    (and fills in pad/eos); the rule is put back on that tokenizer, and ``cfg.default_prepend_bos`` and
    ``cfg.tokenizer_prepends_bos`` follow, so that ``model.tokenizer(text)``, ``to_tokens(text)`` and the
    config agree: SmolLM2 no BOS, Gemma ``<bos>``.
    """
    tokenizer = model.tokenizer
    if tokenizer.bos_token is not None and getattr(tokenizer, "add_bos_token", None) != prepend_bos:
        tokenizer.add_bos_token = prepend_bos
    # TransformerLens 3.9's to_str_tokens adds a batch axis (and then fails) when the tokenizer's name_or_path
    # contains "gemma"; ours names a cache folder, not a Hub id, so it is given a neutral one
    tokenizer.name_or_path = "icr_interp-pretrained-lm"
    model.cfg.default_prepend_bos = prepend_bos
    model.cfg.tokenizer_prepends_bos = len(tokenizer.encode("")) > 0
