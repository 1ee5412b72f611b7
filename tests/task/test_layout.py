"""The one span layout (icr_interp.task.layout): built from tokenized spans, concatenated, keyed, renamed.

A tiny byte-level BPE tokenizer is trained here (no download) so that text names take several tokens.
"""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icr_interp import _moved
from icr_interp.task import PromptTask, prompts
from icr_interp.task import text_batches as B
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.layout import Layout
from icr_interp.task.prompts import ICRecallTask
from icr_interp.task.text import TextICRecallTask
from icr_interp.task.text_spans import Encoded
from icr_interp.task.vocab import Vocabulary

FACTS = [(s, "capital", a) for s, a in (("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Peru", "Lima"),
                                        ("Burkina Faso", "Ouagadougou"), ("Chile", "Santiago"), ("Egypt", "Cairo"))] + \
        [(s, "continent", a) for s, a in (("France", "Europe"), ("Japan", "Asia"), ("Italy", "Europe"),
                                          ("Peru", "South America"), ("Burkina Faso", "Africa"), ("Egypt", "Africa"))]


@pytest.fixture(scope="module")
def text_task(tmp_path_factory) -> TextICRecallTask:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"{s}: {a}\n" for s, _, a in FACTS if "Burkina" not in s] * 3  # Burkina Faso: several pieces
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<bos>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path_factory.mktemp("kb") / "facts.csv"
    path.write_text("subject,relation,answer\n" + "".join(f"{s},{r},{a}\n" for s, r, a in FACTS))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # answers sharing a first token are excluded
        return TextICRecallTask(KnowledgeBase.from_csv(path), fast, n_pairs=2, prepend_bos=True)


def _old_key(e: Encoded) -> tuple:
    """What ``Encoded.layout_key`` computed before it became :meth:`Layout.keys`."""
    return len(e.ids), tuple(e.subjects), tuple(e.answers), e.query, e.bos


# ------------------------------------------------------------------ from_encoded
def test_from_encoded_reads_every_span_and_the_prediction_position():
    encoded = [Encoded(list(range(9)), [(1, 2), (4, 4)], [(3, 3), (5, 6)], (7, 7), 0),
               Encoded(list(range(8)), [(0, 0), (2, 3)], [(1, 1), (4, 4)], (5, 6), -1)]
    lay = Layout.from_encoded(encoded, 2)
    assert lay.subject_start.tolist() == [[1, 4], [0, 2]] and lay.subject_end.tolist() == [[2, 4], [0, 3]]
    assert lay.answer_start.tolist() == [[3, 5], [1, 4]] and lay.answer_end.tolist() == [[3, 6], [1, 4]]
    assert lay.query_start.tolist() == [7, 5] and lay.query_end.tolist() == [7, 6]
    assert lay.bos_pos.tolist() == [0, -1] and lay.pred_pos.tolist() == [8, 7]  # the last token
    assert not lay.one_token_spans and lay.n_pairs == 2 and lay.n_examples == 2
    assert lay.keys() == [_old_key(e) for e in encoded]
    assert Layout.from_encoded([], 3).subject_end.shape == (0, 3)
    with pytest.raises(ValueError, match="has 2 context pairs, the layout 3"):
        Layout.from_encoded(encoded, 3)


def test_a_text_batch_is_the_layout_of_its_encoded_prompts(text_task):
    batch = text_task.sample(12, seed=0)
    encoded = text_task._encode(batch.relations, batch.subjects, batch.query, batch.context_answers)
    again = Layout.from_encoded(encoded, 2)
    assert batch.layout.keys() == again.keys() == [_old_key(e) for e in encoded]
    assert not batch.layout.one_token_spans  # the text spans are multi-token: the test can tell
    assert (batch.layout.pred_pos > batch.layout.query_end).all()


# ------------------------------------------------------------------ keys
def test_toy_keys_are_one_fixed_format(shared_task):
    lay = shared_task.sample(5, seed=0).layout
    keys = lay.keys()
    assert len(set(keys)) == 1 and keys[0][0] == shared_task.n_ctx  # length through the prediction position
    assert keys[0] == (6, ((1, 1), (3, 3)), ((2, 2), (4, 4)), (5, 5), 0)
    assert ICRecallTask(shared_task.kb, 2, bos=False).layout(1).keys()[0][-1] == -1


def test_keys_group_prompts_whose_positions_align(text_task):
    batch = text_task.sample(24, seed=1)
    keys, n_pos = batch.layout.keys(), batch.tokens.shape[1]
    roles = batch.layout.role_of_positions(n_pos)
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    assert len(groups) >= 2 and max(map(len, groups.values())) >= 2  # some prompts share a layout, some not
    for members in groups.values():  # one key: the same role at every position
        assert all(torch.equal(roles[members[0]], roles[i]) for i in members)
    distinct = list(groups)
    a, b = groups[distinct[0]][0], groups[distinct[1]][0]
    assert not torch.equal(roles[a], roles[b])  # two keys: positions that differ


