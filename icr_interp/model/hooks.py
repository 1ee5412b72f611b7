"""Every hook name the library uses, in one table (after pyvene's per-architecture hook-site tables).

TransformerLens names a hook by its module path: ``blocks.{layer}.attn.hook_pattern``. The library never builds
those strings anywhere else: it names a *site* (``"pattern"``, ``"z"``, ``"relation"``) and a layer, and
:func:`hook` spells the name. :data:`TABLE` is the one table, a :class:`Site` per row with its columns (path,
kind of axes, the one-layer forward's stage, memory or not, job): TransformerLens's own block hooks and the
associative memory's stage hooks (:mod:`icr_interp.model.memory`), which live under the last block's ``mlp``.
Patching, the fast paths, the query-only forward, the circuit summary and ablation read their classifications
from it (:func:`kind`, :func:`stage`, :data:`ATTN_LEAVES`, :data:`BLOCK_LEAVES`); no other module lists hook
names (tests/test_architecture.py checks).

The memory's two jobs have one hook each (the ``job`` column of :data:`TABLE`): relation inference writes
``mlp.hook_relation`` (stage I's ``d_model``-wide output) and answer lookup writes the block's
``hook_mlp_out`` (stage II's output). Their N-wide neuron hooks (``hook_rel_post``, ``hook_post``) patched whole
are the same patch -- each stage's output is a linear read-out of its neurons -- and caching them costs
batch x pos x n_neurons floats (10 GB for 256 prompts at 10^6 facts), so analyses name them only when asked.

:func:`component_hooks` is the one list of what role patching, the job split and the circuit summary patch by
default, for any HookedTransformer (a stock model has no memory hooks; they are skipped).
"""

import re
from dataclasses import dataclass

@dataclass(frozen=True)
class Site:
    """One hook site of a block: where it sits, what its activation's axes are, what it does in the forward."""

    path: str  # hook path under ``blocks.{layer}`` (e.g. ``"attn.hook_pattern"``)
    kind: str  # axes after batch: "position" [batch pos ...], "head" [batch pos head ...], "pattern" [batch head dest src]
    stage: str | None  # the one-layer forward's part it feeds (icr_interp.analysis.causal.patching.fast); None: general path
    memory: bool = False  # an associative memory's own hook point (icr_interp.model.memory.base declares them)
    job: str | None = None  # the IC-recall job whose output it carries (the memory's two stages)
    windowed: bool = True  # its position axis is the query's (rotary keys are not: they see the past too)
    qk: bool = False  # feeds the attention scores only (a query or a key): the QK fix recomputes it through softmax
    kv: bool = False  # has one head per key/value head (grouped-query attention), not per query head


# site -> Site: every block hook the library names (TransformerLens's own, then the memory's).
TABLE: dict[str, Site] = {
    "resid_pre": Site("hook_resid_pre", "position", "attn_in"),
    "attn_in": Site("hook_attn_in", "head", None),
    "q_input": Site("hook_q_input", "head", None),
    "k_input": Site("hook_k_input", "head", None),
    "v_input": Site("hook_v_input", "head", None),
    "q": Site("attn.hook_q", "head", "attn_in", qk=True),
    "k": Site("attn.hook_k", "head", "attn_in", qk=True, kv=True),
    "v": Site("attn.hook_v", "head", "attn_in", kv=True),
    "rot_q": Site("attn.hook_rot_q", "head", None, windowed=False),
    "rot_k": Site("attn.hook_rot_k", "head", None, windowed=False),
    "attn_scores": Site("attn.hook_attn_scores", "pattern", "attn_in"),
    "pattern": Site("attn.hook_pattern", "pattern", "attn_out"),
    "z": Site("attn.hook_z", "head", "attn_out"),
    "result": Site("attn.hook_result", "head", "attn_out"),
    "attn_out": Site("hook_attn_out", "position", "attn_out"),
    "resid_mid": Site("hook_resid_mid", "position", "mlp"),
    "mlp_in": Site("hook_mlp_in", "position", None),
    "mlp_out": Site("hook_mlp_out", "position", "post", job="answer_lookup"),
    "resid_post": Site("hook_resid_post", "position", "post"),
    "rel_pre": Site("mlp.hook_rel_pre", "position", "mlp", memory=True),
    "rel_post": Site("mlp.hook_rel_post", "position", "mlp", memory=True),
    "relation": Site("mlp.hook_relation", "position", "mlp", memory=True, job="relation_inference"),
    "mlp_pre": Site("mlp.hook_pre", "position", "mlp", memory=True),
    "mlp_post": Site("mlp.hook_post", "position", "mlp", memory=True),
}
SITES: dict[str, str] = {site: s.path for site, s in TABLE.items()}  # site -> hook path
MEMORY_SITES = ("relation",)  # memory hooks patched by role by default (stage I's output; stage II is mlp_out)
# Leaf names by where they live: the attention module's own hook points, and the block's.
ATTN_LEAVES = tuple(s.path.partition(".")[2] for s in TABLE.values() if s.path.startswith("attn."))
BLOCK_LEAVES = tuple(s.path for s in TABLE.values() if "." not in s.path)
UNEMBED_LEAVES = ("hook_in", "hook_out")  # the unembedding's own hook points, where a model has them (TL 4.x)
QK_SITES = tuple(site for site, s in TABLE.items() if s.qk)


def leaves(kind: str) -> tuple[str, ...]:
    """Leaf names (``hook_z``) of the block sites whose activations have axes of ``kind`` (position, head, pattern)."""
    return tuple(s.path.rpartition(".")[2] for s in TABLE.values() if s.kind == kind and not s.memory)


_LEAF_KIND = {s.path.rpartition(".")[2]: s.kind for s in TABLE.values() if not s.memory}

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


def kind(name: str) -> str:
    """``"pattern"`` ([batch head dest src]), ``"head"`` ([batch pos head ...]) or ``"pos"`` ([batch pos ...]).

    Read from the table by the hook's leaf name, so names outside blocks (``hook_embed``) are per position.
    """
    k = _LEAF_KIND.get(name.rpartition(".")[2], "position")
    return "pos" if k == "position" else k


def stage(name: str) -> str | None:
    """The one-layer forward's part a block hook feeds (``"attn_in"``, ``"attn_out"``, ``"mlp"``, ``"post"``), or
    None where only the general path is exact."""
    parts = split(name)
    return None if parts is None else TABLE[parts[1]].stage


def windowed(name: str) -> bool:
    """Whether a hook's position axis is the query's (False for rotary keys, which see every past position)."""
    parts = split(name)
    return parts is None or TABLE[parts[1]].windowed


def kv_heads(name: str) -> bool:
    """Whether a hook's head axis counts key/value heads (``hook_k``, ``hook_v`` under grouped-query attention)."""
    parts = split(name)
    return parts is not None and TABLE[parts[1]].kv


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

    The default set of role patching (:func:`icr_interp.analysis.causal.patching.patch_by_role`); attention-only
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
