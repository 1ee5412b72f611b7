"""Corruptions of text prompts that keep the token layout by construction.

Activation patching moves activations position by position, so a corrupted prompt must have its clean
prompt's spans: every subject, answer and the query the same number of tokens at the same positions.
Drawing a corruption blindly and keeping it only if the layout happens to match keeps few prompts (a relation
swap that keeps the subjects needs another relation whose k + 1 answers all tokenize alike: about 1 prompt in
8 on the countries base at k = 3).  Here the corruption is *sampled* among the layout-keeping ones:

* ``"relation"``: another relation ``r'`` that knows the query subject and gives it another target token;
  then, pair by pair, a fact of ``r'`` whose subject and answer tokenize to the clean pair's lengths -- the
  clean pair's own subject where ``r'`` knows it with an answer of that length, else a subject drawn uniformly
  among those that fit (distinct, not the query).  The query subject is kept: only the relation the context
  shows, and so the target, changes.  Lengths come from a table of every fact's spans tokenized in context
  (:func:`span_lengths`, first pair and later pairs apart); each candidate prompt is then tokenized whole and
  kept only if its layout equals the clean one (a merge across a boundary is caught there).
* ``"query"``: the same context, another query subject of the prompt's relation with another target, drawn
  among those whose query tokenizes to the same layout (every candidate tokenized whole).
* ``"shuffle"``: the context answers permuted across pairs of equal answer length (Todd et al. 2024's
  function-vector null), query and target unchanged.

A prompt without any layout-keeping corruption is dropped by ``corrupt_pairs`` / ``sample_pairs`` with one
line naming the relations and query subjects that prevent it, and :class:`~icr_interp.task.batch.CorruptedPairs`
carries the count (``n_dropped``, ``n_requested``).
"""

import warnings
from collections import Counter
from typing import NamedTuple
from dataclasses import replace

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from icr_interp.task import text_batches as B
from icr_interp.task import text_spans as T
from icr_interp.task.batch import Batch, CorruptedPairs
from icr_interp.task.layout import Layout
from icr_interp.task.prompts import corruption_options
from icr_interp.task.sampling import draw

TEXT_CORRUPTIONS = ("relation", "query", "shuffle")
RELATION_TRIES = 4  # draws of the pairs per candidate relation (the first keeps the clean subjects where it can)
SHUFFLE_TRIES = 64  # random within-length permutations tried before a prompt's shuffle is given up
_WHY = {"relation": "no other relation knows the query subject with another target and facts of the same token "
                    "lengths", "query": "no other subject of the relation has a query of the same token layout "
                                        "and another target", "shuffle": "no two different context answers of "
                                                                         "equal token length"}


def check_kind(kind: str) -> str:
    if kind not in TEXT_CORRUPTIONS:
        raise ValueError(f"corruption kind must be one of {TEXT_CORRUPTIONS}, got {kind!r}")
    return kind


def span_lengths(task) -> dict[str, Tensor]:
    """Token lengths of every fact's subject and answer as a first pair and as a later pair, and of every
    subject as the query after a pair (-1: unknown), from one prompt per fact, ``[(s, a), (s, a)]`` then ``s``."""
    if getattr(task, "_span_lengths", None) is None:
        kb = task.kb
        rel, subj = torch.nonzero(kb.table >= 0, as_tuple=True)
        prompts = [T.render_prompt([(kb.subjects[s], kb.answers[a])] * 2, kb.subjects[s], task.pair_template,
                                   task.query_template, task.prefix)
                   for s, a in zip(subj.tolist(), kb.table[rel, subj].tolist())]
        enc = T.encode_prompts(task.tokenizer, prompts, task.bos_id) if prompts else []
        width = lambda span: span[1] - span[0] + 1  # noqa: E731
        out = {name: torch.full_like(kb.table, -1) for name in ("answer_first", "answer_later")}
        out.update({name: torch.full((kb.n_subjects,), -1) for name in ("subject_first", "subject_later", "query")})
        for r, s, e in zip(rel.tolist(), subj.tolist(), enc):
            out["answer_first"][r, s], out["answer_later"][r, s] = width(e.answers[0]), width(e.answers[1])
            out["subject_first"][s], out["subject_later"][s] = width(e.subjects[0]), width(e.subjects[1])
            out["query"][s] = width(e.query)
        task._span_lengths = out
    return task._span_lengths


