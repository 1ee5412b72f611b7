"""Shared test setup: runtime shape checking and tiny knowledge bases.

Every ``icr_interp`` module imported by the tests is instrumented by
jaxtyping's import hook with beartype, so each annotated call checks its
arguments, return value and dataclass fields, shapes included (``batch`` must
agree across the arguments of one call).  The hook only instruments modules
imported *after* it is installed; pytest imports this file before any test
module, and the assertion below fails loudly if something imported the
package earlier.  ``tests/model/test_builder.py::test_shape_checker_is_active`` proves
the checker is live.

beartype rather than typeguard: typeguard 4 parses jaxtyping's shape strings
("n_triplets 3") as forward references and fails at import.  The PEP 484
numeric tower is on so that an ``int`` is accepted where ``float`` is annotated
(``answer_overlap=0``), as PEP 484 says.
"""

import sys

import jaxtyping
from pathlib import Path

import pytest
import torch

SHAPE_CHECKER = "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))"

if any(name == "icr_interp" or name.startswith("icr_interp.") for name in sys.modules):
    raise RuntimeError("icr_interp was imported before tests/conftest.py: its annotations would not be checked")
jaxtyping.install_import_hook("icr_interp", SHAPE_CHECKER)

# Tiny models on a shared 2-core machine: one thread is ~50x faster than two
# threads contending with other processes.
torch.set_num_threads(1)

from icr_interp.task.knowledge import KnowledgeBase  # noqa: E402  (after the hook, on purpose)
from icr_interp.task.prompts import ICRecallTask  # noqa: E402

N_SUBJECTS, N_RELATIONS, N_ANSWERS, N_PAIRS = 16, 4, 16, 2

# The slow tier (`make test-slow`, also run by .ci/run): tests that need tens of seconds or more on two shared
# cores, named here by file basename (unique across tests/) and function.  `make test` runs the rest
# in under five minutes (docs/results.md, "Test suite tiers").  Tests in our own files carry @pytest.mark.slow.
SLOW = {  # seconds measured on 2 cores at load ~8 (2026-12-03); about half that on a quiet machine
    "test_real_facts_start.py::test_builtin_countries_does_not_end_below_its_start",  # 106 s
    "test_real_facts_start.py::test_people_base_answer_start_climbs_to_its_ceiling",  # 17 s
    "test_real_facts_start.py::test_hand_written_csv_does_not_end_below_its_start",  # 13 s
    "test_memory_pretrained.py::test_pretrained_memory_learns_and_rewards_the_pairwise_pattern",  # 59 s
    "test_sweep.py::test_workers_die_with_a_killed_sweep",  # 56 s
    "test_sweep.py::test_resume_after_sigkill_mid_sweep",  # 18 s
    # the three users of the local_sweep fixture (50 s to build), so that the fast tier never builds it
    "test_sweep.py::test_local_sweep_writes_one_line_per_run",
    "test_sweep.py::test_run_one_is_deterministic_in_process",
    "test_sweep.py::test_ray_sweep_equals_local",  # 47 s
    "test_probe_real_model.py::test_the_probe_writes_its_report_for_a_real_model",  # 26 s
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if f"{item.path.name}::{getattr(item, 'originalname', item.name)}" in SLOW:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def shared_kb() -> KnowledgeBase:
    """16 subjects, 4 relations, one shared set of 16 answers; each relation a bijection."""
    return KnowledgeBase.random(N_SUBJECTS, N_RELATIONS, N_ANSWERS, answer_overlap=1.0, seed=0)


@pytest.fixture(scope="session")
def disjoint_kb() -> KnowledgeBase:
    """16 subjects, 4 relations, 16 answers split into 4 private sets of 4 (the control)."""
    return KnowledgeBase.random(N_SUBJECTS, N_RELATIONS, N_ANSWERS, answer_overlap=0.0, seed=0)


@pytest.fixture(scope="session")
def shared_task(shared_kb) -> ICRecallTask:
    """k = 2 pairs with BOS: prompts of length 6."""
    return ICRecallTask(shared_kb, n_pairs=N_PAIRS)


@pytest.fixture(scope="session")
def disjoint_task(disjoint_kb) -> ICRecallTask:
    return ICRecallTask(disjoint_kb, n_pairs=N_PAIRS)


@pytest.fixture(scope="session")
def reference_checkpoint(tmp_path_factory) -> Path:
    """The reference model fine-tuned as in the paper (200 steps), saved once per session for the analysis tests."""
    from icr_interp import build_model, save_checkpoint
    from icr_interp.training.trainer import finetune

    path = tmp_path_factory.getbasetemp() / "reference-checkpoint"
    task = ICRecallTask(KnowledgeBase.random(64, 8, 64, 1.0, seed=0), n_pairs=4)
    model = build_model(task)
    finetune(model, task, steps=200, seed=0, progress=False)
    save_checkpoint(path, model, task, step=200)
    return path


@pytest.fixture(scope="session")
def tiny_smol_llama():
    """A random 2-layer Llama (rotary, GQA, RMSNorm, gated SiLU) with SmolLM2's own tokenizer from the converted
    cache: the real LM's code path (a TransformerLens model with a tokenizer, text prompts with token spans) in
    a model that runs in milliseconds. Skipped where SmolLM2 has not been converted (``make setup`` does it)."""
    from icr_interp.model import pretrained_lm

    cache = pretrained_lm.find_cache("smollm2-135m")
    if cache is None:
        pytest.skip("SmolLM2 not converted in the cache (make setup converts it)")
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cache / "tokenizer")
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=128,
                                  d_vocab=len(tokenizer), act_fn="silu", normalization_type="RMS",
                                  positional_embedding_type="rotary", rotary_dim=8, n_key_value_heads=2,
                                  gated_mlp=True, final_rms=True, default_prepend_bos=False, seed=0)
    model = HookedTransformer(cfg)
    model.set_tokenizer(tokenizer)
    return model.eval()
