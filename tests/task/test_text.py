"""Text IC-recall prompts: token spans, targets, corruptions, baselines, and the analyses on text batches.

A tiny byte-level BPE tokenizer is trained here (no download) so that names split into several tokens;
where the cached SmolLM2 tokenizer exists (written by ``load_pretrained_lm``) the spans are checked with it too.
"""

import math
import warnings
from pathlib import Path

import pytest
import torch

from icr_interp.task import roles
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.prompts import ICRecallTask, Layout
from icr_interp.task.text import TextICRecallTask

FACTS = [  # (subject, relation, answer): multi-token names, a shared first token ("New ...") in "capital"
    ("France", "capital", "Paris"), ("Japan", "capital", "Tokyo"), ("Italy", "capital", "Rome"),
    ("Burkina Faso", "capital", "Ouagadougou"), ("India", "capital", "New Delhi"), ("Kenya", "capital", "Nairobi"),
    ("Peru", "capital", "Lima"), ("Chile", "capital", "Santiago"), ("Egypt", "capital", "Cairo"),
    ("United States", "capital", "New York"),
    ("France", "language", "French"), ("Japan", "language", "Japanese"), ("Italy", "language", "Italian"),
    ("Burkina Faso", "language", "French"), ("India", "language", "Hindi"), ("Kenya", "language", "Swahili"),
    ("Peru", "language", "Spanish"), ("Chile", "language", "Spanish"), ("Egypt", "language", "Arabic"),
    ("United States", "language", "English"),
    ("France", "continent", "Europe"), ("Japan", "continent", "Asia"), ("Italy", "continent", "Europe"),
    ("Burkina Faso", "continent", "Africa"), ("India", "continent", "Asia"), ("Kenya", "continent", "Africa"),
    ("Peru", "continent", "South America"), ("Chile", "continent", "South America"), ("Egypt", "continent", "Africa"),
    ("United States", "continent", "North America"),
]
SMOL_TOKENIZER = sorted(Path.home().glob(".cache/icr_interp/pretrained/smollm2-135m/v*/tokenizer"))


def _kb(tmp_path_factory) -> KnowledgeBase:
    path = tmp_path_factory.mktemp("kb") / "facts.csv"
    path.write_text("subject,relation,answer\n" + "".join(f"{s},{r},{a}\n" for s, r, a in FACTS))
    return KnowledgeBase.from_csv(path)


@pytest.fixture(scope="module")
def kb(tmp_path_factory) -> KnowledgeBase:
    return _kb(tmp_path_factory)


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE (GPT-2 style) trained on a few lines: small enough that names take several tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    rare = ("Burkina Faso", "Ouagadougou", "Kenya", "Swahili", "Nairobi")  # left out: they split into pieces
    corpus = [f"{s}: {a}\nQ: {s}\nA: {a}\nThe capital of {s} is {a}\n" for s, _, a in FACTS
              if s not in rare and a not in rare] * 3
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=1000, special_tokens=["<pad>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")


@pytest.fixture(scope="module")
def task(kb, tokenizer):
    with pytest.warns(UserWarning, match="share their first token"):
        return TextICRecallTask(kb, tokenizer, n_pairs=3)


def _span_text(tokenizer, tokens, start, end) -> str:
    return tokenizer.decode(tokens[int(start): int(end) + 1].tolist())


def _check_spans(task, batch):
    kb, tok, lay = task.kb, task.tokenizer, batch.layout
    n_multi = 0
    for i in range(len(batch)):
        toks = batch.tokens[i]
        for j in range(task.n_pairs):
            s, a = kb.subjects[int(batch.subjects[i, j])], kb.answers[int(batch.context_answers[i, j])]
            assert _span_text(tok, toks, lay.subject_start[i, j], lay.subject_end[i, j]).strip() == s
            assert _span_text(tok, toks, lay.answer_start[i, j], lay.answer_end[i, j]).strip() == a
            n_multi += int(lay.subject_end[i, j] > lay.subject_start[i, j])
            n_multi += int(lay.answer_end[i, j] > lay.answer_start[i, j])
        q = kb.subjects[int(batch.query[i])]
        assert _span_text(tok, toks, lay.query_start[i], lay.query_end[i]).strip() == q
        pred = int(lay.pred_pos[i])
        assert (toks[pred + 1:] == task.pad_id).all() and toks[pred] != task.pad_id
        assert task.prompt_text(batch, i).endswith(task.query_template.format(s=q))
        answer = kb.answers[int(kb.table[batch.relations[i], batch.query[i]])]
        assert answer.startswith(tok.decode([int(batch.answers[i])]).strip())  # the answer's first token
    return n_multi


def test_spans_targets_and_padding(task):
    batch = task.sample(32, seed=0)
    assert _check_spans(task, batch) > 10  # many names take several tokens here
    assert (batch.layout.pred_pos > batch.layout.query_end).all()  # the ":" after the query
    text = task.prompt_text(batch, 0)
    assert text.count("\n") == 3 and text.endswith(":")


