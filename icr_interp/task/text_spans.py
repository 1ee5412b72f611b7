"""Text prompts rendered from templates, tokenized whole, with the token span of every subject and answer.

A prompt is rendered from templates (``pair_template="{s}: {a}\\n"`` per context pair, then
``query_template="{s}:"``) while recording the *character* span of every ``{s}`` and ``{a}``.  The whole
string is tokenized once by the model's own (fast) tokenizer with ``return_offsets_mapping=True`` -- never
piece by piece, so the BPE merges are the ones the model sees -- and each character span becomes the
tokens that overlap it: names are often several tokens ("Ouagadougou", "Burkina Faso").

The *target* of a fact is the first token of its answer as it follows the query in context: the query
prompt plus the rest of the pair template rendered for the query (``" Tokyo\\n"``) is tokenized whole and
the token after the prompt's last one is taken (``" Tokyo"``, with its leading space).

User text is only ever text: it is tokenized with ``add_special_tokens=False`` and ``split_special_tokens=True``,
so a subject spelled ``<|im_end|>`` is the characters, never the control token, and the tokenizer appends
nothing.  A BOS token is the task's decision (``bos_id``, from the model), prepended here so that every span
and layout accounts for it.  Templates name plain ``{s}`` / ``{a}`` fields only: no conversions (``!r``), no
format specs or widths (``:>99``), no attributes or indices.  A prompt where one token covers characters of
two roles (``"jump" + "er"`` -> ``"j", "umper"``) has overlapping spans: :func:`overlapping_roles` finds it.
"""

import string
from collections.abc import Sequence
from typing import NamedTuple

Span = tuple[int, int]  # inclusive [first, last] token positions (or half-open character spans, see render)


class Encoded(NamedTuple):
    """One tokenized prompt and its spans (token positions, inclusive)."""

    ids: list[int]  # token ids (a BOS first when the task prepends one)
    subjects: list[Span]  # per context pair, the subject's first and last token
    answers: list[Span]  # per context pair, the answer's first and last token
    query: Span  # the query subject's first and last token
    bos: int  # position of the BOS the task prepended (0), -1 without one


def check_template(template: str, fields: Sequence[str], what: str) -> str:
    """``template`` if it names exactly ``fields`` once each as plain ``{s}`` / ``{a}``; else a one-line ValueError."""
    if not isinstance(template, str):
        raise ValueError(f"{what} must be a string, got {template!r:.80}")
    want = " and ".join("{" + f + "}" for f in fields)
    try:
        parsed = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise ValueError(f"{what} {template!r:.80} is not a valid template: {e}") from None
    fancy = next((f"{{{n}{'!' + c if c else ''}{':' + p if p else ''}}}" for n, p, c in parsed
                  if p or c or n not in fields), None)
    if fancy is not None:
        raise ValueError(f"{what} {template!r:.80}: fields must be plain {want} (no conversions, format specs, "
                         f"widths, indices or other names), got {fancy[:40]!r}")
    if sorted(n for n, _, _ in parsed) != sorted(fields):
        raise ValueError(f"{what} must name {want} once each, got {template!r:.80}")
    return template


def render(template: str, **values: str) -> tuple[str, dict[str, Span]]:
    """``template`` filled in (plain fields, :func:`check_template`), and the half-open character span of each."""
    out, spans = [], {}
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is None:
            continue
        start = sum(map(len, out))
        spans[name] = (start, start + len(values[name]))
        out.append(values[name])
    return "".join(out), spans


def render_prompt(pairs: Sequence[tuple[str, str]], query: str, pair_template: str, query_template: str,
                  prefix: str = "") -> tuple[str, list[tuple[Span, Span]], Span]:
    """The prompt string and the character spans of every (subject, answer) and of the query subject."""
    text, pair_spans = prefix, []
    for s, a in pairs:
        piece, spans = render(pair_template, s=s, a=a)
        shift = lambda span: (span[0] + len(text), span[1] + len(text))  # noqa: E731
        pair_spans.append((shift(spans["s"]), shift(spans["a"])))
        text += piece
    piece, spans = render(query_template, s=query)
    query_span = (spans["s"][0] + len(text), spans["s"][1] + len(text))
    return text + piece, pair_spans, query_span


