"""IC-recall prompts in text, for real language models: ``"France: Paris\\nJapan: Tokyo\\nItaly:"`` -> ``" Rome"``.

:class:`TextICRecallTask` is :class:`~icr_interp.task.prompts.ICRecallTask` with text in place of the toy
vocabulary: the same knowledge bases, the same sampling (a relation uniformly among those that know k + 1
subjects, then k + 1 distinct subjects), the same corruptions, the same :class:`~icr_interp.task.prompts.Batch`
-- so every analysis takes its batches unchanged.  What text changes:

* **Spans.** Prompts are rendered from templates and tokenized whole by the model's tokenizer
  (:mod:`icr_interp.task.text_spans`); each role is a token span in the batch's
  :class:`~icr_interp.task.prompts.Layout`, and the prediction position ``pred_pos`` is the last token
  (the separator after the query subject).  Batches are right-padded (``pad_id``): a causal model never
  reads padding at or before ``pred_pos``, so no attention mask is needed and positions are the model's own.
* **Targets.** ``Batch.answers`` holds the first token of the answer as it follows the query in context
  (``" Tokyo"`` with its leading space).  Within a relation, answers whose first token is shared cannot be
  told apart by it: their facts are excluded (``excluded`` lists them, with a warning).
* **Corruptions keep the layout.** Patching moves activations position by position, so a corrupted prompt
  must have the clean one's spans.  A relation swap or query swap is drawn only among the alternatives that
  tokenize to the same layout *and* change the target token; prompts without one are dropped by
  ``corrupt_pairs`` as on a partial knowledge base.  ``"shuffle"`` is the function-vector null (Todd et al.
  2024): the context answers permuted across the pairs (among pairs whose answers have equal token length,
  so the layout holds), the query and its target unchanged.
* **Baselines.** :meth:`with_pairs` gives the same task with another k (``with_pairs(0)``: zero-shot, the
  query alone); :meth:`named_relation_batch` the model's own factual recall with the relation named
  (``"The capital of France is"`` -> ``" Paris"``), from a phrase per relation (:data:`DEFAULT_PHRASES`
  for the built-in countries base).
"""

import warnings
from dataclasses import replace

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from icr_interp.plumbing import check_int
from icr_interp.task import text_spans as T
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.prompts import (Batch, CorruptedPairs, ICRecallTask, Layout, _check_count, _draw,
                                     _generator)

TEXT_CORRUPTIONS = ("relation", "query", "shuffle")
DEFAULT_PAIR_TEMPLATE, DEFAULT_QUERY_TEMPLATE = "{s}: {a}\n", "{s}:"
NAMED_ANSWER = " {a}"  # what follows a relation phrase: the answer after one space
DEFAULT_PHRASES = {  # relation -> phrase naming it, for the built-in countries base
    "capital": "The capital of {s} is", "largest_city": "The largest city of {s} is",
    "continent": "{s} is a country in the continent of", "currency": "The currency of {s} is the",
    "official_language": "The official language of {s} is", "calling_code": "The international calling code of {s} is",
}
_SHUFFLE_TRIES = 64  # random within-length permutations tried before a prompt's shuffle is given up