def test_other_template_and_prefix(kb, tokenizer):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        qa = TextICRecallTask(kb, tokenizer, n_pairs=2, pair_template="Q: {s}\nA: {a}\n", query_template="Q: {s}\nA:",
                              prefix="Facts.\n")
    batch = qa.sample(16, seed=1)
    _check_spans(qa, batch)
    assert qa.prompt_text(batch, 0).startswith("Facts.\nQ: ")
    m = batch.layout.span_masks(batch.tokens.shape[1])
    assert not (m.subject.any(1) & m.answer.any(1)).any()  # spans never overlap
    assert (m.separators.sum(1) > 0).all()  # "Q:", "A:" and newlines are separators


def test_shared_first_tokens_are_excluded(task, kb):
    assert set(task.excluded["capital"]) == {"New Delhi", "New York"}
    cap = kb.relations.index("capital")
    assert (task.kb.table[cap, [kb.subjects.index("India"), kb.subjects.index("United States")]] == -1).all()
    assert list(task.excluded) == ["capital"]  # " North" / " South" America differ in their first token
    assert task.source_kb is kb and task.kb.n_triplets == kb.n_triplets - 2


def test_bad_templates(kb, tokenizer):
    for pair, query in (("{s}: {s}\n", "{s}:"), ("{s}: {a}\n", "{a}:"), ("{s} {b}", "{s}")):
        with pytest.raises(ValueError, match="template"):
            TextICRecallTask(kb, tokenizer, 2, pair, query)
    with pytest.raises(ValueError, match="lacks"):
        TextICRecallTask(kb, tokenizer, 2, relation_phrases={"height": "{s} is"})


@pytest.mark.parametrize("kind", ["relation", "query", "shuffle"])
def test_corruptions_keep_the_layout(task, kind):
    batch = task.sample(48, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # prompts without a corruption are dropped, with a warning
        clean, corrupted, n_dropped = task.corrupt_pairs(batch, kind, seed=3)
    assert len(clean) + n_dropped == 48 and len(clean) > 0
    for f in ("subject_start", "subject_end", "answer_start", "answer_end", "query_start", "query_end", "pred_pos"):
        assert torch.equal(getattr(clean.layout, f), getattr(corrupted.layout, f))
    assert clean.tokens.shape == corrupted.tokens.shape
    _check_spans(task, corrupted) if kind != "shuffle" else None
    if kind == "shuffle":  # the same target, the answers moved across pairs
        assert torch.equal(clean.answers, corrupted.answers) and torch.equal(clean.query, corrupted.query)
        assert (clean.context_answers != corrupted.context_answers).any(1).all()
        assert torch.equal(clean.context_answers.sort(1).values, corrupted.context_answers.sort(1).values)
    else:
        assert (clean.answers != corrupted.answers).all()  # the target token changes
    assert (clean.tokens != corrupted.tokens).any(1).all()


def test_baselines(task):
    zero = task.with_pairs(0).sample(8, seed=0)
    assert zero.layout.subject_end.shape == (8, 0)
    assert all(task.prompt_text(zero, i) == task.kb.subjects[int(zero.query[i])] + ":" for i in range(8))
    named = task.named_relation_batch(16, seed=0)
    for i in range(16):
        text = task.prompt_text(named, i)
        relation, subject = task.kb.relations[int(named.relations[i])], task.kb.subjects[int(named.query[i])]
        assert text == task.relation_phrases[relation].format(s=subject)
        lay = named.layout
        assert _span_text(task.tokenizer, named.tokens[i], lay.query_start[i], lay.query_end[i]).strip() == subject
    assert set(task.relation_phrases) == {"capital", "continent"}  # DEFAULT_PHRASES for the relations it knows


def test_toy_layouts_unchanged(shared_task):
    batch = shared_task.sample(8, seed=0)
    lay = batch.layout
    assert torch.equal(lay.pred_pos, lay.query_end) and lay.one_token_spans
    assert torch.equal(lay.subject_start, lay.subject_end) and torch.equal(lay.answer_start, lay.answer_end)
    n_pos = batch.tokens.shape[1]
    old = torch.zeros(8, n_pos, dtype=torch.long)  # the first release's role ids, by scatter
    old.scatter_(1, lay.subject_end, 1)
    old.scatter_(1, lay.answer_end, 2)
    old.scatter_(1, lay.query_end[:, None], 3)
    old[:, 0] = 4
    assert torch.equal(lay.role_of_positions(n_pos), old)
    for name in ("subjects", "answers", "context", "query", "bos", "pair_1", "answer_2"):
        expected = torch.zeros(8, n_pos, dtype=torch.bool)
        for pos in roles.positions(lay, name):
            expected.scatter_(1, pos, True)
        assert torch.equal(roles.mask(lay, name, n_pos), expected)
    assert torch.equal(roles.mask(lay, "prediction", n_pos), roles.mask(lay, "query", n_pos))
    assert roles.default_roles(lay) == ["subjects", "answers", "context", "pair_1", "pair_2", "query", "bos"]
    four = Layout(lay.subject_end, lay.answer_end, lay.query_end, lay.bos_pos)  # the first release's constructor
    assert torch.equal(four.pred_pos, lay.query_end) and torch.equal(batch[2:5].layout.pred_pos, lay.pred_pos[2:5])


def test_smollm2_tokenizer_spans(kb):
    if not SMOL_TOKENIZER:
        pytest.skip("no cached SmolLM2 tokenizer (load_pretrained_lm('smollm2-135m') writes it)")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(SMOL_TOKENIZER[-1])
    builtin = KnowledgeBase.builtin("countries")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for pair, query in (("{s}: {a}\n", "{s}:"), ("Q: {s}\nA: {a}\n", "Q: {s}\nA:")):
            t = TextICRecallTask(builtin, tok, n_pairs=4, pair_template=pair, query_template=query)
            _check_spans(t, t.sample(32, seed=0))
            assert "calling_code" in t.excluded  # every code starts with " +"
    japan = TextICRecallTask(builtin, tok, n_pairs=1)
    cap, jp = builtin.relations.index("capital"), builtin.subjects.index("Japan")
    assert tok.convert_ids_to_tokens([int(japan.target_table[cap, jp])]) == ["ĠTokyo"]


# ------------------------------------------------------------------ analyses on text batches
@pytest.fixture(scope="module")
def stock(tokenizer):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=3, d_head=8, d_mlp=64, n_ctx=64,
                                  d_vocab=len(tokenizer), act_fn="gelu", normalization_type="LN", seed=0)
    return HookedTransformer(cfg).eval()