def relation_swap(task, b: Batch, i: int, gen: torch.Generator) -> tuple[int, Tensor] | None:
    """A layout-keeping relation swap of prompt ``i`` of ``b``: (new relation, new context subjects), or None."""
    tt, lengths, k = task.target_table, span_lengths(task), task.n_pairs
    r, q, target = int(b.relations[i]), int(b.query[i]), int(b.answers[i])
    lay = b.layout[i:i + 1]
    s_len = (lay.subject_end - lay.subject_start + 1)[0]
    a_len = (lay.answer_end - lay.answer_start + 1)[0]
    key = lay.keys()[0]
    options = torch.nonzero((tt[:, q] >= 0) & (tt[:, q] != target)).flatten()
    options = options[options != r]
    for r2 in options[torch.randperm(len(options), generator=gen)].tolist():
        for attempt in range(RELATION_TRIES):
            picked = _fill_pairs(task, lengths, r2, q, b.subjects[i], s_len, a_len, attempt == 0, gen)
            if picked is None:
                break  # no subject of r2 has one pair's lengths: no draw will find one
            shown = task.kb.table[r2, picked]
            if k and torch.equal(picked, b.subjects[i]) and torch.equal(shown, b.context_answers[i]):
                continue  # the same prompt (capital and largest city of the same cities): it would measure nothing
            if k == 0:
                break
            enc = task._encode(torch.tensor([r2]), picked[None], b.query[i:i + 1])
            if Layout.from_encoded(enc, k).keys()[0] == key:
                return r2, picked
    return None


def _fill_pairs(task, lengths: dict, r2: int, q: int, clean: Tensor, s_len: Tensor, a_len: Tensor,
                keep_clean: bool, gen: torch.Generator) -> Int[Tensor, " pair"] | None:
    """Per pair, a subject of ``r2`` with the clean pair's subject and answer lengths (None: some pair has none)."""
    known = task.target_table[r2] >= 0
    used, picked = {q}, []
    for j in range(task.n_pairs):
        where = "first" if j == 0 else "later"
        ok = known & (lengths[f"subject_{where}"] == s_len[j]) & (lengths[f"answer_{where}"][r2] == a_len[j])
        ok[list(used)] = False
        if not ok.any():
            return None
        s = int(clean[j]) if keep_clean and ok[clean[j]] else int(draw(ok, gen))
        used.add(s)
        picked.append(s)
    return torch.tensor(picked, dtype=torch.long)


def query_options(task, b: Batch) -> Bool[Tensor, "batch subject"]:
    """Per prompt, the query subjects of its relation that change the target and keep the whole layout."""
    ok = corruption_options(task.kb.table, b, "query")
    ok &= task.target_table[b.relations] != b.answers[:, None]
    q_len = span_lengths(task)["query"]
    ok &= q_len[None, :] == (b.layout.query_end - b.layout.query_start + 1)[:, None]
    rows, options = torch.nonzero(ok, as_tuple=True)
    if len(rows):
        encoded = task._encode(b.relations[rows], b.subjects[rows], options, b.context_answers[rows])
        keys = b.layout.keys()
        same = torch.tensor([key == keys[r] for key, r in zip(Layout.from_encoded(encoded, task.n_pairs).keys(),
                                                                rows.tolist())])
        ok[rows[~same], options[~same]] = False
    return ok


def shuffle_groups(b: Batch) -> tuple[list[list[Tensor]], Bool[Tensor, " batch"]]:
    """Per prompt, the pairs grouped by answer token length, and whether a group holds two different answers."""
    lengths = b.layout.answer_end - b.layout.answer_start
    groups, ok = [], torch.zeros(len(b), dtype=torch.bool)
    for i in range(len(b)):
        mine = [torch.nonzero(lengths[i] == n).flatten() for n in lengths[i].unique()]
        groups.append([g for g in mine if len(g) > 1])
        ok[i] = any(len(b.context_answers[i, g].unique()) > 1 for g in groups[-1])
    return groups, ok


def _shuffle_one(task, b: Batch, i: int, groups: list[Tensor], gen: torch.Generator) -> Tensor | None:
    key = b.layout[i:i + 1].keys()[0]
    for _ in range(SHUFFLE_TRIES):
        new = b.context_answers[i].clone()
        for g in groups:
            new[g] = new[g[torch.randperm(len(g), generator=gen)]]
        if (new != b.context_answers[i]).any():
            enc = task._encode(b.relations[i:i + 1], b.subjects[i:i + 1], b.query[i:i + 1], new[None])
            if Layout.from_encoded(enc, task.n_pairs).keys()[0] == key:
                return new
    return None


