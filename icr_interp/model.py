"""The IC-recall model: a TransformerLens ``HookedTransformer`` with a memory MLP.

``build_model`` writes a one-layer (by default), single-head, attention + MLP
transformer in the residual geometry of :mod:`icr_interp.basis`:

* ``W_E``, ``W_pos``, ``W_U``: the basis's token, position and output directions;
* attention OV: copies each attended token into its *context* direction,
  scaled by 2k so that attention spread evenly over the 2k context tokens gives
  every one of them weight 1 -- the unit the memory's thresholds are set in;
* attention QK: small random ``W_Q``/``W_K`` plus an *answer tilt* (a positional
  bias of ``init_tilt`` logits toward answer slots), so fine-tuning starts from
  an answer-heavy pattern that is not pairwise (docs/theory.md, section 4);
* ``blocks[-1].mlp``: the associative memory (:mod:`icr_interp.memory`),
  attached before ``model.setup()`` so its hook points are registered.

Only the attention's query/key weights are trainable; everything else is frozen.
"""

import math
from dataclasses import asdict, dataclass, field

import einops
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from icr_interp.basis import ResidualBasis, default_d_model
from icr_interp.memory import MEMORIES, MemoryScales, construct_memory, pick_construction
from icr_interp.task import ICRecallTask

TRAINABLE = ("W_Q", "W_K", "b_Q", "b_K")


@dataclass
class ModelConfig:
    """Everything ``build_model`` needs besides the task (saved in checkpoints)."""

    memory: str = "constructed"  # constructed | pair | answer | pretrained
    construction: str = ""  # the memory actually built (filled in by build_model)
    d_model: int = 0  # residual width; 0 = default_d_model(vocab)
    n_heads: int = 1  # attention heads per layer
    n_layers: int = 1  # layers; the memory is the last block's MLP
    seed: int = 0  # seeds the basis and the attention initialisation
    init_scale: float = 0.02  # std of the random W_Q / W_K entries
    init_tilt: float = 2.0  # starting attention-logit bonus on answer slots
    scales: dict = field(default_factory=lambda: asdict(MemoryScales()))  # memory thresholds/gains
    pretrain: dict = field(default_factory=dict)  # options of the pretrained memory (pretrain.py)
    memory_impl: str = "auto"  # dense | factored | auto (factored once n_facts * d_model > 2**24)

    def to_dict(self) -> dict:
        return asdict(self)


def build_model(task: ICRecallTask, memory: str = "constructed", d_model: int | None = None, n_heads: int = 1,
                n_layers: int = 1, seed: int = 0, device: str | torch.device = "cpu", **options) -> HookedTransformer:
    """Build the IC-recall model for ``task``.

    Args:
        task: the task (knowledge base, number of pairs, BOS).
        memory: ``"constructed"`` (the construction that fits the knowledge
            base: ``"answer"`` if an answer reveals its relation, else
            ``"pair"``), ``"pair"``, ``"answer"`` or ``"pretrained"``.
        d_model: residual width (default: fits the exact basis, see basis.py).
        n_heads, n_layers: architecture; the memory sits in the last block.
        seed: seeds the basis and the attention initialisation.
        device: where the model lives.
        **options: other :class:`ModelConfig` fields (``init_tilt``, ``scales``, ``pretrain``...).

    Returns:
        A ``HookedTransformer`` with ``model.icr_config`` (the filled-in config).
    """
    if memory not in MEMORIES:
        raise ValueError(f"memory must be one of {MEMORIES}, got {memory!r}")
    cfg = ModelConfig(memory=memory, d_model=d_model or 0, n_heads=n_heads, n_layers=n_layers, seed=seed, **options)
    return model_from_config(task, cfg, device=device)


