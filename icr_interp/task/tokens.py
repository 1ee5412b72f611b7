"""Token ids at the boundary: one check, one message, used by every analysis entry point.

Negative ids would silently index from the end of the embedding (id -1 is the
last token) and ids past the vocabulary raise a bare IndexError deep inside
TransformerLens; both are refused here, before any work, with one line naming
the offending id and the vocabulary size.
"""

import torch
from torch import Tensor


def check_token_ids(tokens: Tensor, vocab_size: int, what: str = "tokens") -> Tensor:
    """``tokens`` if it holds integer ids in [0, vocab_size); a one-line ValueError otherwise."""
    if not isinstance(tokens, Tensor):
        raise ValueError(f"{what} must be a tensor of token ids, got {type(tokens).__name__}")
    if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"{what} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.numel():
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0:
            raise ValueError(f"{what} hold token id {low}, outside the vocabulary [0, {vocab_size})")
        if high >= vocab_size:
            raise ValueError(f"{what} hold token id {high}, outside the vocabulary [0, {vocab_size})")
    return tokens


def check_model_tokens(model, tokens: Tensor, what: str = "tokens") -> Tensor:
    """:func:`check_token_ids` against a TransformerLens model's ``cfg.d_vocab``, and the context length."""
    check_token_ids(tokens, model.cfg.d_vocab, what)
    if tokens.ndim != 2:
        raise ValueError(f"{what} must be [batch pos], got shape {tuple(tokens.shape)}")
    if tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"{what} have {tokens.shape[1]} positions; the model's context is {model.cfg.n_ctx}")
    return tokens
