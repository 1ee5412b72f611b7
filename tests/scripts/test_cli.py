"""Presets and the ``icr-interp`` command line: what they build, what they print, how they fail."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from icr_interp import cli
from icr_interp.storage.checkpoint import load_checkpoint
from icr_interp.analysis.scoring.templates import RoleMass
from icr_interp.cli import main
from icr_interp.viz.labels import position_labels
from icr_interp.viz.query_table import pair_balance
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.pipeline.presets import DESCRIPTIONS, PRESETS, build_from_preset, get_preset
from icr_interp.training.trainer import evaluate


# ------------------------------------------------------------------ presets
def kb_args(config) -> dict:
    """Keyword arguments of KnowledgeBase.random that a preset's knowledge config sets."""
    k = config.knowledge
    return dict(n_subjects=k.n_subjects, n_relations=k.n_relations, n_answers=k.n_answers,
                answer_overlap=k.answer_overlap, mapping=k.mapping)


def test_preset_values():
    paper, control, pre, tiny = (get_preset(n) for n in ("paper", "control", "pretrained", "tiny"))
    assert set(PRESETS) == {"paper", "control", "pretrained", "tiny"}
    assert kb_args(paper) == dict(n_subjects=64, n_relations=8, n_answers=64, answer_overlap=1.0, mapping="balanced")
    assert paper.task.n_pairs == 4 and (paper.model.memory, paper.model.d_model) == ("constructed", 0)
    assert kb_args(control) == {**kb_args(paper), "answer_overlap": 0.0}
    assert kb_args(pre) == kb_args(paper) and pre.model.memory == "pretrained"
    assert (tiny.knowledge.n_subjects, tiny.knowledge.n_relations, tiny.knowledge.n_answers,
            tiny.task.n_pairs) == (16, 4, 16, 2)
    assert (paper.train.n_samples, paper.train.steps, paper.train.lr) == (2048, 200, None)  # lr: by attention
    assert all(DESCRIPTIONS[p] and "\n" not in DESCRIPTIONS[p] for p in PRESETS)


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="unknown preset 'big'; choose one of: paper, control, pretrained, tiny"):
        get_preset("big")


def test_build_from_preset_is_seeded():
    kb, task, model = build_from_preset("tiny", seed=3)
    assert (kb.n_subjects, kb.n_relations, kb.n_answers, kb.n_triplets) == (16, 4, 16, 64)
    assert task.n_pairs == 2 and model.icr_config.seed == 3 and kb.spec["seed"] == 3
    assert not kb.answer_reveals_relation  # shared answers
    kb2, _, model2 = build_from_preset("tiny", seed=3)
    kb4, _, model4 = build_from_preset("tiny", seed=4)
    assert torch.equal(kb.table, kb2.table) and not torch.equal(kb.table, kb4.table)
    assert torch.equal(model.blocks[0].attn.W_Q, model2.blocks[0].attn.W_Q)
    assert not torch.equal(model.blocks[0].attn.W_Q, model4.blocks[0].attn.W_Q)
    with pytest.raises(ValueError, match="seed must be an integer in"):
        build_from_preset("tiny", seed=-1)


def test_control_preset_has_disjoint_answers():
    kb = KnowledgeBase.random(**kb_args(get_preset("control")), seed=0)
    assert kb.answer_reveals_relation and [len(s) for s in kb.answer_sets()] == [8] * 8


# ------------------------------------------------------------------ report helpers
def balances(rows, layout):
    """Each pair's balance of query rows ``[n pos]`` on a one-example layout, ``[n pair]``."""
    return pair_balance(RoleMass.of(rows[:, None, :], layout))[:, 0]


def test_position_labels_and_pair_balance():
    _, task, _ = build_from_preset("tiny", seed=0)
    assert position_labels(task.layout(1), task.n_ctx) == ["<bos>", "s1", "a1", "s2", "a2", "query"]
    row = torch.tensor([[0.1, 0.2, 0.2, 0.45, 0.05, 0.0]])
    assert torch.allclose(balances(row, task.layout(1)), torch.tensor([[1.0, 0.2]]))