def model_from_config(task: ICRecallTask, cfg: ModelConfig, device: str | torch.device = "cpu",
                      fit_memory: bool = True) -> HookedTransformer:
    """Build from a :class:`ModelConfig`; ``fit_memory=False`` skips pretraining (checkpoint loading)."""
    if cfg.n_heads < 1 or cfg.n_layers < 1:
        raise ValueError("n_heads and n_layers must be >= 1")
    cfg.d_model = cfg.d_model or default_d_model(task.vocab, task.n_ctx)
    cfg.construction = pick_construction(task.kb) if cfg.memory == "constructed" else cfg.memory
    basis = ResidualBasis.make(task.vocab, task.n_ctx, cfg.d_model, seed=cfg.seed)
    model = HookedTransformer(_tl_config(task, cfg))
    _write_embeddings(model, basis)
    _write_attention(model, basis, task, cfg)
    _attach_memory(model, task, basis, cfg, fit_memory)
    model.icr_config = cfg
    model.icr_basis = basis
    return model.to(device, print_details=False)


def _tl_config(task: ICRecallTask, cfg: ModelConfig) -> HookedTransformerConfig:
    return HookedTransformerConfig(
        n_layers=cfg.n_layers, d_model=cfg.d_model, d_head=cfg.d_model, n_heads=cfg.n_heads,
        n_ctx=task.n_ctx, d_vocab=task.vocab.size, d_mlp=1, act_fn="relu", normalization_type=None,
        positional_embedding_type="standard", default_prepend_bos=False, seed=None,
    )


def _write_embeddings(model: HookedTransformer, basis: ResidualBasis) -> None:
    with torch.no_grad():
        model.embed.W_E.copy_(basis.token)
        model.pos_embed.W_pos.copy_(basis.pos)
        model.unembed.W_U.copy_(basis.output.T)
        model.unembed.b_U.zero_()


def _write_attention(model: HookedTransformer, basis: ResidualBasis, task: ICRecallTask, cfg: ModelConfig) -> None:
    """OV copies tokens into context directions; QK starts small, random and answer-tilted."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    ov = 2 * task.n_pairs * basis.copy / cfg.n_heads  # [d_model d_model]: token[t] -> 2k context[t]
    tilt_logits = cfg.init_tilt * math.sqrt(cfg.d_model)  # TL divides scores by sqrt(d_head)
    answer_slots = task.layout(1).answer_pos[0]
    for block in model.blocks:
        attn = block.attn
        with torch.no_grad():
            attn.W_V.copy_(einops.repeat(ov, "d e -> h d e", h=cfg.n_heads))
            attn.W_O.copy_(einops.repeat(torch.eye(cfg.d_model), "e d -> h e d", h=cfg.n_heads))
            for w in (attn.b_V, attn.b_O, attn.b_Q, attn.b_K):
                w.zero_()
            attn.W_Q.copy_(cfg.init_scale * torch.randn(attn.W_Q.shape, generator=gen))
            attn.W_K.copy_(cfg.init_scale * torch.randn(attn.W_K.shape, generator=gen))
            # Tilt: the query position's embedding maps to head direction 0, answer
            # slots' embeddings map there too, so every answer slot gains init_tilt.
            attn.W_Q[:, :, 0] += basis.pos[-1]
            attn.W_K[:, :, 0] += tilt_logits * basis.pos[answer_slots].sum(0)


def _attach_memory(model: HookedTransformer, task: ICRecallTask, basis: ResidualBasis, cfg: ModelConfig,
                   fit_memory: bool) -> None:
    """Swap in the memory as the last MLP, zero earlier MLPs, freeze all but attention QK."""
    if cfg.construction == "pretrained":
        from icr_interp.pretrain import pretrained_memory  # pretraining needs a built model

        memory = pretrained_memory(model, task, basis, cfg, fit=fit_memory)
    else:
        if cfg.memory_impl not in ("auto", "dense", "factored"):
            raise ValueError(f"memory_impl must be auto, dense or factored, got {cfg.memory_impl!r}")
        big = task.kb.n_triplets * cfg.d_model > 2**24
        factored = cfg.memory_impl == "factored" or (cfg.memory_impl == "auto" and big)
        memory = construct_memory(cfg.construction, task.kb, task.vocab, basis, task.n_pairs,
                                  MemoryScales(**cfg.scales), factored=factored)
    model.blocks[-1].mlp = memory
    for block in model.blocks[:-1]:
        for p in block.mlp.parameters():
            torch.nn.init.zeros_(p)
    model.cfg.d_mlp = memory.d_mlp  # the memory's lookup width, not TL's placeholder MLP
    model.setup()  # re-register hook points, the memory's included
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".")[-1] in TRAINABLE)