def corruptions(task, b: Batch, kind: str, gen: torch.Generator) -> tuple[Batch | None, Bool[Tensor, " batch"]]:
    """The corrupted twins of the prompts of ``b`` that have one (same order) and which those are."""
    if len(b) == 0:
        return None, torch.zeros(0, dtype=torch.bool)
    if kind == "query":
        options = query_options(task, b)
        ok = options.any(1)
        if not ok.any():
            return None, ok
        new = torch.stack([draw(options[i], gen) for i in torch.nonzero(ok).flatten().tolist()])
        return task._build(b.relations[ok], b.subjects[ok], new), ok
    if kind == "relation":
        fixed = torch.Generator().manual_seed(0)  # a fallback that ``corruptible`` reproduces exactly
        found = [relation_swap(task, b, i, gen) or relation_swap(task, b, i, fixed) for i in range(len(b))]
        ok = torch.tensor([f is not None for f in found], dtype=torch.bool)
        if not ok.any():
            return None, ok
        rels = torch.tensor([f[0] for f in found if f is not None], dtype=torch.long)
        return task._build(rels, torch.stack([f[1] for f in found if f is not None]), b.query[ok]), ok
    groups, ok = shuffle_groups(b)
    shown = [(_shuffle_one(task, b, i, groups[i], gen) if ok[i] else None) for i in range(len(b))]
    shown = [s if s is not None or not ok[i] else _shuffle_one(task, b, i, groups[i], torch.Generator().manual_seed(0))
             for i, s in enumerate(shown)]  # the fallback ``corruptible`` reproduces
    ok = torch.tensor([s is not None for s in shown], dtype=torch.bool)
    if not ok.any():
        return None, ok
    new = torch.stack([s for s in shown if s is not None])
    return task._build(b.relations[ok], b.subjects[ok], b.query[ok], new), ok


def corruptible(task, b: Batch, kind: str) -> Bool[Tensor, " batch"]:
    """Which prompts have a layout-keeping corruption of ``kind`` (what :func:`corruptions` keeps)."""
    if check_kind(kind) == "query":
        return query_options(task, b).any(1)
    if kind == "shuffle":
        groups, ok = shuffle_groups(b)
        return torch.tensor([bool(ok[i]) and _shuffle_one(task, b, i, groups[i], torch.Generator().manual_seed(0))
                             is not None for i in range(len(b))], dtype=torch.bool)
    return torch.tensor([relation_swap(task, b, i, torch.Generator().manual_seed(0)) is not None
                         for i in range(len(b))], dtype=torch.bool)


def why_dropped(task, b: Batch, dropped: Bool[Tensor, " batch"], kind: str) -> str:
    """One line: which relations and query subjects the dropped prompts of ``b`` have."""
    kb = task.kb
    top = lambda ids, names: ", ".join(f"{names[i]} {n}" for i, n in Counter(ids).most_common(5))  # noqa: E731
    return (f"{_WHY[kind]} (by relation: {top(b.relations[dropped].tolist(), kb.relations)}; "
            f"by query subject: {top(b.query[dropped].tolist(), kb.subjects)})")


def corrupt(task, batch: Batch, kind: str, gen: torch.Generator) -> Batch:
    """The corrupted counterpart of every prompt of ``batch`` (a one-line ValueError if one has none)."""
    b = batch.to("cpu")
    out, ok = corruptions(task, b, check_kind(kind), gen)
    if len(b) and not ok.all():
        raise ValueError(f"{int((~ok).sum())} of {len(b)} prompts have no layout-keeping {kind} corruption: "
                         f"{why_dropped(task, b, ~ok, kind)}; task.corrupt_pairs drops them")
    return batch if out is None else same_width(replace(out, layout=b.layout), batch, task.pad_id)


def corrupt_pairs(task, batch: Batch, kind: str, gen: torch.Generator) -> CorruptedPairs:
    """Clean and corrupted batches of the prompts of ``batch`` that have a layout-keeping corruption."""
    b = batch.to("cpu")
    out, ok = corruptions(task, b, check_kind(kind), gen)
    n_dropped = int((~ok).sum())
    if len(b) and out is None:
        raise ValueError(f"no prompt of {len(b)} has a layout-keeping {kind} corruption: "
                         f"{why_dropped(task, b, ~ok, kind)}")
    if n_dropped:
        warnings.warn(f"{n_dropped} of {len(b)} prompts have no layout-keeping {kind} corruption and are dropped "
                      f"(clean and corrupted; {len(b) - n_dropped} kept): {why_dropped(task, b, ~ok, kind)}",
                      UserWarning, stacklevel=3)
    if out is None:
        return CorruptedPairs(batch, batch, 0)
    clean = b[ok]
    device = batch.tokens.device
    return CorruptedPairs(clean.to(device), same_width(replace(out, layout=clean.layout), clean,
                                                       task.pad_id).to(device), n_dropped)


