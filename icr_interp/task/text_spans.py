"""Text prompts rendered from templates, tokenized whole, with the token span of every subject and answer.

A prompt is rendered from templates (``pair_template="{s}: {a}\\n"`` per context pair, then
``query_template="{s}:"``) while recording the *character* span of every ``{s}`` and ``{a}``.  The whole
string is tokenized once by the model's own (fast) tokenizer with ``return_offsets_mapping=True`` -- never
piece by piece, so the BPE merges are the ones the model sees -- and each character span becomes the
tokens that overlap it: names are often several tokens ("Ouagadougou", "Burkina Faso").

The *target* of a fact is the first token of its answer as it follows the query in context: the query
prompt plus the rest of the pair template rendered for the query (``" Tokyo\\n"``) is tokenized whole and
the token after the prompt's last one is taken (``" Tokyo"``, with its leading space).
"""

import string
from collections.abc import Sequence
from typing import NamedTuple

Span = tuple[int, int]  # inclusive [first, last] token positions (or half-open character spans, see render)


class Encoded(NamedTuple):
    """One tokenized prompt and its spans (token positions, inclusive)."""

    ids: list[int]  # token ids, special tokens included when the tokenizer adds them
    subjects: list[Span]  # per context pair, the subject's first and last token
    answers: list[Span]  # per context pair, the answer's first and last token
    query: Span  # the query subject's first and last token
    bos: int  # position of a BOS the tokenizer added, -1 without one

    def layout_key(self) -> tuple:
        """What must match for two prompts to align position by position (a corruption keeps it)."""
        return len(self.ids), tuple(self.subjects), tuple(self.answers), self.query, self.bos


def check_template(template: str, fields: Sequence[str], what: str) -> str:
    """``template`` if it names exactly ``fields`` once each (``{s}``, ``{a}``); else a one-line ValueError."""
    if not isinstance(template, str):
        raise ValueError(f"{what} must be a string, got {template!r}")
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise ValueError(f"{what} {template!r} is not a valid template: {e}") from None
    if sorted(names) != sorted(fields):
        want = " and ".join("{" + f + "}" for f in fields)
        raise ValueError(f"{what} must name {want} once each, got {template!r}")
    return template


def render(template: str, **values: str) -> tuple[str, dict[str, Span]]:
    """``template`` filled in, and the half-open character span of each field."""
    out, spans = [], {}
    for literal, name, spec, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is None:
            continue
        value = format(values[name], spec or "")
        start = sum(map(len, out))
        spans[name] = (start, start + len(value))
        out.append(value)
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


def encode_prompts(tokenizer, prompts: Sequence[tuple[str, list, Span]]) -> list[Encoded]:
    """Tokenize rendered prompts (:func:`render_prompt`'s output) whole, in one call, and map their spans."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("text prompts need a fast tokenizer (one that returns offsets), "
                         f"got {type(tokenizer).__name__}")
    enc = tokenizer([p[0] for p in prompts], return_offsets_mapping=True)
    out = []
    for (_, pair_spans, query_span), ids, offsets in zip(prompts, enc["input_ids"], enc["offset_mapping"]):
        ids, offsets, specials = list(ids), [tuple(o) for o in offsets], set(tokenizer.all_special_ids)
        while len(ids) > 1 and ids[-1] in specials:  # an EOS the tokenizer appends is not the prompt's
            ids, offsets = ids[:-1], offsets[:-1]
        bos = 0 if ids and ids[0] in specials and tokenizer.bos_token_id == ids[0] else -1
        out.append(Encoded(ids, [token_span(offsets, s, "subject") for s, _ in pair_spans],
                           [token_span(offsets, a, "answer") for _, a in pair_spans],
                           token_span(offsets, query_span, "query subject"), bos))
    return out


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
    alone = tokenizer(list(prompts))["input_ids"]
    joined = tokenizer([p + c for p, c in zip(prompts, continuations)])["input_ids"]
    return [full[len(ids)] if full[: len(ids)] == ids and len(full) > len(ids) else -1
            for ids, full in zip(alone, joined)]