class TextICRecallTask(ICRecallTask):
    """IC-recall prompts as text, tokenized by a model's own tokenizer (see the module docstring).

    Args:
        kb: any knowledge base (built-in, a CSV, random).
        tokenizer: a Hugging Face *fast* tokenizer (``model.tokenizer``).
        n_pairs: number k of context pairs (>= 0; 0 is the zero-shot prompt, the query alone).
        pair_template: one context pair, naming ``{s}`` and ``{a}``.
        query_template: the query, naming ``{s}``; the pair template rendered for the query starts with it.
        relation_phrases: relation -> phrase naming it with ``{s}`` (the named-relation baseline); default
            :data:`DEFAULT_PHRASES` for the relations it knows.
        prefix: text before the first pair (an instruction, say).
        pad_id: token id that right-pads shorter prompts (default: the tokenizer's pad, else EOS, else 0).
    """

    def __init__(self, kb: KnowledgeBase, tokenizer, n_pairs: int = 4, pair_template: str = DEFAULT_PAIR_TEMPLATE,
                 query_template: str = DEFAULT_QUERY_TEMPLATE, *, relation_phrases: dict | None = None,
                 prefix: str = "", pad_id: int | None = None):
        self.n_pairs = check_int(n_pairs, "n_pairs", 0)
        self.pair_template = T.check_template(pair_template, ("s", "a"), "pair_template")
        self.query_template = T.check_template(query_template, ("s",), "query_template")
        phrases = {r: p for r, p in DEFAULT_PHRASES.items() if r in kb.relations} if relation_phrases is None \
            else dict(relation_phrases)
        unknown = sorted(set(phrases) - set(kb.relations))
        if unknown:
            raise ValueError(f"relation_phrases name relations the knowledge base lacks: {', '.join(unknown)}")
        self.relation_phrases = {r: T.check_template(p, ("s",), f"relation phrase of {r!r}")
                                 for r, p in phrases.items()}
        self.prefix, self.tokenizer, self.source_kb, self.bos = str(prefix), tokenizer, kb, False
        self.pad_id = pad_id if pad_id is not None else next(
            (i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
        targets = self._fact_targets(kb, self.query_template, lambda s, a: T.continuation(
            self.pair_template, self.query_template, s, a))
        table, self.excluded = _exclude_shared(kb, targets)
        self.kb = replace(kb, table=table)
        self.target_table = torch.where(table >= 0, targets, -1)  # [relation subject] target token id
        known = table >= 0
        self._usable = torch.nonzero(known.sum(1) >= self.n_pairs + 1).flatten()
        if len(self._usable) == 0:
            raise ValueError(f"no relation has the {self.n_pairs + 1} subjects a prompt with k={self.n_pairs} needs")
        if self.excluded:
            shown = "; ".join(f"{r}: {', '.join(a[:4])}{' ...' if len(a) > 4 else ''}"
                              for r, a in self.excluded.items())
            warnings.warn(f"{sum(map(len, self.excluded.values()))} answer(s) share their first token with another "
                          f"answer of the same relation and are excluded ({shown})", UserWarning, stacklevel=2)

    def _fact_targets(self, kb: KnowledgeBase, template: str, follow) -> Int[Tensor, "relation subject"]:
        """First token of every fact's answer after ``template`` rendered for its subject (-1: none)."""
        rel, subj = torch.nonzero(kb.table >= 0, as_tuple=True)
        prompts = [self.prefix + T.render(template, s=kb.subjects[s])[0] for s in subj.tolist()]
        follows = [follow(kb.subjects[s], kb.answers[kb.table[r, s]]) for r, s in zip(rel.tolist(), subj.tolist())]
        out = torch.full_like(kb.table, -1)
        out[rel, subj] = torch.tensor(T.first_tokens(self.tokenizer, prompts, follows) if prompts else [],
                                      dtype=torch.long)
        return out

    # ------------------------------------------------------------ geometry
    @property
    def n_ctx(self) -> int:
        raise ValueError("text prompts have no fixed length; read it from a batch (batch.tokens.shape[1])")

    def layout(self, batch_size: int) -> Layout:
        raise ValueError("text prompts have a layout per example; read it from a batch (batch.layout)")

    def config(self) -> dict:
        return dict(n_pairs=self.n_pairs, pair_template=self.pair_template, query_template=self.query_template,
                    prefix=self.prefix, relation_phrases=self.relation_phrases)

    def with_pairs(self, n_pairs: int) -> "TextICRecallTask":
        """The same task (knowledge base, tokenizer, templates) with ``n_pairs`` context pairs; 0: zero-shot."""
        return TextICRecallTask(self.source_kb, self.tokenizer, n_pairs, self.pair_template, self.query_template,
                                relation_phrases=self.relation_phrases, prefix=self.prefix, pad_id=self.pad_id)

    # -------------------------------------------------------------- build
    def _encode(self, relations: Tensor, subjects: Tensor, query: Tensor,
                context_answers: Tensor | None = None) -> list[T.Encoded]:
        kb = self.kb
        shown = kb.table[relations[:, None], subjects] if context_answers is None else context_answers
        prompts = [T.render_prompt([(kb.subjects[s], kb.answers[a]) for s, a in zip(ss, aa)], kb.subjects[q],
                                   self.pair_template, self.query_template, self.prefix)
                   for ss, aa, q in zip(subjects.tolist(), shown.tolist(), query.tolist())]
        return T.encode_prompts(self.tokenizer, prompts) if prompts else []

    def _build(self, relations: Tensor, subjects: Tensor, query: Tensor,
               context_answers: Tensor | None = None) -> Batch:
        """Tokens (right-padded), targets and span layout from relation and subject ids."""
        shown = self.kb.table[relations[:, None], subjects] if context_answers is None else context_answers
        target = self.target_table[relations, query]
        if (shown < 0).any() or (target < 0).any():
            raise ValueError("prompt uses a fact the task does not have (unknown, or excluded for its first token)")
        encoded = self._encode(relations, subjects, query, shown)
        return Batch(tokens=_pad([e.ids for e in encoded], self.pad_id), answers=target, relations=relations.clone(),
                     subjects=subjects.clone(), query=query.clone(), layout=_layout(encoded, subjects.shape[1]),
                     context_answers=shown.clone())

    # ------------------------------------------------------------ corrupt
    def corruptible(self, batch: Batch, kind: str) -> Bool[Tensor, " batch"]:
        """Which prompts of ``batch`` have a layout-keeping corruption of ``kind`` (see the module docstring)."""
        b = batch.to("cpu")
        ok = self._shuffles(b)[1] if _check_text_kind(kind) == "shuffle" else self._alternatives(b, kind).any(1)
        return ok.to(batch.tokens.device)

    def corrupt(self, batch: Batch, kind: str, seed: int | None = None, *,
                generator: torch.Generator | None = None) -> Batch:
        """The corrupted counterpart of ``batch``, with the same layout (``"relation"``, ``"query"``, ``"shuffle"``)."""
        if _check_text_kind(kind) != "shuffle":
            return self._same_width(super().corrupt(batch, kind, seed, generator=generator), batch)
        gen = _generator(seed, generator)
        b = batch.to("cpu")
        groups, ok = self._shuffles(b)
        if not ok.all():
            raise ValueError(f"shuffle needs two different answers of equal token length in the context; "
                             f"{int((~ok).sum())} of {len(b)} prompts have none (task.corrupt_pairs drops them)")
        shown = b.context_answers.clone()
        for i in range(len(b)):
            shown[i] = self._shuffle_one(b, i, groups[i], gen)
        out = replace(self._build(b.relations, b.subjects, b.query, shown), layout=b.layout)
        return self._same_width(out.to(batch.tokens.device), batch)

    def _same_width(self, out: Batch, like: Batch) -> Batch:
        """``out`` padded to ``like``'s width (a corrupted sub-batch keeps its clean batch's shape)."""
        extra = like.tokens.shape[1] - out.tokens.shape[1]
        return replace(out, tokens=torch.nn.functional.pad(out.tokens, (0, extra), value=self.pad_id)) if extra > 0 \
            else out

    def sample_pairs(self, n: int, kind: str, seed: int | None = None, *, generator: torch.Generator | None = None,
                     device: str | torch.device = "cpu", max_draws: int = 64) -> CorruptedPairs:
        """``n`` clean prompts that have a layout-keeping corruption of ``kind``, and their corrupted twins.

        Text corruptions must keep every span's length, so many prompts have none (a relation swap needs
        another relation whose k + 1 answers tokenize alike); this draws prompts until ``n`` have one, up to
        ``max_draws * n`` in all (``n_dropped`` counts the draws left out).
        """
        _check_count(n)
        gen = _generator(seed, generator)
        kept, drawn = [], 0
        while sum(map(len, kept)) < n:
            if drawn >= max_draws * max(n, 1):
                raise ValueError(f"only {sum(map(len, kept))} of {drawn} prompts have a {kind} corruption; "
                                 f"{n} were asked")
            b = self.sample(max(2 * n, 16), generator=gen)
            drawn += len(b)
            kept.append(b[self.corruptible(b, kind)])
        clean = _concat(kept, self.pad_id)[:n]
        return CorruptedPairs(clean.to(device), self.corrupt(clean, kind, generator=gen).to(device), drawn - n)

    def _shuffle_one(self, b: Batch, i: int, groups: list[Tensor], gen: torch.Generator) -> Tensor:
        key = _keys(b.layout[i:i + 1])[0]
        for _ in range(_SHUFFLE_TRIES):
            new = b.context_answers[i].clone()
            for g in groups:
                new[g] = new[g[torch.randperm(len(g), generator=gen)]]
            if (new != b.context_answers[i]).any():
                enc = self._encode(b.relations[i:i + 1], b.subjects[i:i + 1], b.query[i:i + 1], new[None])[0]
                if enc.layout_key() == key:
                    return new
        raise ValueError(f"no layout-keeping shuffle of prompt {i} found in {_SHUFFLE_TRIES} tries")

    def _shuffles(self, b: Batch) -> tuple[list[list[Tensor]], Bool[Tensor, " batch"]]:
        """Per prompt, the pairs grouped by answer token length, and whether a group holds two answers."""
        lengths = b.layout.answer_pos - b.layout.answer_start
        groups, ok = [], torch.zeros(len(b), dtype=torch.bool)
        for i in range(len(b)):
            mine = [torch.nonzero(lengths[i] == n).flatten() for n in lengths[i].unique()]
            groups.append([g for g in mine if len(g) > 1])
            ok[i] = any(len(b.context_answers[i, g].unique()) > 1 for g in groups[-1])
        return groups, ok

    def _alternatives(self, b: Batch, kind: str) -> Bool[Tensor, "batch option"]:
        """The toy task's alternatives that change the *target token* and keep the layout (tokenized to check)."""
        ok = super()._alternatives(b, kind)
        tt = self.target_table
        ok &= (tt[:, b.query].T if kind == "relation" else tt[b.relations]) != b.answers[:, None]
        if kind == "query":  # cheap first cut: the query alone tokenizes to as many tokens (then checked whole)
            lengths = self._query_lengths()
            ok &= lengths[None, :] == lengths[b.query][:, None]
        rows, options = torch.nonzero(ok, as_tuple=True)
        if len(rows) == 0:
            return ok
        if kind == "relation":
            encoded = self._encode(options, b.subjects[rows], b.query[rows])
        else:
            encoded = self._encode(b.relations[rows], b.subjects[rows], options, b.context_answers[rows])
        keys = _keys(b.layout)
        same = torch.tensor([e.layout_key() == keys[r] for e, r in zip(encoded, rows.tolist())])
        ok[rows[~same], options[~same]] = False
        return ok

    def _query_lengths(self) -> Int[Tensor, " subject"]:
        """Tokens of each subject's query template rendered alone (a prefilter for layout-keeping query swaps)."""
        if not hasattr(self, "_qlen"):
            texts = [T.render(self.query_template, s=s)[0] for s in self.kb.subjects]
            self._qlen = torch.tensor([len(x) for x in self.tokenizer(texts)["input_ids"]], dtype=torch.long)
        return self._qlen

    # ----------------------------------------------------------- baselines
    def named_relation_batch(self, batch_size: int, seed: int | None = None, *,
                             generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> Batch:
        """Factual recall with the relation named: ``"The capital of France is"`` -> ``" Paris"``.

        Facts are drawn uniformly over the relations with a phrase (``relation_phrases``), then uniformly
        over the subjects each knows.  The batch has no context pairs; its query span is the subject in the
        phrase and its target the answer's first token after the phrase and one space (facts whose first
        token is shared within the relation are left out).
        """
        _check_count(batch_size)
        gen = _generator(seed, generator)
        targets = self._named_targets()
        rels = torch.tensor([r for r in range(self.kb.n_relations) if (targets[r] >= 0).any()], dtype=torch.long)
        if len(rels) == 0:
            raise ValueError("no relation has a phrase naming it (pass relation_phrases={relation: '... {s} ...'})")
        relations = rels[torch.randint(len(rels), (batch_size,), generator=gen)]
        query = torch.stack([_draw(targets[r] >= 0, gen) for r in relations.tolist()]) if batch_size else \
            torch.zeros(0, dtype=torch.long)
        prompts = [T.render_prompt([], self.kb.subjects[s], "", self.relation_phrases[self.kb.relations[r]],
                                   self.prefix) for r, s in zip(relations.tolist(), query.tolist())]
        encoded = T.encode_prompts(self.tokenizer, prompts) if prompts else []
        empty = torch.zeros(batch_size, 0, dtype=torch.long)
        return Batch(tokens=_pad([e.ids for e in encoded], self.pad_id), answers=targets[relations, query],
                     relations=relations, subjects=empty, query=query, layout=_layout(encoded, 0),
                     context_answers=empty.clone()).to(device)

    def _named_targets(self) -> Int[Tensor, "relation subject"]:
        if not hasattr(self, "_named"):
            kb = self.kb
            named = KnowledgeBase(kb.subjects, kb.relations, kb.answers, torch.where(torch.tensor(
                [r in self.relation_phrases for r in kb.relations])[:, None], kb.table, -1))
            out = torch.full_like(kb.table, -1)
            for r in torch.nonzero(torch.tensor([n in self.relation_phrases for n in kb.relations])).flatten().tolist():
                one = replace(named, table=torch.where(torch.arange(kb.n_relations)[:, None] == r, named.table, -1))
                out[r] = self._fact_targets(one, self.relation_phrases[kb.relations[r]],
                                            lambda s, a: NAMED_ANSWER.format(a=a))[r]
            table, _ = _exclude_shared(named, out)
            self._named = torch.where(table >= 0, out, -1)
        return self._named

    # ------------------------------------------------------------- display
    def to_str(self, tokens: Tensor) -> list | str:
        """Token strings of ``tokens`` as text (``[]`` -> str, ``[pos]`` -> list, ``[batch pos]`` -> list of lists)."""
        if tokens.ndim == 2:
            return [self.to_str(t) for t in tokens]
        if tokens.ndim == 0:
            return self.tokenizer.decode([int(tokens)])
        return [self.tokenizer.decode([i]) for i in tokens.tolist()]  # readable text ("Ġ"/"Ċ" decoded)

    def prompt_text(self, batch: Batch, i: int) -> str:
        """The text of example ``i`` (padding removed)."""
        return self.tokenizer.decode(batch.tokens[i, : int(batch.layout.pred_pos[i]) + 1].tolist())

    def sample_facts(self, *args, **kwargs):
        raise ValueError("text tasks have no relation tokens; use named_relation_batch for factual recall")


def _exclude_shared(kb: KnowledgeBase, targets: Tensor) -> tuple[Tensor, dict[str, list[str]]]:
    """The table without facts whose target is -1 or shared by two answers of one relation, and what went."""
    table, excluded = torch.where(targets >= 0, kb.table, -1), {}
    for r in range(kb.n_relations):
        known = torch.nonzero(kb.table[r] >= 0).flatten()
        pairs = {(int(kb.table[r, s]), int(targets[r, s])) for s in known}
        by_token: dict[int, set[int]] = {}
        for answer, token in pairs:
            by_token.setdefault(token, set()).add(answer)
        bad = {a for tok, answers in by_token.items() if tok < 0 or len(answers) > 1 for a in answers}
        if bad:
            excluded[kb.relations[r]] = sorted(kb.answers[a] for a in bad)
            table[r, torch.isin(kb.table[r], torch.tensor(sorted(bad)))] = -1
    return table, excluded


def _concat(batches: list[Batch], pad_id: int) -> Batch:
    """One batch of several (tokens right-padded to the widest)."""
    width = max(b.tokens.shape[1] for b in batches)
    tokens = torch.cat([torch.nn.functional.pad(b.tokens, (0, width - b.tokens.shape[1]), value=pad_id)
                        for b in batches])
    cat = lambda obj, name: torch.cat([getattr(getattr(b, obj) if obj else b, name) for b in batches])  # noqa: E731
    layout = Layout(**{f: cat("layout", f) for f in ("subject_pos", "answer_pos", "query_pos", "bos_pos",
                                                      "subject_start", "answer_start", "query_start", "pred_pos")})
    return Batch(tokens=tokens, answers=cat(None, "answers"), relations=cat(None, "relations"),
                 subjects=cat(None, "subjects"), query=cat(None, "query"), layout=layout,
                 context_answers=cat(None, "context_answers"))


def _pad(ids: list[list[int]], pad_id: int) -> Int[Tensor, "batch pos"]:
    width = max((len(x) for x in ids), default=0)
    return torch.tensor([x + [pad_id] * (width - len(x)) for x in ids], dtype=torch.long).reshape(len(ids), width)


def _layout(encoded: list[T.Encoded], k: int) -> Layout:
    """The span layout of tokenized prompts (``pred_pos``: each prompt's last token)."""
    n = len(encoded)
    spans = lambda key, j: torch.tensor([[s[j] for s in getattr(e, key)] for e in encoded],  # noqa: E731
                                        dtype=torch.long).reshape(n, k)
    one = lambda f: torch.tensor([f(e) for e in encoded], dtype=torch.long).reshape(n)  # noqa: E731
    return Layout(subject_pos=spans("subjects", 1), answer_pos=spans("answers", 1), query_pos=one(lambda e: e.query[1]),
                  bos_pos=one(lambda e: e.bos), subject_start=spans("subjects", 0), answer_start=spans("answers", 0),
                  query_start=one(lambda e: e.query[0]), pred_pos=one(lambda e: len(e.ids) - 1))


def _keys(layout: Layout) -> list[tuple]:
    """:meth:`Encoded.layout_key` of every example of a layout."""
    lay = layout.to("cpu")
    pair = lambda start, end: tuple(zip(start.tolist(), end.tolist()))  # noqa: E731
    return [(int(lay.pred_pos[i]) + 1, pair(lay.subject_start[i], lay.subject_pos[i]),
             pair(lay.answer_start[i], lay.answer_pos[i]), (int(lay.query_start[i]), int(lay.query_pos[i])),
             int(lay.bos_pos[i])) for i in range(lay.n_examples)]


def _check_text_kind(kind: str) -> str:
    if kind not in TEXT_CORRUPTIONS:
        raise ValueError(f"corruption kind must be one of {TEXT_CORRUPTIONS}, got {kind!r}")
    return kind
