"""The IC-recall model: :class:`ICRModel`, a TransformerLens ``HookedTransformer`` with a memory MLP.

``build_model`` writes a one-layer (by default), single-head, attention + MLP
transformer in the residual geometry of :mod:`icr_interp.model.basis`:

* ``W_E``, ``W_pos``, ``W_U``: the basis's token, position and output directions;
* attention OV: copies each attended token into its *context* direction,
  scaled by 2k so that attention spread evenly over the 2k context tokens gives
  every one of them weight 1 -- the unit the memory's thresholds are set in.
  With several heads and layers every head of every layer writes ``1 / (n_heads
  n_layers)`` of that, so the memory reads the *mean* of all query rows and the
  unit holds whatever the shape (docs/theory.md §11: a sum of
  two layers' copies doubles every weight, wakes every stage-II neuron and
  zeroes the gradient).  In the exact basis the copy map sends context
  directions to 0, so a later layer never re-copies what an earlier one wrote;
  depth is limited to :data:`MAX_LAYERS`, the depths whose fine-tuning we measured;
* attention QK: small random ``W_Q``/``W_K`` plus an *answer tilt* (a positional
  bias of ``init_tilt`` logits toward answer slots), so fine-tuning starts from
  an answer-heavy pattern that is not pairwise (docs/theory.md, section 4);
* ``blocks[-1].mlp``: the associative memory (:mod:`icr_interp.model.memory`),
  attached before ``model.setup()`` so its hook points are registered.

An :class:`ICRModel` *is* a ``HookedTransformer`` on TransformerLens 3.x
(every TransformerLens tool takes it) -- on 4.x, which removed that class, it is
our ``HookedRootModule`` mirror of it (:mod:`icr_interp.tl.mirror`, chosen in
:mod:`icr_interp.tl.compat`), with the same parameters and hook names -- that also carries what it was built from: ``model.icr_config`` (the
resolved :class:`ModelConfig`), ``model.basis`` (registered as buffers, so
``model.to(device)`` moves it) and ``model.icr_train`` (the last fine-tuning
config, set by :func:`icr_interp.training.trainer.finetune`).  Building never trains and
never freezes: fine-tuning decides what trains (``ModelConfig.trainable``), and
a pretrained memory is fitted by the separate step
:func:`icr_interp.model.memory.pretrained.pretrain_memory`.
"""

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace

import einops
import torch

from icr_interp._moved import MOVED_ATTRS, moved_attr
from icr_interp.seeds import offset_seed
from icr_interp.task.tokens import check_token_ids
from icr_interp.model.attention_params import positional_qk
from icr_interp.model.basis import ResidualBasis, default_d_model
from icr_interp.tl.compat import HookedTransformer, HookedTransformerConfig, ModelBase
from icr_interp.model.memory import MEMORIES, MemoryScales, check_impl, choose_impl, construct_memory, pick_construction
from icr_interp.task.prompts import ICRecallTask

