"""Every hook name the library uses, in one table (after pyvene's per-architecture hook-site tables).

TransformerLens names a hook by its module path: ``blocks.{layer}.attn.hook_pattern``. The library never builds
those strings anywhere else: it names a *site* (``"pattern"``, ``"z"``, ``"relation"``) and a layer, and
:func:`hook` spells the name. :data:`SITES` is the table; it holds TransformerLens's own block hooks and the
associative memory's stage hooks (:mod:`icr_interp.model.memory`), which live under the last block's ``mlp``.

The memory's two jobs have one hook each (:data:`STAGE_OUTPUTS`): relation inference writes
``mlp.hook_relation`` (stage I's ``d_model``-wide output) and answer lookup writes the block's
``hook_mlp_out`` (stage II's output). Their N-wide neuron hooks (``hook_rel_post``, ``hook_post``) patched whole
are the same patch -- each stage's output is a linear read-out of its neurons -- and caching them costs
batch x pos x n_neurons floats (10 GB for 256 prompts at 10^6 facts), so analyses name them only when asked.

:func:`component_hooks` is the one list of what role patching, the job split and the circuit summary patch by
default, for any HookedTransformer (a stock model has no memory hooks; they are skipped).
"""

import re

# site -> hook path under ``blocks.{layer}``
SITES: dict[str, str] = {
    "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
    "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "z": "attn.hook_z", "result": "attn.hook_result",
    "attn_scores": "attn.hook_attn_scores", "pattern": "attn.hook_pattern",
    # the associative memory's own hook points (declared once, in icr_interp.model.memory.base)
    "rel_pre": "mlp.hook_rel_pre", "rel_post": "mlp.hook_rel_post", "relation": "mlp.hook_relation",
    "mlp_pre": "mlp.hook_pre", "mlp_post": "mlp.hook_post",
}
MEMORY_HOOK_POINTS = ("hook_rel_pre", "hook_rel_post", "hook_relation", "hook_pre", "hook_post")  # on the memory
# The memory stages' outputs: the hooks that carry relation inference and answer lookup.
STAGE_OUTPUTS: dict[str, str] = {"relation_inference": "relation", "answer_lookup": "mlp_out"}
MEMORY_SITES = ("relation",)  # memory hooks patched by role by default (stage I's output; stage II is mlp_out)

_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")
_PATHS = {path: site for site, path in SITES.items()}


def hook(layer: int, site: str) -> str:
    """The TransformerLens name of ``site`` in block ``layer`` (e.g. ``hook(0, "pattern")``)."""
    if site not in SITES:
        raise ValueError(f"unknown hook site {site!r}; known: {', '.join(SITES)}")
    return f"blocks.{layer}.{SITES[site]}"


def split(name: str) -> tuple[int, str] | None:
    """``(layer, site)`` of a block hook name, or None for a name outside the table (e.g. ``hook_embed``)."""
    match = _NAME.match(name)
    if match is None or match.group(2) not in _PATHS:
        return None
    return int(match.group(1)), _PATHS[match.group(2)]


def site_of(name: str) -> str | None:
    """The site of a block hook name (None outside the table)."""
    parts = split(name)
    return parts[1] if parts else None


def last_layer(model) -> int:
    return model.cfg.n_layers - 1


def pattern_hooks(model) -> list[str]:
    """Every layer's attention pattern hook."""
    return [hook(layer, "pattern") for layer in range(model.cfg.n_layers)]


def memory_hooks(model, sites=MEMORY_SITES) -> list[str]:
    """The last block's memory stage hooks among ``sites`` that ``model`` has (none on a stock model)."""
    names = (hook(last_layer(model), site) for site in sites)
    return [name for name in names if name in model.hook_dict]


def component_hooks(model) -> list[str]:
    """resid_pre, per-head z, attn_out and mlp_out of every layer, plus the memory's stage hooks if present.

    The default set of role patching (:func:`icr_interp.analysis.patching.patch_by_role`); attention-only
    blocks have no MLP output to patch.
    """
    names = []
    for layer in range(model.cfg.n_layers):
        names += [hook(layer, "resid_pre"), hook(layer, "z"), hook(layer, "attn_out")]
        names += [] if model.cfg.attn_only else [hook(layer, "mlp_out")]
    return names + memory_hooks(model)


def job_hooks(model) -> tuple[list[str], list[str]]:
    """Activation hooks patched at the query, and pattern hooks patched on the context, of every layer.

    The query token's embedding (``resid_pre`` of block 0) is both jobs' input; then each layer's head outputs
    and attention output, the memory's stage I output and stage II's output (``mlp_out`` of the last block).
    """
    acts = [hook(0, "resid_pre")]
    for layer in range(model.cfg.n_layers):
        acts += [hook(layer, "z"), hook(layer, "attn_out")]
    acts += memory_hooks(model)
    acts += [] if model.cfg.attn_only else [hook(last_layer(model), "mlp_out")]
    return acts, pattern_hooks(model)
