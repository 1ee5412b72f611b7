"""circuitsvis attention views of IC-recall prompts, tokens labelled by role, rendering offline.

A view is built from one example of a :class:`~icr_interp.task.prompts.Batch`: its
attention pattern at one layer (by default the last, :func:`icr_interp.analysis.attention.resolve_layer`)
and its token strings prefixed by their role (:func:`role_labels`): ``s2:s13``
is the second context subject, token ``s13``; ``a2:a40`` its answer;
``query:s3`` the query subject.  Positions come from each example's own layout
through :mod:`icr_interp.task.roles`, so examples with different layouts line up by
role, not by position.

**Colour scale.**  circuitsvis colours a cell by ``value / max_value`` (clipped
at 1) with ``max_value = 1`` by default, so BOS's self-attention of 1.0 sets
the scale and the query row -- spread over 2k context tokens -- is pale.  Our
views scale to the query row's largest weight instead (``scale="query"``;
brighter cells of other rows saturate), and ``rows="query"`` blanks every
row but the query's so the row that matters is the only one coloured.

The returned :class:`AttentionView` renders from the JavaScript bundle
circuitsvis ships (``_repr_html_`` in notebooks, ``str()`` for files): no
network check, no CDN.
"""

import html

import circuitsvis.attention
import circuitsvis.tokens
import torch
from circuitsvis.utils.render import RenderedHTML
from jaxtyping import Float
from torch import Tensor

from icr_interp.task import roles
from icr_interp.analysis.attention import pattern_name, query_row, query_rows, resolve_layer
from icr_interp.tl.compat import TLModel
from icr_interp.task.prompts import Batch, ICRecallTask
from icr_interp.task.tokens import check_model_tokens
from icr_interp.task.vocab import Vocabulary

VIEW_KINDS = ("heads", "patterns", "query")  # attention_heads | attention_patterns | query-row tokens
SCALES = ("query", "full")  # colour scale: the query row's max | circuitsvis's default (1.0)
ROWS = ("all", "query")  # rows shown: every destination | only the query's (others blanked)
_SHORT = {"subject": "s", "answer": "a", "bos": "<bos>", "query": "query"}  # display name of a role


# ----------------------------------------------------------------- labels
def _vocab(task_or_vocab: ICRecallTask | Vocabulary | None) -> Vocabulary | None:
    return task_or_vocab.vocab if isinstance(task_or_vocab, ICRecallTask) else task_or_vocab


def slot_roles(batch: Batch) -> list[str]:
    """The role (:mod:`icr_interp.task.roles` spelling) of every slot :func:`query_attention` returns.

    ``bos`` (when every prompt has one), ``subject_1``, ``answer_1``, ..., ``query``.
    """
    k = batch.layout.subject_pos.shape[1]
    bos = ["bos"] if bool((batch.layout.bos_pos >= 0).all()) else []
    return bos + [f"{r}_{j + 1}" for j in range(k) for r in ("subject", "answer")] + ["query"]


def short_label(role: str) -> str:
    """Display form of a role: ``subject_2`` -> ``s2``, ``answer_2`` -> ``a2``, ``bos`` -> ``<bos>``."""
    base, _, index = roles.canonical(role).partition("_")
    return _SHORT[base] + index if index else _SHORT.get(base, base)


def slot_labels(batch: Batch) -> list[str]:
    """Display names of the slots :func:`query_attention` returns: ``<bos>, s1, a1, ..., query``."""
    return [short_label(r) for r in slot_roles(batch)]


def _slot_positions(batch: Batch) -> Tensor:
    """Per-example position of every slot of :func:`slot_roles`, ``[batch slot]``."""
    return torch.cat([roles.positions(batch.layout, r)[0] for r in slot_roles(batch)], dim=1)


def role_labels(task_or_vocab: ICRecallTask | Vocabulary | None, batch: Batch, i: int) -> list[str]:
    """Token strings of example ``i``, prefixed by their role from the batch's layout.

    Args:
        task_or_vocab: gives the token strings; ``None`` shows token ids.
        batch: the prompts and their layout.
        i: example index.

    Returns:
        One string per position: ``"<bos>"``, ``"s1:s12"``, ``"a1:a40"``, ...,
        ``"query:s3"``; positions without a role keep their bare token string.
    """
    vocab = _vocab(task_or_vocab)
    tokens = batch.tokens[i].cpu()
    names = vocab.to_str(tokens) if vocab is not None else [str(int(t)) for t in tokens]
    labels = list(names)
    layout = batch.layout.to("cpu")
    for role in slot_roles(batch):
        (pos,) = roles.positions(layout, role)
        p = int(pos[i, 0])
        if p >= 0 and role != "bos":  # BOS's token string already says what it is
            labels[p] = f"{short_label(role)}:{names[p]}"
    return labels


# --------------------------------------------------------------- patterns
def layer_pattern(model: TLModel, tokens: Tensor, layer: int) -> Float[Tensor, "batch head dest src"]:
    """One layer's attention pattern, on CPU."""
    check_model_tokens(model, tokens)
    name = pattern_name(layer)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n == name)
    return cache[name].detach().float().cpu()


def gather_slots(rows: Float[Tensor, "batch head pos"], batch: Batch) -> Float[Tensor, "batch head slot"]:
    """Query rows gathered at each example's own slot positions (:func:`slot_roles` order)."""
    slots = _slot_positions(batch.to(rows.device))
    return torch.gather(rows, 2, slots[:, None, :].expand(-1, rows.shape[1], -1))