TRAINABLE = ("W_Q", "W_K", "b_Q", "b_K")  # what fine-tuning trains by default: attention's query/key
ATTENTIONS = ("full", "positional")  # parametrisations of W_Q / W_K (see attention_params.py)
STARTS = ("answer", "subject", "sink")  # which slots the starting attention is tilted toward (theory section 4)
MAX_LAYERS = 2  # depths the construction is measured to fine-tune at (docs/results.md ("Two layers and several heads"))


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
    start: str = "answer"  # the starting attention: tilted toward answer slots, subject slots, or BOS (sink)
    init_tilt: float = 4.0  # the tilt: starting attention-logit bonus on the start's slots (2.0 in the first release)
    scales: dict = field(default_factory=lambda: asdict(MemoryScales()))  # memory thresholds/gains
    pretrain: dict = field(default_factory=dict)  # options of the pretrained memory (model/memory/pretrained.py)
    memory_impl: str = "auto"  # dense | factored | sparse | auto (resolved at build: memory.choose_impl)
    attention: str = "full"  # W_Q / W_K parametrisation: full (d_model x d_head) | positional (positions only)
    trainable: Sequence[str] = TRAINABLE  # parameter names (last path component) that fine-tuning trains

    def __post_init__(self) -> None:
        self.trainable = tuple(self.trainable)  # JSON gives a list back

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """One-line ValueError for a field out of range."""
        if self.memory not in MEMORIES:
            raise ValueError(f"memory must be one of {MEMORIES}, got {self.memory!r}")
        for name in ("n_heads", "n_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 64:
                raise ValueError(f"{name} must be an integer in [1, 64], got {value!r}")
        if not isinstance(self.d_model, int) or not 0 <= self.d_model <= 2**15:
            raise ValueError(f"d_model must be 0 (default) or a positive integer <= 32768, got {self.d_model!r}")
        check_impl(self.memory_impl, auto=True)
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.start not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {self.start!r}")
        if self.n_layers > MAX_LAYERS:
            raise ValueError(f"n_layers={self.n_layers} is not supported: the constructed model is measured to "
                             f"fine-tune with 1 to {MAX_LAYERS} layers only")
        for name in ("init_scale", "init_tilt"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")


class ICRModel(ModelBase):
    """A ``HookedTransformer`` that knows what it was built from (see module docstring)."""

    def __init__(self, cfg: HookedTransformerConfig, icr_config: ModelConfig, basis: ResidualBasis):
        super().__init__(cfg, move_to_device=False)
        self.icr_config = icr_config  # the resolved build config
        self.icr_train = None  # TrainConfig of the last fine-tuning (training.trainer.finetune sets it)
        self.memory_fitted = icr_config.construction != "pretrained"  # a pretrained memory starts unfitted
        for name, value in _basis_tensors(basis).items():
            self.register_buffer(f"basis_{name}", value.clone(), persistent=False)  # moves with .to(device)

    @property
    def basis(self) -> ResidualBasis:
        """The residual-stream directions the weights are written in (on the model's device)."""
        return ResidualBasis(**{f.name: getattr(self, f"basis_{f.name}") for f in fields(ResidualBasis)})

    def forward(self, input, *args, **kwargs):
        """TransformerLens's forward, after checking token ids: an id outside the vocabulary (``-1`` would
        silently read the last embedding row) is a one-line ValueError. ``run_with_cache`` and
        ``run_with_hooks`` come through here too."""
        if isinstance(input, torch.Tensor) and not input.is_floating_point():
            check_token_ids(input, self.cfg.d_vocab)
        return super().forward(input, *args, **kwargs)

    def __getattr__(self, name: str):
        if name in MOVED_ATTRS["ICRModel"]:  # the first release's names (icr_interp._moved)
            return getattr(self, moved_attr("ICRModel", name))
        return super().__getattr__(name)


def _basis_tensors(basis: ResidualBasis) -> dict[str, torch.Tensor]:
    return {f.name: getattr(basis, f.name) for f in fields(ResidualBasis)}


def build_model(task: ICRecallTask, memory: str = "constructed", d_model: int | None = None, n_heads: int = 1,
                n_layers: int = 1, seed: int = 0, device: str | torch.device = "cpu", **options) -> ICRModel:
    """Build the IC-recall model for ``task`` (untrained, nothing frozen).

    Args:
        task: the task (knowledge base, number of pairs, BOS).
        memory: ``"constructed"`` (the construction that fits the knowledge
            base: ``"answer"`` if an answer reveals its relation, else
            ``"pair"``), ``"pair"``, ``"answer"`` or ``"pretrained"`` (then call
            :func:`icr_interp.model.memory.pretrained.pretrain_memory` before fine-tuning).
        d_model: residual width (default: fits the exact basis, see basis.py).
        n_heads, n_layers: architecture; the memory sits in the last block.
        seed: seeds the basis and the attention initialisation.
        device: where the model lives.
        **options: other :class:`ModelConfig` fields (``init_tilt``, ``scales``, ``pretrain``...).

    Returns:
        An :class:`ICRModel` (a ``HookedTransformer``).
    """
    unknown = sorted(set(options) - {f.name for f in fields(ModelConfig)})
    if unknown:
        raise TypeError(f"build_model got unknown option {unknown[0]!r}")
    cfg = ModelConfig(memory=memory, d_model=d_model or 0, n_heads=n_heads, n_layers=n_layers, seed=seed, **options)
    return model_from_config(task, cfg, device=device)


def resolve_config(task: ICRecallTask, cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with its defaults filled in for ``task`` (a new object; ``cfg`` is not changed)."""
    cfg.validate()
    construction = pick_construction(task.kb) if cfg.memory == "constructed" else cfg.memory
    resolved = replace(cfg, d_model=cfg.d_model or default_d_model(task.vocab, task.n_ctx), construction=construction,
                       scales=dict(cfg.scales), pretrain=dict(cfg.pretrain))
    if construction != "pretrained":  # saved resolved: dense has parameters, factored/sparse buffers
        resolved.memory_impl = choose_impl(cfg.memory_impl, task.kb.n_triplets, resolved.d_model)
    if resolved.attention == "positional" and tuple(resolved.trainable) == TRAINABLE:
        resolved.trainable = ("W_Q", "W_K")  # the head-space biases would add d_head free numbers each
    if construction == "pretrained":
        from icr_interp.model.memory.pretrained import resolve_options

        resolved.pretrain = resolve_options(resolved)
    return resolved


def model_from_config(task: ICRecallTask, cfg: ModelConfig, device: str | torch.device = "cpu") -> ICRModel:
    """Build from a :class:`ModelConfig` (which is left unchanged)."""
    cfg = resolve_config(task, cfg)
    basis = ResidualBasis.make(task.vocab, task.n_ctx, cfg.d_model, seed=cfg.seed)
    model = ICRModel(_tl_config(task, cfg), cfg, basis)
    _write_embeddings(model, basis)
    _write_attention(model, basis, task, cfg)
    _attach_memory(model, task, basis, cfg)
    return model.to(device, print_details=False)


def _tl_config(task: ICRecallTask, cfg: ModelConfig) -> HookedTransformerConfig:
    return HookedTransformerConfig(
        n_layers=cfg.n_layers, d_model=cfg.d_model, d_head=cfg.d_model, n_heads=cfg.n_heads,
        n_ctx=task.n_ctx, d_vocab=task.vocab.size, d_mlp=1, act_fn="relu", normalization_type=None,
        positional_embedding_type="standard", default_prepend_bos=False, seed=None, device="cpu",
    )


def _write_embeddings(model: HookedTransformer, basis: ResidualBasis) -> None:
    with torch.no_grad():
        model.embed.W_E.copy_(basis.token)
        model.pos_embed.W_pos.copy_(basis.pos)
        model.unembed.W_U.copy_(basis.output.T)
        model.unembed.b_U.zero_()


def start_slots(task: ICRecallTask, start: str) -> torch.Tensor:
    """Positions the starting attention is tilted toward."""
    layout = task.layout(1)
    if start == "sink":
        if not task.bos:
            raise ValueError("start 'sink' tilts attention toward BOS, but the task's prompts have no BOS")
        return layout.bos_pos
    return (layout.answer_end if start == "answer" else layout.subject_end)[0]


def _write_attention(model: HookedTransformer, basis: ResidualBasis, task: ICRecallTask, cfg: ModelConfig) -> None:
    """OV copies tokens into context directions; QK starts small, random and tilted toward the start's slots."""
    gen = torch.Generator().manual_seed(offset_seed(cfg.seed, "attention_start"))
    # [d_model d_model]: token[t] -> 2k context[t] / (heads x layers): the memory reads the mean of all query rows
    ov = 2 * task.n_pairs * basis.copy / (cfg.n_heads * cfg.n_layers)
    tilt_logits = cfg.init_tilt * math.sqrt(cfg.d_model)  # TL divides scores by sqrt(d_head)
    answer_slots = start_slots(task, cfg.start)
    for block in model.blocks:
        attn = block.attn
        with torch.no_grad():
            attn.W_V.copy_(einops.repeat(ov, "d e -> h d e", h=cfg.n_heads))
            attn.W_O.copy_(einops.repeat(torch.eye(cfg.d_model), "e d -> h e d", h=cfg.n_heads))
            for w in (attn.b_V, attn.b_O, attn.b_Q, attn.b_K):
                w.zero_()
            attn.W_Q.copy_(cfg.init_scale * torch.randn(attn.W_Q.shape, generator=gen))
            attn.W_K.copy_(cfg.init_scale * torch.randn(attn.W_K.shape, generator=gen))
            # Tilt: the query position's embedding maps to head direction 0, the start's
            # slots' embeddings map there too, so every such slot gains init_tilt.
            attn.W_Q[:, :, 0] += basis.pos[-1]
            attn.W_K[:, :, 0] += tilt_logits * basis.pos[answer_slots].sum(0)
        if cfg.attention == "positional":
            _positional_start(attn, basis, cfg, answer_slots, gen)


def _positional_start(attn, basis: ResidualBasis, cfg: ModelConfig, slots: torch.Tensor,
                      gen: torch.Generator) -> None:
    """The same start in the positional family: the query row scores ``init_tilt`` on the start's slots.

    The tilt is split evenly between query and key (``sqrt(tilt)`` each), so both factors get gradient.
    """
    n_ctx, h = basis.pos.shape[0], cfg.n_heads
    A_Q, A_K = (cfg.init_scale * torch.randn(h, n_ctx, n_ctx, generator=gen) for _ in range(2))
    root = math.copysign(math.sqrt(abs(cfg.init_tilt)), cfg.init_tilt)
    A_Q[:, n_ctx - 1, 0] += abs(root)
    A_K[:, slots, 0] += root
    positional_qk(attn, basis.pos, A_Q, A_K)


def _attach_memory(model: HookedTransformer, task: ICRecallTask, basis: ResidualBasis, cfg: ModelConfig) -> None:
    """Swap in the memory as the last MLP and zero earlier MLPs."""
    if cfg.construction == "pretrained":
        from icr_interp.model.memory.pretrained import pretrained_memory  # the memory's initial (unfitted) weights

        memory = pretrained_memory(task, basis, cfg)
    else:
        memory = construct_memory(cfg.construction, task.kb, task.vocab, basis, task.n_pairs,
                                  MemoryScales(**cfg.scales), impl=cfg.memory_impl)
    model.blocks[-1].mlp = memory
    for block in model.blocks[:-1]:
        for p in block.mlp.parameters():
            torch.nn.init.zeros_(p)
    model.cfg.d_mlp = memory.d_mlp  # the memory's lookup width, not TL's placeholder MLP
    model.setup()  # re-register hook points, the memory's included