def token_span(offsets: Sequence[tuple[int, int]], span: Span, what: str) -> Span:
    """The first and last token whose characters overlap the half-open character ``span``."""
    hits = [i for i, (a, b) in enumerate(offsets) if a < span[1] and b > span[0] and b > a]
    if not hits:
        raise ValueError(f"no token covers the {what} at characters {span}")
    return hits[0], hits[-1]


def tokenize(tokenizer, texts: Sequence[str], offsets: bool = False):
    """User text tokenized as text only: no special tokens added, none recognised in the text."""
    return tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True,
                     return_offsets_mapping=offsets, return_attention_mask=False, return_token_type_ids=False)


def encode_prompts(tokenizer, prompts: Sequence[tuple[str, list, Span]], bos_id: int | None = None) -> list[Encoded]:
    """Tokenize rendered prompts (:func:`render_prompt`'s output) whole, in one call, and map their spans.

    ``bos_id``: a BOS token prepended to every prompt (position 0, every span shifted by one); None: none.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("text prompts need a fast tokenizer (one that returns offsets), "
                         f"got {type(tokenizer).__name__}")
    enc, out = tokenize(tokenizer, [p[0] for p in prompts], offsets=True), []
    head, shift = ([bos_id], 1) if bos_id is not None else ([], 0)
    for (_, pair_spans, query_span), ids, offsets in zip(prompts, enc["input_ids"], enc["offset_mapping"]):
        offsets = [tuple(o) for o in offsets]
        span = lambda s, what: tuple(p + shift for p in token_span(offsets, s, what))  # noqa: E731
        out.append(Encoded(head + list(ids), [span(s, "subject") for s, _ in pair_spans],
                           [span(a, "answer") for _, a in pair_spans], span(query_span, "query subject"),
                           0 if shift else -1))
    return out


def overlapping_roles(e: Encoded) -> tuple[str, str] | None:
    """The first two roles of ``e`` that share a token (a merge across a template boundary), or None."""
    spans = [(f"subject {j + 1}", s) for j, s in enumerate(e.subjects)] + \
        [(f"answer {j + 1}", a) for j, a in enumerate(e.answers)] + [("query", e.query)] + \
        ([("BOS", (e.bos, e.bos))] if e.bos >= 0 else [])
    spans.sort(key=lambda x: x[1])
    for (n1, s1), (n2, s2) in zip(spans, spans[1:]):
        if s2[0] <= s1[1]:
            return n1, n2
    return None


def continuation(pair_template: str, query_template: str, subject: str, answer: str) -> str:
    """What follows the query prompt when its answer is written out (``" Tokyo\\n"`` for the defaults)."""
    full, _ = render(pair_template, s=subject, a=answer)
    query, _ = render(query_template, s=subject)
    if not full.startswith(query):
        raise ValueError(f"the pair template rendered for a query, {full!r}, must start with the query "
                         f"template's {query!r}")
    return full[len(query):]


def first_tokens(tokenizer, prompts: Sequence[str], continuations: Sequence[str]) -> list[int]:
    """Per prompt, the first token of its continuation as tokenized in context (-1 where it merges).

    -1 where the prompt's own tokens change when the continuation follows (a merge across the boundary),
    or the continuation adds no token.
    """
    alone = tokenize(tokenizer, prompts)["input_ids"]
    joined = tokenize(tokenizer, [p + c for p, c in zip(prompts, continuations)])["input_ids"]
    return [full[len(ids)] if full[: len(ids)] == ids and len(full) > len(ids) else -1
            for ids, full in zip(alone, joined)]
