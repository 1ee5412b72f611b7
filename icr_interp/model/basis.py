"""The residual-stream geometry the constructed model is written in.

The reference model keeps every kind of information in its own directions:

* ``token``    -- embedding of each token as it sits at its own position (W_E);
* ``pos``      -- positional embedding of each position (W_pos);
* ``context``  -- where attention's OV circuit copies a token it attends to
  (so the query's own subject and the attended context never mix);
* ``relation`` -- the relation vector the memory's first stage writes;
* ``output``   -- the direction the unembedding reads for each token (W_U).

When all these vectors fit (``d_model`` >= their number) they are exactly
orthonormal; otherwise positions and relations stay exact, token and output
directions are random unit vectors in the rest of the space (crosstalk ~
1/sqrt(d_model)), and context directions are the token directions under a
random rotation, so that attention's OV map copies every token exactly.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from icr_interp.task.vocab import Vocabulary


@dataclass(frozen=True)
class ResidualBasis:
    """Named groups of directions in the residual stream."""

    token: Float[Tensor, "vocab d_model"]  # embedding of each token id
    pos: Float[Tensor, "n_ctx d_model"]  # embedding of each position
    context: Float[Tensor, "vocab d_model"]  # OV image of each token id
    relation: Float[Tensor, "relation d_model"]  # relation vectors (memory stage I output)
    output: Float[Tensor, "vocab d_model"]  # unembedding direction of each token id
    copy: Float[Tensor, "d_model d_model"]  # linear map with token[t] @ copy = context[t] (attention's OV)

    @property
    def d_model(self) -> int:
        return self.token.shape[1]

    @property
    def exact(self) -> bool:
        """Whether the directions are exactly orthonormal."""
        return n_directions_needed(self.token.shape[0], self.pos.shape[0], self.relation.shape[0]) <= self.d_model

    @classmethod
    def make(cls, vocab: Vocabulary, n_ctx: int, d_model: int, seed: int = 0) -> "ResidualBasis":
        """Orthonormal directions if they fit, else exact small groups plus random large ones.

        Beyond ``d_model`` the few position and relation directions stay exactly
        orthonormal (attention's positional tilt and the relation readout must not
        leak into tokens); the vocabulary-sized groups become random unit vectors
        in their orthogonal complement.
        """
        sizes = [vocab.size, n_ctx, vocab.size, vocab.n_relations, vocab.size]
        gen = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(d_model, d_model, generator=gen, dtype=torch.float64))
        if sum(sizes) <= d_model:
            token, pos, context, relation, output = torch.split(q.T[: sum(sizes)], sizes)
            return cls(*(t.float() for t in (token, pos, context, relation, output, token.T @ context)))
        n_exact = n_ctx + vocab.n_relations
        if n_exact >= d_model:
            raise ValueError(f"d_model={d_model} cannot hold {n_exact} position and relation directions")
        exact, complement = q.T[:n_exact], q.T[n_exact:]
        rot, _ = torch.linalg.qr(torch.randn(d_model - n_exact, d_model - n_exact, generator=gen, dtype=torch.float64))
        # The vocabulary-sized groups in float32 (float64 V x d x d products took 15 s at 10^5 facts).
        # A standard Gaussian in R^d minus its component in the exact subspace is a standard
        # Gaussian of the complement: O(V d n_exact) instead of a V x d x d product.
        exact, complement = exact.float(), complement.float()
        raw = torch.randn(2 * vocab.size, d_model, generator=gen)
        raw -= (raw @ exact.T) @ exact
        token, output = (raw / raw.norm(dim=1, keepdim=True)).split(vocab.size)
        # Context directions are the token directions under a random rotation of the
        # complement: one d x d map copies *every* token exactly (a sum of V > d
        # outer products token[t]^T context[t] would drown each copy in crosstalk).
        copy = (complement.T.double() @ rot @ complement.double()).float()
        pos, relation = exact.split([n_ctx, vocab.n_relations])
        return cls(token, pos, token @ copy, relation, output, copy)


def n_directions_needed(vocab_size: int, n_ctx: int, n_relations: int) -> int:
    """How many directions an exactly orthonormal basis needs."""
    return 3 * vocab_size + n_ctx + n_relations


def default_d_model(vocab: Vocabulary, n_ctx: int, cap: int = 1024) -> int:
    """Smallest multiple of 64 that fits the exact basis, capped at ``cap``.

    Beyond the cap the basis turns random (see module docstring): the model
    stays trainable on a laptop at 10^5 facts.
    """
    need = n_directions_needed(vocab.size, n_ctx, vocab.n_relations)
    return min(cap, 64 * -(-need // 64))