def test_a_corruption_keeps_the_keys(text_task):
    batch = text_task.sample(16, seed=2)
    for kind in ("query", "relation"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            clean, corrupted, _ = text_task.corrupt_pairs(batch, kind, seed=0)
        enc = text_task._encode(corrupted.relations, corrupted.subjects, corrupted.query, corrupted.context_answers)
        assert Layout.from_encoded(enc, 2).keys() == clean.layout.keys()


# ------------------------------------------------------------------ cat
def test_cat_of_text_batches_pads_tokens_and_concatenates_layouts(text_task):
    a, b = text_task.sample(3, seed=3), text_task.sample(4, seed=4)
    both = B.concat([a, b], text_task.pad_id)
    assert both.layout.keys() == a.layout.keys() + b.layout.keys()
    assert both.tokens.shape == (7, max(a.tokens.shape[1], b.tokens.shape[1]))
    with pytest.raises(ValueError, match="at least one"):
        Layout.cat([])
    with pytest.raises(ValueError, match=r"different numbers of context pairs: \[2, 3\]"):
        Layout.cat([a.layout, ICRecallTask(text_task.kb, 3).layout(1)])


def _random_layout(draw, k: int) -> Layout:
    n = draw(st.integers(0, 4))
    lengths = st.lists(st.integers(1, 3), min_size=2 * k + 1, max_size=2 * k + 1)
    encoded = []
    for _ in range(n):
        widths, spans, pos = draw(lengths), [], draw(st.integers(0, 1))
        for w in widths:
            spans.append((pos, pos + w - 1))
            pos += w + draw(st.integers(0, 1))  # a separator, or none
        encoded.append(Encoded(list(range(pos + 1)), spans[0:2 * k:2], spans[1:2 * k:2], spans[-1], spans[0][0] - 1))
    return Layout.from_encoded(encoded, k)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), k=st.integers(0, 3))
def test_cat_concatenates_keys_and_inverts_slicing(data, k):
    parts = [_random_layout(data.draw, k) for _ in range(data.draw(st.integers(1, 3)))]
    whole = Layout.cat(parts)
    assert whole.n_examples == sum(p.n_examples for p in parts)
    assert whole.keys() == [key for p in parts for key in p.keys()]
    cut = data.draw(st.integers(0, whole.n_examples))
    assert Layout.cat([whole[:cut], whole[cut:]]).keys() == whole.keys()
    assert torch.equal(whole.role_of_positions(12), Layout.cat([whole[:cut], whole[cut:]]).role_of_positions(12))


# ------------------------------------------------------------------ the first release's names
@pytest.mark.parametrize("old, new", [("subject_pos", "subject_end"), ("answer_pos", "answer_end"),
                                      ("query_pos", "query_end")])
def test_old_names_read_with_one_warning_naming_the_new_one(shared_task, old, new):
    lay = shared_task.layout(3)
    _moved._warned.discard(f"Layout.{old}")
    with pytest.deprecated_call(match=rf"Layout\.{old} moved to icr_interp\.task\.layout\.Layout\.{new}"):
        value = getattr(lay, old)
    assert value is getattr(lay, new)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert getattr(lay, old) is getattr(lay, new)  # once per name
    _moved._warned.discard(f"Layout.{old}")
    with pytest.warns(DeprecationWarning, match=new):  # the constructor keyword too
        built = Layout(**{old if f == new else f: getattr(lay, f) for f in ("subject_end", "answer_end", "query_end",
                                                                             "bos_pos")})
    assert built.keys() == lay.keys()


def test_the_new_names_do_not_warn(shared_task):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lay = Layout(subject_end=torch.tensor([[1]]), answer_end=torch.tensor([[2]]), query_end=torch.tensor([3]),
                     bos_pos=torch.tensor([0]))
        assert lay.keys() == [(4, ((1, 1),), ((2, 2),), (3, 3), 0)]
        shared_task.sample(2, seed=0)
    assert prompts.Layout is Layout and {"subject_pos", "answer_pos", "query_pos"} == set(_moved.MOVED_ATTRS["Layout"])


# ------------------------------------------------------------------ the protocol
def test_both_tasks_are_prompt_tasks_and_neither_derives_from_the_other(shared_task, text_task):
    assert isinstance(shared_task, PromptTask) and isinstance(text_task, PromptTask)
    assert not issubclass(TextICRecallTask, ICRecallTask) and not isinstance(text_task, ICRecallTask)
    assert not isinstance(Vocabulary.from_kb(shared_task.kb), PromptTask)  # the check can fail
    assert not hasattr(text_task, "n_ctx") and not hasattr(text_task, "sample_facts")  # no refusals left
    weights = text_task.relation_weights
    assert weights.sum().item() == pytest.approx(1.0) and (weights > 0).sum() == len(text_task._usable)
    assert repr(text_task).startswith("TextICRecallTask(n_pairs=2, ") and "kb=KnowledgeBase(" in repr(text_task)