def query_attention(model: TLModel, batch: Batch, layer: int | None = None
                    ) -> tuple[Float[Tensor, "batch head slot"], list[str]]:
    """Attention from each example's query to every role slot (per-example layout).

    Args:
        model: any HookedTransformer.
        batch: prompts with their layout.
        layer: which layer (default: the last; negative counts from the end).

    Returns:
        ``(rows, labels)``: rows ``[batch head slot]`` on CPU, and the slot
        labels (:func:`slot_labels`).  The mean row is ``rows.mean(0)``.
    """
    layer = resolve_layer(model.cfg.n_layers, layer)
    check_model_tokens(model, batch.tokens)
    rows = query_rows(model, batch)[layer].detach().float().cpu()  # [head batch pos]
    return gather_slots(rows.transpose(0, 1), batch.to("cpu")), slot_labels(batch)


# ----------------------------------------------------------- circuitsvis
class AttentionView(RenderedHTML):
    """A circuitsvis view that always renders from the bundled script.

    circuitsvis's ``RenderedHTML`` pings google.com on every ``_repr_html_`` and
    loads its script from unpkg when online (and always for ``str()``).  This
    subclass renders its self-contained source in every case.
    """

    def _repr_html_(self) -> str:
        return self.local_src

    def show_code(self) -> str:
        return self.local_src

    def __str__(self) -> str:
        return self.local_src

    def to_html(self, title: str = "circuitsvis view") -> str:
        """A complete self-contained HTML document (see :func:`icr_interp.viz.offline_html`)."""
        from icr_interp.viz.offline import offline_html

        return offline_html(self, title=title)


def attention_view(model: TLModel, batch: Batch, example: int = 0, layer: int | None = None, kind: str = "heads", *,
                   vocab: ICRecallTask | Vocabulary | None = None, scale: str = "query",
                   rows: str = "all") -> AttentionView:
    """circuitsvis attention view of one example and layer, tokens labelled by role.

    Args:
        model: any HookedTransformer.
        batch: prompts with their layout.
        example: which example of the batch.
        layer: which layer's ``blocks.{layer}.attn.hook_pattern`` (default: the last).
        kind: ``"heads"`` (``circuitsvis.attention.attention_heads``: every
            head's pattern, one zoomed with labelled axes), ``"patterns"``
            (``attention_patterns``) or ``"query"``
            (``circuitsvis.tokens.colored_tokens_multi``: the prompt coloured by
            the query row, one colouring per head).
        vocab: a task or vocabulary for token strings (``None``: token ids).
        scale: ``"query"`` (colours reach full strength at the query row's
            largest weight) or ``"full"`` (circuitsvis's 0..1); ``"heads"`` only.
        rows: ``"all"`` or ``"query"`` (every other destination row blanked).

    Returns:
        An :class:`AttentionView` (a circuitsvis ``RenderedHTML``) that renders
        itself in notebooks without network access.
    """
    if not 0 <= example < len(batch):
        raise IndexError(f"example {example} out of range for a batch of {len(batch)}")
    layer = resolve_layer(model.cfg.n_layers, layer)
    _check_options(kind, scale, rows)
    pattern = layer_pattern(model, batch.tokens[example: example + 1], layer)[0]  # [head dest src]
    return pattern_view(pattern, role_labels(vocab, batch, example), int(batch.layout.query_pos[example]),
                        layer=layer, kind=kind, scale=scale, rows=rows)


def _check_options(kind: str, scale: str, rows: str) -> None:
    for name, value, allowed in (("kind", kind, VIEW_KINDS), ("scale", scale, SCALES), ("rows", rows, ROWS)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def query_scale(pattern: Float[Tensor, "head dest src"], query_pos: int) -> float:
    """The colour scale's top for ``scale="query"``: the query row's largest weight over heads."""
    return max(float(pattern[:, query_pos].max()), 1e-6)


def pattern_view(pattern: Float[Tensor, "head dest src"], labels: list[str], query_pos: int, *, layer: int = 0,
                 kind: str = "heads", scale: str = "query", rows: str = "all") -> AttentionView:
    """Render a precomputed pattern of one example (``[head dest src]``) as a circuitsvis view."""
    _check_options(kind, scale, rows)
    pattern = pattern.detach().float().cpu()
    if rows == "query":
        keep = torch.zeros(pattern.shape[1], dtype=torch.bool)
        keep[query_pos] = True
        pattern = pattern * keep[None, :, None]
    names = [f"L{layer}H{h}" for h in range(pattern.shape[0])]
    # AttentionHeads draws tokens on a canvas (plain text); the other two views
    # insert them as HTML, so there they must be escaped ("<bos>" is not a tag).
    escaped = [html.escape(s) for s in labels]
    if kind == "heads":
        top = query_scale(pattern, query_pos) if scale == "query" else None
        rendered = circuitsvis.attention.attention_heads(attention=pattern, tokens=labels, attention_head_names=names,
                                                         mask_upper_tri=True, max_value=top)
    elif kind == "patterns":
        rendered = circuitsvis.attention.attention_patterns(tokens=escaped, attention=pattern)
    else:
        row = query_row(pattern[None], torch.tensor([query_pos]))[0]  # [head src]
        rendered = circuitsvis.tokens.colored_tokens_multi(escaped, row.T.contiguous(), names)
    return AttentionView(rendered.local_src, rendered.cdn_src)
