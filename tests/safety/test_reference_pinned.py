"""The reference model's numbers, pinned before the architecture refactor (issue 7).

Explicit arguments rebuild the first release's reference model (64 subjects x 8
relations x 64 shared answers, k = 4, constructed pair memory, seed 0, answer
tilt 2, full W_Q/W_K).  The values below were printed by the first release's
code; a refactor that changes any number of building or fine-tuning fails here.
"""

import torch

from icr_interp import KnowledgeBase, ICRecallTask, build_model, finetune

TOP_LOGIT = [3.342865467071533, 3.3066389560699463, 3.2394461631774902, 3.3434598445892334, 3.3097381591796875,
             2.238834857940674, 3.3353281021118164, 3.2562756538391113, 3.24440860748291, 3.2660293579101562,
             3.3446531295776367, 3.37367582321167, 2.2540364265441895, 2.3085854053497314, 3.2792131900787354,
             2.4089348316192627]
TOP_TOKEN = [119, 91, 77, 92, 88, 99, 79, 122, 125, 95, 119, 88, 113, 102, 95, 82]
LOGSUMEXP = [5.119509824504013, 5.103631084701573, 5.1054700474567785, 5.105696394012534, 5.134441434392506,
             4.979870570482527, 5.10065517814931, 5.093179074428434, 5.090629995462851, 5.098732182645149,
             5.103042849500461, 5.121149737848786, 4.981274190970833, 4.987755077894328, 5.097243599209604,
             5.014780348029992]
TRAIN_LOSS = [2.156503677368164, 1.9859436750411987, 1.799053430557251, 1.645961046218872, 1.5394842624664307,
              1.4646300077438354, 1.3858355283737183, 1.2944235801696777, 1.1728075742721558, 1.0141961574554443]
LOGSUMEXP_AFTER = [5.682642057374723, 5.672492697462074, 5.640658250654157, 5.681769527602606, 5.7582208934957,
                   5.093943902709203, 5.644193866288999, 5.608270357749495, 5.643357668138255, 5.594862871501697,
                   5.585264457716391, 5.612233434872298, 5.69184379876931, 5.142920936872224, 5.6889837146161195,
                   5.270314086804003]


def _reference():
    task = ICRecallTask(KnowledgeBase.random(64, 8, 64, answer_overlap=1.0, seed=0), n_pairs=4)
    model = build_model(task, memory="constructed", seed=0, init_tilt=2.0, attention="full")
    batch = task.sample(16, seed=3)
    return task, model, batch


def _query_logits(model, batch):
    return model(batch.tokens)[torch.arange(len(batch)), batch.layout.query_end].double()


def test_reference_logits_are_unchanged():
    _, model, batch = _reference()
    q = _query_logits(model, batch)
    top = q.max(-1)
    torch.testing.assert_close(top.values, torch.tensor(TOP_LOGIT, dtype=torch.double), rtol=0, atol=2e-5)
    assert top.indices.tolist() == TOP_TOKEN
    torch.testing.assert_close(q.logsumexp(-1), torch.tensor(LOGSUMEXP, dtype=torch.double), rtol=0, atol=2e-5)


def test_reference_finetuning_is_unchanged():
    task, model, batch = _reference()
    history = finetune(model, task, n_samples=64, steps=10, seed=0, progress=False)
    torch.testing.assert_close(torch.tensor(history.loss), torch.tensor(TRAIN_LOSS), rtol=0, atol=1e-4)
    torch.testing.assert_close(_query_logits(model, batch).logsumexp(-1),
                               torch.tensor(LOGSUMEXP_AFTER, dtype=torch.double), rtol=0, atol=1e-4)