def test_scores_sum_masses_over_spans(stock, task):
    from icr_interp.analysis.scoring.attention import query_rows
    from icr_interp.analysis.scoring.templates import RoleMass, score_templates

    batch = task.sample(16, seed=4)
    rows = query_rows(stock, batch)  # [layer head batch pos] at pred_pos
    pattern = stock.run_with_cache(batch.tokens)[1]["blocks.1.attn.hook_pattern"]
    assert torch.allclose(rows[1, :, 3], pattern[3, :, int(batch.layout.pred_pos[3])])
    mass = RoleMass.of(rows, batch.layout)
    lay = batch.layout
    for j in range(task.n_pairs):
        span = slice(int(lay.answer_start[5, j]), int(lay.answer_end[5, j]) + 1)
        assert torch.allclose(mass.answer[0, 2, 5, j], rows[0, 2, 5, span].sum())
    scores = score_templates(stock, batch)
    assert scores.pairwise.shape == (2, 3) and torch.isfinite(scores.p_value).all()


def test_patching_and_circuit_on_text(stock, task):
    from icr_interp.analysis.causal import circuit, patching
    from icr_interp.training.trainer import evaluate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clean, corrupted, _ = task.corrupt_pairs(task.sample(48, seed=5), "query", seed=6)
        r = patching.patch_by_role(stock, clean, corrupted, hooks=["blocks.0.hook_resid_pre", "blocks.1.attn.hook_z"],
                                   roles=["query", "context", "prediction", "all"])
        assert r["blocks.0.hook_resid_pre", "all"] == pytest.approx(1.0, abs=1e-5)  # everything patched: clean
        assert r["blocks.0.hook_resid_pre", "context"] == pytest.approx(0.0, abs=1e-5)  # the context is the same
        assert r["blocks.0.hook_resid_pre", "query"] == pytest.approx(1.0, abs=1e-4)  # only the query differs
        for by in ("layer", "head"):
            s = circuit.circuit_summary(stock, task, task.sample(24, seed=7), components=by)
            assert len(s.rows) == (4 if by == "layer" else 6) and all(math.isfinite(r.lookup) for r in s.rows)
        result = evaluate(stock, task, n_prompts=20, batch_size=8)
    assert 0 <= result["accuracy"] <= 1 and math.isfinite(result["loss"])


def test_sample_pairs_draws_until_enough(task):
    clean, corrupted, n_dropped = task.sample_pairs(12, "relation", seed=8)
    assert len(clean) == len(corrupted) == 12 and n_dropped >= 0
    assert torch.equal(clean.layout.pred_pos, corrupted.layout.pred_pos) and (clean.answers != corrupted.answers).all()
    assert clean.tokens.shape == corrupted.tokens.shape
    _check_spans(task, clean)
    again = task.sample_pairs(12, "relation", seed=8)
    assert torch.equal(again.clean.tokens, clean.tokens) and torch.equal(again.corrupted.tokens, corrupted.tokens)
