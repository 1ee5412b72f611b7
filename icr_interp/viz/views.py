"""circuitsvis attention views of IC-recall prompts, tokens labelled by role, rendering offline.

A view is built from one example of a :class:`~icr_interp.task.batch.Batch`: its
attention pattern at one layer (by default the last, :func:`icr_interp.analysis.scoring.attention.resolve_layer`)
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

from uuid import uuid4

import circuitsvis
import torch
from circuitsvis.utils.render import RenderedHTML
from jaxtyping import Float
from torch import Tensor

from icr_interp.analysis.scoring.attention import pattern_name, query_row, query_rows, resolve_layer
from icr_interp.task.batch import Batch
from icr_interp.task.protocol import PromptTask
from icr_interp.task.tokens import check_model_tokens
from icr_interp.task.vocab import Vocabulary
from icr_interp.tl.compat import TLModel
from icr_interp.viz import escape
from icr_interp.viz.labels import (role_labels, short_label, slot_labels, slot_positions, slot_roles,  # noqa: F401
                                   vocab_of)

VIEW_KINDS = ("heads", "patterns", "query")  # attention_heads | attention_patterns | query-row tokens
SCALES = ("query", "full")  # colour scale: the query row's max | circuitsvis's default (1.0)
ROWS = ("all", "query")  # rows shown: every destination | only the query's (others blanked)


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
    slots = slot_positions(batch.to(rows.device))
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
                   vocab: PromptTask | Vocabulary | None = None, scale: str = "query",
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
    return pattern_view(pattern, role_labels(vocab, batch, example), int(batch.layout.pred_pos[example]),
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
    # AttentionHeads draws tokens as text; the other two views insert them as HTML, so there they are
    # escaped as HTML text first ("<bos>" is not a tag).  Every prop then goes through escape.script_json.
    escaped = [escape.text(s) for s in labels]
    if kind == "heads":
        top = query_scale(pattern, query_pos) if scale == "query" else None
        return render_view("AttentionHeads", attention=pattern, tokens=list(labels), attentionHeadNames=names,
                           maxValue=top, maskUpperTri=True)
    if kind == "patterns":
        return render_view("AttentionPatterns", tokens=escaped, attention=pattern)
    row = query_row(pattern[None], torch.tensor([query_pos]))[0]  # [head src]
    return render_view("ColoredTokensMulti", tokens=escaped, values=row.T.contiguous(), labels=names)


def render_view(element: str, **props) -> AttentionView:
    """A circuitsvis element rendered like ``circuitsvis.utils.render.render``, its props made script-safe.

    circuitsvis writes its props with a plain ``json.dumps`` into ``<script>``, so a token ``</script>``
    would end the script; here they go through :func:`icr_interp.viz.escape.script_json`.
    """
    from icr_interp.viz.offline import bundle

    data = {k: (v.tolist() if isinstance(v, Tensor) else v) for k, v in props.items() if v is not None}
    uuid = "circuits-vis-" + str(uuid4())[:13]
    args = f'"{uuid}",\n  {{}},\n  {escape.script_json(data)}'
    div = f'<div id="{uuid}" style="margin: 15px 0;"></div>'
    inline = bundle().replace("</script>", "")  # as circuitsvis inlines it (offline.fragment strips this copy)
    local = (f'{div}\n<script crossorigin type="module">\n{inline}\n\n'
             f'CircuitsVis.render(\n  {args.replace("{}", "CircuitsVis." + element, 1)}\n)\n</script>')
    cdn = (f'{div}\n<script crossorigin type="module">\nimport {{ render, {element} }} from '
           f'"https://unpkg.com/circuitsvis@{circuitsvis.__version__}/dist/cdn/esm.js";\n'
           f'render(\n  {args.replace("{}", element, 1)}\n)\n</script>')
    return AttentionView(local, cdn)
