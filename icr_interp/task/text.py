"""IC-recall prompts in text, for real language models: ``"France: Paris\\nJapan: Tokyo\\nItaly:"`` -> ``" Rome"``.

:class:`TextICRecallTask` makes what :class:`~icr_interp.task.prompts.ICRecallTask` makes, with text in place
of the toy vocabulary: the same knowledge bases, the same :class:`~icr_interp.task.batch.Batch` -- so every
analysis takes its batches unchanged.  Both implement :class:`~icr_interp.task.protocol.PromptTask`; neither
derives from the other (a text prompt has no fixed length ``n_ctx`` nor one ``layout(n)`` for a batch, and no
relation tokens for ``sample_facts``).  What text changes:

* **Spans.** Prompts are rendered from templates and tokenized whole by the model's tokenizer
  (:mod:`icr_interp.task.text_spans`); each role is a token span in the batch's
  :class:`~icr_interp.task.layout.Layout`, and the prediction position ``pred_pos`` is the last token
  (the separator after the query subject).  Batches are right-padded (``pad_id``): a causal model never
  reads padding at or before ``pred_pos``, so no attention mask is needed and positions are the model's own.
  A prompt in which one token covers two roles (a merge across a template boundary) is redrawn, and counted
  (``n_redrawn``): no position ever belongs to two roles.
* **BOS per model.** Pass the model itself (``TextICRecallTask(kb, model)``): its tokenizer is used and
  ``model.cfg.default_prepend_bos`` decides whether a BOS token starts every prompt (SmolLM2: none; Gemma:
  ``<bos>``); ``prepend_bos=`` overrides.  With a bare tokenizer, BOS is prepended iff the tokenizer itself
  adds one.  User text never yields a special token (:func:`~icr_interp.task.text_spans.tokenize`).  With a
  model, prompts longer than its ``n_ctx`` and token ids past its ``d_vocab`` are refused in one line.
* **Targets.** ``Batch.answers`` holds the first token of the answer as it follows the query in context
  (``" Tokyo"`` with its leading space).  Within a relation, answers whose first token is shared cannot be
  told apart by it: their facts are excluded (``excluded`` lists them, with a warning).
* **The stream.** Prompts are prefix-stable (``sample(n)`` is the start of ``sample(n + 1)``) and relations
  are dealt in balanced blocks unless ``balance=False`` (:mod:`icr_interp.task.text_batches`).
* **Corruptions keep the layout by construction** (:mod:`icr_interp.task.text_corruptions`): ``"relation"``,
  ``"query"`` and the function-vector null ``"shuffle"``.
* **Baselines.** :meth:`with_pairs` gives the same task with another k (``with_pairs(0)``: zero-shot, the
  query alone); :meth:`named_relation_batch` the model's own factual recall with the relation named
  (``"The capital of France is"`` -> ``" Paris"``), from a phrase per relation (:data:`DEFAULT_PHRASES`
  for the built-in countries base, matched to ``"largest city"`` as to ``largest_city``); ``unnamed`` lists
  the relations without one.
"""

import copy
import warnings
from dataclasses import replace

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from icr_interp.plumbing import check_int
from icr_interp.task import sampling as S
from icr_interp.task import text_batches as B
from icr_interp.task import text_corruptions as C
from icr_interp.task import text_spans as T
from icr_interp.task.batch import Batch, CorruptedPairs
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.layout import Layout
from icr_interp.task.protocol import describe
from icr_interp.task.text_fit import check_ids, check_length, check_sample_bytes, resolve_model, targets_in_chunks

TEXT_CORRUPTIONS = C.TEXT_CORRUPTIONS
DEFAULT_PAIR_TEMPLATE, DEFAULT_QUERY_TEMPLATE = "{s}: {a}\n", "{s}:"
NAMED_ANSWER = " {a}"  # what follows a relation phrase: the answer after one space
DEFAULT_PHRASES = {  # relation -> phrase naming it, for the built-in countries base
    "capital": "The capital of {s} is", "largest_city": "The largest city of {s} is",
    "continent": "{s} is a country in the continent of", "currency": "The currency of {s} is the",
    "official_language": "The official language of {s} is", "calling_code": "The international calling code of {s} is",
}
REDRAWS = 32  # draws per prompt before a relation whose prompts always merge two roles is refused