def test_the_parser_spells_the_presets_as_the_library_does():
    from icr_interp.model.builder import ATTENTIONS, MEMORIES

    assert cli.PRESET_NAMES == tuple(PRESETS) and cli.presets_help() == cli.PRESETS_HELP
    assert cli.MEMORIES == MEMORIES and cli.ATTENTIONS == ATTENTIONS
    assert cli.builtin_names() == KnowledgeBase.builtin_names()


HEAVY = ("torch", "transformer_lens", "matplotlib", "circuitsvis", "ray", "numpy")


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["reproduce", "--help"], ["sweep", "--help"],
                                  ["train", "--seed", "x", "--out", "o"], ["train", "--csv", "/nonexistent"]])
def test_help_and_argument_errors_import_nothing_heavy(argv):
    """Parsing comes first: --help and argparse's errors answer before torch and TransformerLens load."""
    code = (f"import sys\nfrom icr_interp.cli import main\ncode = main({argv!r})\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules]); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == (0 if "--help" in argv else 2) and proc.stdout.splitlines()[-1] == "[]", proc
    if "--help" not in argv:
        assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("icr-interp: error: ")


def test_ctrl_c_during_start_up_is_one_line_and_130(tmp_path):
    """SIGINT while the library imports (seconds on a loaded machine): one line, exit 130, no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "icr_interp.cli", "train", "--preset", "tiny", "--out",
                             str(tmp_path / "o")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.4)  # parsed by now (~0.1 s); importing torch and TransformerLens takes seconds
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "icr-interp: interrupted\n", (proc.returncode, err)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ commands
def test_presets_command(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(PRESETS)
    assert all(DESCRIPTIONS[p] in out for p, out in zip(PRESETS, lines))


def test_train_help_explains_every_preset(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(DESCRIPTIONS[p] in out for p in PRESETS)


def test_train_writes_loadable_checkpoint(tmp_path, capsys):
    out_dir = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--seed", "1", "--out", str(out_dir), "--n-samples", "128", "--steps", "15"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    acc = re.search(r"before (\d\.\d{3}), after (\d\.\d{3})", out)
    assert acc and f"checkpoint: {out_dir}" in out
    ck = load_checkpoint(out_dir)
    m = ck.metrics
    assert (m["preset"], m["seed"]) == ("tiny", 1) and ck.config["run_config"]["train"]["steps"] == 15
    assert ck.run_config == cli.run_config(cli.build_parser().parse_args(argv))
    assert (ck.model.icr_train.n_samples, ck.model.icr_train.steps, ck.model.icr_train.seed) == (128, 15, 1)
    assert len(m["history"]["loss"]) == 15
    assert f"{m['before']['accuracy']:.3f}" == acc.group(1) and f"{m['after']['accuracy']:.3f}" == acc.group(2)
    # The saved model is the one that was evaluated: re-evaluating it gives the recorded numbers exactly.
    again = evaluate(ck.model, ck.task, seed=m["seed"])
    assert again["accuracy"] == m["after"]["accuracy"] and again["query_attention"] == m["after"]["query_attention"]
    assert m["after"]["loss"] < m["before"]["loss"]  # fine-tuning helped
    # Training again into the same directory replaces the checkpoint.
    assert main([*argv[:4], "2", *argv[5:]]) == 0
    assert load_checkpoint(out_dir).metrics["seed"] == 2


def _bad_args(tmp_path: Path) -> list[tuple[list[str], str]]:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "data.csv").write_text("x")
    out = str(tmp_path / "out")
    return [
        (["train", "--preset", "huge", "--out", out], "unknown preset 'huge'; choose one of: paper"),
        (["train", "--preset", "tiny", "--seed", "-1", "--out", out], "argument --seed: --seed must be >= 0, got -1"),
        (["train", "--preset", "tiny", "--seed", "one", "--out", out], "seed must be an integer, got 'one'"),
        (["train", "--preset", "tiny", "--n-samples", "0", "--out", out], "--n-samples must be >= 1, got 0"),
        (["train", "--preset", "tiny", "--steps", "-5", "--out", out], "--steps must be >= 0, got -5"),
        (["train", "--preset", "tiny", "--out", str(tmp_path / "file.txt")], "exists and is not a directory"),
        (["train", "--preset", "tiny", "--out", str(tmp_path / "dir")], "not a checkpoint"),
        (["train", "--preset", "tiny", "--n-samples", str(10**8), "--out", out],
         "train.n_samples must be in [1, 1000000], got 100000000"),
        (["train", "--preset", "tiny", "--out", "/proc/icr-interp-test/ck"], "cannot create files in /proc"),
        (["sweep", "--preset", "tiny", "--n-samples", str(10**8), "--out", out + ".jsonl"], "train.n_samples"),
        (["sweep", "--preset", "tiny", "--seeds", str(2**64 - 1), "--out", out + ".jsonl"], "seed must be <= "),
        (["sweep", "--preset", "tiny", "--out", str(tmp_path / "dir")], "exists and is not a file"),
        (["sweep", "--preset", "tiny", "--out", "/proc/icr-interp-test.jsonl"], "cannot create files in /proc"),
        (["train", "--preset", "tiny"], "the following arguments are required: --out"),
        (["train", "--preset", "tiny", "--out", out, "--device", "tpu"], "argument --device: invalid choice"),
        (["reproduce", "--seed", "-3"], "--seed must be >= 0"),
        (["train", "--csv", str(tmp_path / "nope.csv"), "--out", out], "argument --csv: "),
        (["train", "--csv", str(tmp_path / "file.txt"), "--out", out], "file.txt:1: header must name"),
        (["train", "--csv", "a\0b", "--out", out], "argument --csv: "),  # the OS refuses a NUL byte
        (["train", "--csv", "x" * 5000, "--out", out], "argument --csv: "),  # ... and a name too long
        (["train", "--preset", "tiny", "--out", "a\0b"], "--out: "),
        (["train", "--preset", "tiny", "--out", str(tmp_path / ("x" * 5000))], "--out: "),
        (["train", "--csv", str(tmp_path / "file.txt"), "--builtin", "countries", "--out", out], "not allowed with"),
        (["train", "--builtin", "atlantis", "--out", out], "argument --builtin: invalid choice"),
        (["train", "--layers", "3", "--out", out], "--layers must be <= 2"),
        (["train", "--k", "0", "--out", out], "--k must be >= 1"),
        (["reproduce", "--out", str(tmp_path / "file.txt")], "exists and is not a directory"),
        ([], "the following arguments are required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ]


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    for argv, fragment in _bad_args(tmp_path):
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == "", argv
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("icr-interp: error: ") and fragment in lines[0], (argv, lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file.txt"]  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CUDA-less error")
def test_cuda_without_cuda_exits_2(tmp_path, capsys):
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "o"), "--device", "cuda"]) == 2
    assert capsys.readouterr().err == "icr-interp: error: --device cuda requested but CUDA is not available\n"


def test_runtime_error_exits_1_without_traceback(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("knowledge base\ncannot be built")

    monkeypatch.setattr("icr_interp.pipeline.runner.run", broken)
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err == "icr-interp: error: knowledge base cannot be built\n"


def test_module_entry_point_bad_argument_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "icr_interp.cli", "train", "--preset", "nope", "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["icr-interp: error: argument --preset: unknown preset 'nope'; "
                                        "choose one of: paper, control, pretrained, tiny"]


def test_reproduce_prints_labelled_attention_and_saves(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "--seed", "5", "--steps", "3", "--n-samples", "64"]) == 0
    out = capsys.readouterr().out
    ck = load_checkpoint(tmp_path / "runs" / "paper-seed5")  # the default --out
    assert ck.metrics["preset"] == "paper" and ck.model.icr_train.steps == 3
    assert f"checkpoint: {Path('runs') / 'paper-seed5'}" in out
    rows = re.findall(r"^\s+(\d+)\s+(\S+)\s+([\d.]+)\s+([\d.]+)$", out, flags=re.M)
    labels = ["<bos>"] + [f"{r}{i}" for i in range(1, 5) for r in "sa"] + ["query"]
    assert [r[1] for r in rows[:10]] == labels and [int(r[0]) for r in rows[:10]] == list(range(10))
    table = torch.tensor([[float(r[2]), float(r[3])] for r in rows[:10]])  # [pos (before, after)]
    saved = torch.tensor([ck.metrics["before"]["query_attention"], ck.metrics["after"]["query_attention"]]).T
    assert torch.allclose(table, saved, atol=5e-4) and torch.allclose(table.sum(0), torch.ones(2), atol=5e-3)
    # Pair table: mass and balance before, mass and balance after; then the "all" row.
    pairs = re.findall(r"^\s+([1-4]|all)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, flags=re.M)
    assert [p[0] for p in pairs] == ["1", "2", "3", "4", "all"]
    printed = torch.tensor([[float(x) for x in p[1:]] for p in pairs])  # [pair+1 4]
    lay = ck.task.layout(1)
    s, a = saved[lay.subject_end[0]], saved[lay.answer_end[0]]  # [pair 2]
    balance = balances(saved.T, lay).T  # [pair 2]
    assert torch.allclose(printed[:4, [0, 2]], s + a, atol=5e-4)
    assert torch.allclose(printed[:4, [1, 3]], balance, atol=5e-4)
    assert torch.allclose(printed[4, [1, 3]], 2 * torch.minimum(s, a).sum(0) / (s + a).sum(0), atol=5e-4)
    # The reference model starts answer-heavy (init_tilt), i.e. not already pairwise.
    assert (balance[:, 0] < 0.5).all()


# ------------------------------------------------------------------ one config, one number, from every entry point
def test_run_train_and_sweep_report_the_same_held_out_accuracy(tmp_path, capsys):
    from icr_interp import run
    from icr_interp.pipeline.config import RunConfig
    from icr_interp.experiments.sweep import load_results

    seed = 11
    direct = run(RunConfig.from_preset("tiny", seed=seed)).metrics["accuracy"]
    assert main(["train", "--preset", "tiny", "--seed", str(seed), "--out", str(tmp_path / "ck")]) == 0
    trained = load_checkpoint(tmp_path / "ck").metrics["after"]["accuracy"]
    printed_train = re.search(r"after (\d\.\d{3})", capsys.readouterr().out).group(1)
    out = tmp_path / "s.jsonl"
    assert main(["sweep", "--preset", "tiny", "--seeds", str(seed), "--workers", "0", "--out", str(out)]) == 0
    swept = load_results(out)
    printed_sweep = re.search(r"^\S{16}\s+11\s+64\s+2\s+256\s+50\s+(\d\.\d{3})", capsys.readouterr().out, re.M).group(1)
    assert len(swept) == 1 and swept[0]["accuracy"] == trained == direct
    assert printed_train == printed_sweep == f"{direct:.3f}"
    assert swept[0]["key"] == RunConfig.from_preset("tiny", seed=seed).key


# ------------------------------------------------------------------ data safety at the command line
def test_train_refuses_a_foreign_model_folder_and_touches_nothing(tmp_path, capsys):
    hf = tmp_path / "hf"
    (hf / "tok").mkdir(parents=True)
    (hf / "config.json").write_text("{}")
    (hf / "pytorch_model.bin").write_text("w")
    for extra in ([], ["--force"]):
        assert main(["train", "--preset", "tiny", "--steps", "1", "--out", str(hf), *extra]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and "is not an icr_interp checkpoint's" in err[0]
    assert sorted(p.name for p in hf.iterdir()) == ["config.json", "pytorch_model.bin", "tok"]
    assert (hf / "config.json").read_text() == "{}" and (hf / "pytorch_model.bin").read_text() == "w"


def test_files_beside_a_checkpoint_survive_a_retrain_with_force(tmp_path, capsys):
    ck = tmp_path / "ck"
    argv = ["train", "--preset", "tiny", "--steps", "1", "--n-samples", "8", "--out", str(ck)]
    assert main(argv) == 0
    (ck / "NOTES.md").write_text("mine")
    (ck / "analysis").mkdir()
    capsys.readouterr()
    assert main(argv) == 2
    assert "also holds NOTES.md, analysis, which are not ours" in capsys.readouterr().err
    assert main([*argv, "--seed", "3", "--force"]) == 0
    assert (ck / "NOTES.md").read_text() == "mine" and (ck / "analysis").is_dir()
    assert load_checkpoint(ck).metrics["seed"] == 3


def test_sweep_on_a_results_file_with_a_null_line_is_one_line(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps(dict(key="a", accuracy=0.5)) + "\nnull\n")
    assert main(["sweep", "--preset", "tiny", "--workers", "0", "--out", str(out)]) == 2  # found in preflight
    err = capsys.readouterr().err
    assert err == f"icr-interp: error: {out}:2: expected a JSON object (a run's record), got null\n"


# ------------------------------------------------------------------ your own facts
def test_train_on_a_csv_writes_a_checkpoint_of_those_facts(tmp_path, capsys):
    rows = [f"el{i},{rel},{ans}" for i in range(12) for rel, ans in (("group", f"g{i % 4}"), ("period", f"p{i % 3}"))]
    csv = tmp_path / "elements.csv"
    csv.write_text("subject,relation,answer\n" + "\n".join(rows) + "\n")
    out = tmp_path / "ck"
    argv = ["train", "--csv", str(csv), "--k", "3", "--heads", "2", "--seed", "4", "--n-samples", "32", "--steps", "2",
            "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"elements: facts from {csv}") and f"checkpoint: {out}" in printed
    ck = load_checkpoint(out)
    assert ck.task.kb.subjects[:2] == ("el0", "el1") or list(ck.task.kb.subjects[:2]) == ["el0", "el1"]
    assert ck.task.n_pairs == 3 and ck.model.cfg.n_heads == 2 and ck.metrics["seed"] == 4
    assert ck.run_config.knowledge.csv == str(csv) and ck.run_config.name == "elements"
    assert ck.run_config == cli.run_config(cli.build_parser().parse_args(argv))


def test_progress_lines_off_a_terminal():
    """Off a terminal (a pipe, a log file) fine-tuning prints a line every few seconds and at the end."""
    import io
    from types import SimpleNamespace

    stream = io.StringIO()
    callback = cli.progress_lines(3, t0=time.perf_counter(), every_s=3600, stream=stream)
    for step in range(3):
        callback(step, None, SimpleNamespace(loss=[0.5 / (step + 1)]))
    assert stream.getvalue().splitlines() == ["fine-tune: step 3/3, loss 0.1667 (0 s)"]
    tty = SimpleNamespace(isatty=lambda: True)
    assert cli.progress_lines(3, t0=0.0, stream=tty) is None  # tqdm's bar shows there


def test_permission_denied_on_out_is_one_line(tmp_path, capsys, monkeypatch):
    """EACCES (simulated: the tests run as root, who is never refused) ends in one line and exit 2."""
    def refuse(path, force=False):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("icr_interp.storage.checkpoint.check_writable", refuse)
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "locked")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("icr-interp: error: --out: ") and "Permission denied" in err