def sample_pairs(task, n: int, kind: str, gen: torch.Generator, device, max_draws: int) -> CorruptedPairs:
    """``n`` clean prompts with a layout-keeping corruption of ``kind`` and their twins, drawn from the stream
    until ``n`` have one; ``n_dropped`` counts the prompts drawn before the ``n``-th kept one that had none."""
    check_kind(kind)
    if n == 0:
        empty = task.sample(0, generator=gen, device=device)
        return CorruptedPairs(empty, empty, 0)
    cleans, twins, dropped, n_kept, n_drawn = [], [], [], 0, 0
    while n_kept < n:
        if n_drawn >= max_draws * max(n, 1):
            lost = B.concat(dropped, task.pad_id)
            raise ValueError(f"only {n_kept} of {n_drawn} prompts have a layout-keeping {kind} corruption; {n} were "
                             f"asked: {why_dropped(task, lost, torch.ones(len(lost), dtype=torch.bool), kind)}")
        need = n - n_kept
        b = task.sample(max(need + need // 8 + 2, 8), generator=gen)
        out, ok = corruptions(task, b, kind, gen)
        last = int(torch.nonzero(ok).flatten()[need - 1]) if int(ok.sum()) >= need else len(b) - 1
        n_drawn += last + 1
        if (~ok[:last + 1]).any():
            dropped.append(b[:last + 1][~ok[:last + 1]])
        if out is not None:
            take = min(need, int(ok.sum()))
            cleans.append(b[ok][:take])
            twins.append(same_width(replace(out[:take], layout=cleans[-1].layout), cleans[-1], task.pad_id))
            n_kept += take
    clean, corrupted = B.concat(cleans, task.pad_id), B.concat(twins, task.pad_id)
    n_dropped = sum(map(len, dropped))
    if n_dropped:
        lost = B.concat(dropped, task.pad_id)
        warnings.warn(f"{n_dropped} of {n_drawn} prompts drawn have no layout-keeping {kind} corruption and were "
                      f"skipped ({n} kept): {why_dropped(task, lost, torch.ones(len(lost), dtype=torch.bool), kind)}",
                      UserWarning, stacklevel=3)
    return CorruptedPairs(clean.to(device), corrupted.to(device), n_dropped)


def same_width(out: Batch, like: Batch, pad_id: int) -> Batch:
    """``out`` right-padded to ``like``'s width (a corrupted batch keeps its clean batch's shape)."""
    extra = like.tokens.shape[1] - out.tokens.shape[1]
    return replace(out, tokens=torch.nn.functional.pad(out.tokens, (0, extra), value=pad_id)) if extra > 0 else out


class Corruptible(NamedTuple):
    """Prompts that have a layout-keeping corruption of every kind asked (:func:`sample_corruptible`)."""

    batch: Batch  # the n prompts kept, in stream order
    n_drawn: int  # prompts drawn from the stream to find them (n_drawn - n had no corruption of some kind)


def sample_corruptible(task, n: int, kinds: tuple[str, ...], gen: torch.Generator, device,
                       max_draws: int) -> Corruptible:
    """``n`` prompts of the stream that each have a layout-keeping corruption of every kind in ``kinds``, so
    that every analysis of one batch (relation and query swaps) keeps all ``n``; a warning says how many
    drawn prompts were skipped and which relations and query subjects they had."""
    for kind in kinds:
        check_kind(kind)
    if n == 0:
        return Corruptible(task.sample(0, generator=gen, device=device), 0)
    kept, lost, n_kept, n_drawn = [], [], 0, 0
    while n_kept < n:
        if n_drawn >= max_draws * max(n, 1):
            raise ValueError(f"only {n_kept} of {n_drawn} prompts have a layout-keeping {'/'.join(kinds)} corruption; "
                             f"{n} were asked")
        need = n - n_kept
        b = task.sample(max(need + need // 4 + 2, 8), generator=gen)
        ok = torch.ones(len(b), dtype=torch.bool)
        for kind in kinds:
            ok &= corruptible(task, b, kind)
        last = int(torch.nonzero(ok).flatten()[need - 1]) if int(ok.sum()) >= need else len(b) - 1
        n_drawn += last + 1
        kept.append(b[:last + 1][ok[:last + 1]])
        lost.append(b[:last + 1][~ok[:last + 1]])
        n_kept += len(kept[-1])
    lost = [x for x in lost if len(x)]
    if lost:
        skipped = B.concat(lost, task.pad_id)
        warnings.warn(f"{len(skipped)} of {n_drawn} prompts drawn lack a layout-keeping {'/'.join(kinds)} corruption "
                      f"and were skipped ({n} kept): "
                      f"{why_dropped(task, skipped, torch.ones(len(skipped), dtype=torch.bool), kinds[0])}",
                      UserWarning, stacklevel=3)
    return Corruptible(B.concat([x for x in kept if len(x)], task.pad_id).to(device), n_drawn)