def _plain(name: str) -> str:
    return "_".join(name.lower().replace("-", " ").split())


class TextICRecallTask:
    """IC-recall prompts as text, tokenized by a model's own tokenizer (see the module docstring).

    Args:
        kb: any knowledge base (built-in, a CSV, random).
        tokenizer: the model (``HookedTransformer``, its tokenizer, BOS rule, ``n_ctx`` and ``d_vocab``) or a
            Hugging Face *fast* tokenizer.
        n_pairs: number k of context pairs (>= 0; 0 is the zero-shot prompt, the query alone).
        pair_template: one context pair, naming plain ``{s}`` and ``{a}``.
        query_template: the query, naming plain ``{s}``; the pair template rendered for the query starts with it.
        relation_phrases: relation -> phrase naming it with ``{s}`` (the named-relation baseline); default
            :data:`DEFAULT_PHRASES` for the relations it knows.
        prefix: text before the first pair (an instruction, say).
        pad_id: token id that right-pads shorter prompts (default: the tokenizer's pad, else EOS, else 0).
        prepend_bos: start every prompt with the tokenizer's BOS (default: the model's
            ``cfg.default_prepend_bos``, or whether a bare tokenizer adds one itself).
        balance: deal relations in balanced blocks (default); False draws each prompt's relation uniformly.
    """

    def __init__(self, kb: KnowledgeBase, tokenizer, n_pairs: int = 4, pair_template: str = DEFAULT_PAIR_TEMPLATE,
                 query_template: str = DEFAULT_QUERY_TEMPLATE, *, relation_phrases: dict | None = None,
                 prefix: str = "", pad_id: int | None = None, prepend_bos: bool | None = None, balance: bool = True):
        self.n_pairs = check_int(n_pairs, "n_pairs", 0)
        self.pair_template = T.check_template(pair_template, ("s", "a"), "pair_template")
        self.query_template = T.check_template(query_template, ("s",), "query_template")
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a string, got {type(prefix).__name__}")
        self.tokenizer, self.bos_id, self.limits = resolve_model(tokenizer, prepend_bos)
        self.bos, self.balance, self.prefix, self.source_kb, self.n_redrawn = self.bos_id is not None, \
            bool(balance), prefix, kb, 0
        self._set_phrases(kb, relation_phrases)
        tok = self.tokenizer
        self.pad_id = pad_id if pad_id is not None else next(
            (i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)
        check_length(self, kb)
        self._check_sizes(kb)
        targets = self._fact_targets(kb, self.query_template, lambda s, a: T.continuation(
            self.pair_template, self.query_template, s, a))
        table, self.excluded = B.exclude_shared(kb, targets)
        self.kb = replace(kb, table=table)
        self.target_table = torch.where(table >= 0, targets, -1)  # [relation subject] target token id
        check_ids(self, [self.pad_id] + ([self.bos_id] if self.bos else []) + [int(self.target_table.max())],
                  "the targets, the padding or BOS")
        self._set_usable(warn=True)

    def _set_phrases(self, kb: KnowledgeBase, relation_phrases: dict | None) -> None:
        defaults = {_plain(r): p for r, p in DEFAULT_PHRASES.items()}
        phrases = {r: defaults[_plain(r)] for r in kb.relations if _plain(r) in defaults} \
            if relation_phrases is None else dict(relation_phrases)
        unknown = sorted(set(phrases) - set(kb.relations))
        if unknown:
            raise ValueError(f"relation_phrases name relations the knowledge base lacks: {', '.join(unknown)}")
        self.relation_phrases = {r: T.check_template(p, ("s",), f"relation phrase of {r!r}")
                                 for r, p in phrases.items()}
        self.unnamed = tuple(r for r in kb.relations if r not in self.relation_phrases)

    def _check_sizes(self, kb: KnowledgeBase) -> None:
        """Fail before tokenizing every fact when no relation could fill a prompt whatever the tokens."""
        if not (kb.table >= 0).sum(1).ge(self.n_pairs + 1).any():
            raise ValueError(f"no relation has the {self.n_pairs + 1} subjects a prompt with k={self.n_pairs} needs "
                             f"(the most any relation knows is {int((kb.table >= 0).sum(1).max())})")

    def _set_usable(self, warn: bool) -> None:
        known = (self.kb.table >= 0).sum(1)
        self._usable = S.usable_relations(self.kb.table, self.n_pairs + 1)
        n_out = sum(map(len, self.excluded.values()))
        shown = "; ".join(f"{r}: {', '.join(a[:4])}{' ...' if len(a) > 4 else ''}" for r, a in self.excluded.items())
        if len(self._usable) == 0:
            raise ValueError(f"no relation has the {self.n_pairs + 1} subjects a prompt with k={self.n_pairs} needs "
                             f"once {n_out} answer(s) sharing their first token with another answer of their "
                             f"relation are excluded (at most {int(known.max())} left in a relation; {shown})"
                             if n_out else f"no relation has the {self.n_pairs + 1} subjects a prompt with "
                                           f"k={self.n_pairs} needs")
        if warn and self.excluded:
            warnings.warn(f"{n_out} answer(s) share their first token with another answer of the same relation "
                          f"and are excluded ({shown})", UserWarning, stacklevel=3)

    def _fact_targets(self, kb: KnowledgeBase, template: str, follow) -> Int[Tensor, "relation subject"]:
        """First token of every fact's answer after ``template`` rendered for its subject (-1: none)."""
        rel, subj = torch.nonzero(kb.table >= 0, as_tuple=True)
        prompts = [self.prefix + T.render(template, s=kb.subjects[s])[0] for s in subj.tolist()]
        follows = [follow(kb.subjects[s], kb.answers[kb.table[r, s]]) for r, s in zip(rel.tolist(), subj.tolist())]
        out = torch.full_like(kb.table, -1)
        out[rel, subj] = torch.tensor(targets_in_chunks(self.tokenizer, prompts, follows), dtype=torch.long)
        return out

    # ------------------------------------------------------------ settings
    @property
    def relation_weights(self) -> Tensor:
        """How prompts draw their relation: uniformly over the usable ones (the balanced deal's long-run share)."""
        return S.relation_weights(self.kb.n_relations, self._usable)

    def config(self) -> dict:
        return dict(n_pairs=self.n_pairs, pair_template=self.pair_template, query_template=self.query_template,
                    prefix=self.prefix, relation_phrases=self.relation_phrases, prepend_bos=self.bos,
                    balance=self.balance)

    def __repr__(self) -> str:
        return describe(self)

    def with_pairs(self, n_pairs: int) -> "TextICRecallTask":
        """The same task (knowledge base, tokenizer, templates, targets) with ``n_pairs`` context pairs; 0: zero-shot.

        Targets and exclusions do not depend on k: they are kept, not recomputed (nor warned about again).
        """
        other = copy.copy(self)
        other.n_pairs, other.n_redrawn = check_int(n_pairs, "n_pairs", 0), 0
        other._set_usable(warn=False)
        return other

    # ------------------------------------------------------------- sample
    def sample(self, batch_size: int, seed: int | None = None, *, generator: torch.Generator | None = None,
               device: str | torch.device = "cpu") -> Batch:
        """Prompts from the stream (prefix-stable, relations balanced): k + 1 distinct subjects per prompt."""
        S.check_count(batch_size)
        check_sample_bytes(self, batch_size)
        gens = B.prompt_generators(S.generator(seed, generator), batch_size)
        relations = B.deal(self._usable, gens, self.balance)
        subjects = torch.stack([self._distinct(int(r), g) for r, g in zip(relations, gens)]) if batch_size else \
            torch.zeros(0, self.n_pairs + 1, dtype=torch.long)
        encoded = self._encode(relations, subjects[:, :-1], subjects[:, -1])
        bad = [i for i, e in enumerate(encoded) if T.overlapping_roles(e)]
        if bad and self.n_redrawn == 0:  # said once per task, counted always
            warnings.warn(f"{len(bad)} of {batch_size} prompts had a token in two roles "
                          f"({' and '.join(T.overlapping_roles(encoded[bad[0]]))}: a merge across the template's "
                          f"boundary) and were redrawn; task.n_redrawn counts them", UserWarning, stacklevel=2)
        for i in bad:
            subjects[i], encoded[i] = self._redraw(int(relations[i]), gens[i], encoded[i])
        self.n_redrawn += len(bad)
        return self._build(relations, subjects[:, :-1], subjects[:, -1], encoded=encoded).to(device)

    def _distinct(self, relation: int, gen: torch.Generator) -> Tensor:
        return S.distinct_subjects(self.kb.table, relation, self.n_pairs + 1, gen)

    def _redraw(self, relation: int, gen: torch.Generator, first: T.Encoded) -> tuple[Tensor, T.Encoded]:
        """Subjects for one prompt of ``relation`` whose roles own their tokens (one-line error if none shows up)."""
        for _ in range(REDRAWS):
            s = self._distinct(relation, gen)
            e = self._encode(torch.tensor([relation]), s[None, :-1], s[None, -1])[0]
            if not T.overlapping_roles(e):
                return s, e
        roles = " and ".join(T.overlapping_roles(first))
        raise ValueError(f"prompts of relation {self.kb.relations[relation]!r} put one token in two roles ({roles}) "
                         f"in {REDRAWS} draws: the tokenizer merges across the template's boundary; put a separator "
                         f"(space, newline, punctuation) between the fields of pair_template {self.pair_template!r}")

    # -------------------------------------------------------------- build
    def _encode(self, relations: Tensor, subjects: Tensor, query: Tensor,
                context_answers: Tensor | None = None) -> list[T.Encoded]:
        kb = self.kb
        shown = kb.table[relations[:, None], subjects] if context_answers is None else context_answers
        prompts = [T.render_prompt([(kb.subjects[s], kb.answers[a]) for s, a in zip(ss, aa)], kb.subjects[q],
                                   self.pair_template, self.query_template, self.prefix)
                   for ss, aa, q in zip(subjects.tolist(), shown.tolist(), query.tolist())]
        return T.encode_prompts(self.tokenizer, prompts, self.bos_id) if prompts else []

    def _build(self, relations: Tensor, subjects: Tensor, query: Tensor, context_answers: Tensor | None = None,
               encoded: list[T.Encoded] | None = None) -> Batch:
        """Tokens (right-padded), targets and span layout from relation and subject ids."""
        shown = self.kb.table[relations[:, None], subjects] if context_answers is None else context_answers
        target = self.target_table[relations, query]
        if (shown < 0).any() or (target < 0).any():
            raise ValueError("prompt uses a fact the task does not have (unknown, or excluded for its first token)")
        encoded = self._encode(relations, subjects, query, shown) if encoded is None else encoded
        tokens = B.pad([e.ids for e in encoded], self.pad_id)
        check_length(self, None, tokens.shape[1])
        check_ids(self, [int(tokens.max())] if tokens.numel() else [], "a prompt")
        return Batch(tokens=tokens, answers=target, relations=relations.clone(), subjects=subjects.clone(),
                     query=query.clone(), layout=Layout.from_encoded(encoded, subjects.shape[1]),
                     context_answers=shown.clone())

    # ------------------------------------------------------------ corrupt
    def corruptible(self, batch: Batch, kind: str) -> Bool[Tensor, " batch"]:
        """Which prompts of ``batch`` have a layout-keeping corruption of ``kind`` (:mod:`~.text_corruptions`)."""
        return C.corruptible(self, batch.to("cpu"), kind).to(batch.tokens.device)

    def corrupt(self, batch: Batch, kind: str, seed: int | None = None, *,
                generator: torch.Generator | None = None) -> Batch:
        """The corrupted counterpart of ``batch``, with the same layout (``"relation"``, ``"query"``, ``"shuffle"``)."""
        return C.corrupt(self, batch, kind, S.generator(seed, generator))

    def corrupt_pairs(self, batch: Batch, kind: str, seed: int | None = None, *,
                      generator: torch.Generator | None = None) -> CorruptedPairs:
        """Clean and corrupted batches of the prompts with a layout-keeping corruption (one line on the rest)."""
        return C.corrupt_pairs(self, batch, kind, S.generator(seed, generator))

    def sample_pairs(self, n: int, kind: str, seed: int | None = None, *, generator: torch.Generator | None = None,
                     device: str | torch.device = "cpu", max_draws: int = 64) -> CorruptedPairs:
        """``n`` clean prompts that have a layout-keeping corruption of ``kind``, and their corrupted twins.

        Prompts are drawn from the stream until ``n`` have one, up to ``max_draws * n`` in all; ``n_dropped``
        counts the drawn prompts without one (a warning names their relations and query subjects).
        """
        S.check_count(n)
        return C.sample_pairs(self, n, kind, S.generator(seed, generator), device, max_draws)

    def sample_corruptible(self, n: int, kinds: tuple[str, ...] = ("relation", "query"), seed: int | None = None, *,
                           generator: torch.Generator | None = None, device: str | torch.device = "cpu",
                           max_draws: int = 64) -> C.Corruptible:
        """``(batch, n_drawn)``: ``n`` prompts of the stream with a layout-keeping corruption of every kind in
        ``kinds``, so that ``corrupt_pairs`` keeps all of them for each; ``n_drawn`` says how many were drawn
        (a report should print it: the prompts are a selection of the stream)."""
        S.check_count(n)
        return C.sample_corruptible(self, n, tuple(kinds), S.generator(seed, generator), device, max_draws)

    # ----------------------------------------------------------- baselines
    def named_relation_batch(self, batch_size: int, seed: int | None = None, *,
                             generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> Batch:
        """Factual recall with the relation named: ``"The capital of France is"`` -> ``" Paris"``.

        Relations with a phrase (``relation_phrases``) are dealt like the prompt stream (balanced,
        prefix-stable), then a subject uniformly among those each knows.  The batch has no context pairs; its
        query span is the subject in the phrase and its target the answer's first token after the phrase and
        one space (facts whose first token is shared within the relation are left out).
        """
        S.check_count(batch_size)
        gens = B.prompt_generators(S.generator(seed, generator), batch_size)
        targets = self._named_targets()
        rels = torch.tensor([r for r in range(self.kb.n_relations) if (targets[r] >= 0).any()], dtype=torch.long)
        if len(rels) == 0:
            raise ValueError("no relation has a phrase naming it (pass relation_phrases={relation: '... {s} ...'})")
        relations = B.deal(rels, gens, self.balance)
        query = torch.stack([S.draw(targets[r] >= 0, g) for r, g in zip(relations.tolist(), gens)]) if batch_size \
            else torch.zeros(0, dtype=torch.long)
        prompts = [T.render_prompt([], self.kb.subjects[s], "", self.relation_phrases[self.kb.relations[r]],
                                   self.prefix) for r, s in zip(relations.tolist(), query.tolist())]
        encoded = T.encode_prompts(self.tokenizer, prompts, self.bos_id) if prompts else []
        empty = torch.zeros(batch_size, 0, dtype=torch.long)
        tokens = B.pad([e.ids for e in encoded], self.pad_id)
        check_length(self, None, tokens.shape[1])
        return Batch(tokens=tokens, answers=targets[relations, query], relations=relations, subjects=empty,
                     query=query, layout=Layout.from_encoded(encoded, 0), context_answers=empty.clone()).to(device)

    def _named_targets(self) -> Int[Tensor, "relation subject"]:
        if getattr(self, "_named", None) is None:
            kb, out = self.kb, torch.full_like(self.kb.table, -1)
            for r, name in enumerate(kb.relations):
                if name in self.relation_phrases:
                    one = replace(kb, table=torch.where(torch.arange(kb.n_relations)[:, None] == r, kb.table, -1))
                    follow = lambda s, a: NAMED_ANSWER.format(a=a)  # noqa: E731
                    out[r] = self._fact_targets(one, self.relation_phrases[name], follow)[r]
            table, _ = B.exclude_shared(replace(kb, table=torch.where(out >= 0, kb.table, -1)), out)
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
        """The text of example ``i`` (BOS and padding removed)."""
        start = int(batch.layout.bos_pos[i]) + 1 if int(batch.layout.bos_pos[i]) >= 0 else 0
        return self.tokenizer.decode(batch.tokens[i, start: int(batch.layout.pred_pos[i]) + 1].tolist())
