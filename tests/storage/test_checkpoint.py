"""Checkpoints: exact round trip, config contents, atomic replacement, and one-line errors for every damage."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

import icr_interp
from icr_interp.storage import atomic
from icr_interp.storage.checkpoint import FORMAT, CheckpointError, check_writable, load_checkpoint, save_checkpoint
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.pipeline.presets import build_from_preset, get_preset
from icr_interp.task.prompts import ICRecallTask
from icr_interp.storage.checkpoint import files as checkpoint_files
from icr_interp.training.trainer import TrainConfig, finetune, query_logits


def _trained(seed: int, steps: int = 8):
    """A tiny-preset model after a short fine-tune."""
    _, task, model = build_from_preset("tiny", seed=seed)
    finetune(model, task, n_samples=64, steps=steps, seed=seed, progress=False, lr=0.01)
    return task, model


@pytest.fixture(scope="module")
def trained():
    return _trained(seed=1)


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory) -> Path:
    """A pristine checkpoint; tests that damage one work on a copy (``ckpt``)."""
    task, model = trained
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "tiny", model, task, accuracy=0.75, note="unit test")


@pytest.fixture
def ckpt(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "copy"))


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (hidden ones included) with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def sha256(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def rewrite_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def rewrite_weights(path: Path, edit) -> None:
    """Apply ``edit`` to the tensor dict and re-record the sha256, so only the content check can object."""
    tensors = safetensors.torch.load_file(str(path / "model.safetensors"))
    edit(tensors)
    safetensors.torch.save_file(tensors, str(path / "model.safetensors"))
    rewrite_config(path, weights_sha256=sha256(path / "model.safetensors"))


def expect_error(path: Path, *fragments: str) -> str:
    """load_checkpoint fails with a one-line CheckpointError containing every fragment; nothing on disk changes."""
    before = snapshot(path) if path.is_dir() else None
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    if before is not None:
        assert snapshot(path) == before
    return message


# ------------------------------------------------------------------ round trip
def test_round_trip_reproduces_logits_exactly(trained, saved):
    task, model = trained
    ck = load_checkpoint(saved)
    batch = task.sample(64, seed=123)
    assert torch.equal(ck.model(batch.tokens), model(batch.tokens))
    assert torch.equal(query_logits(ck.model, batch.tokens, batch.layout.query_end),
                       query_logits(model, batch.tokens, batch.layout.query_end))
    assert torch.equal(ck.task.kb.table, task.kb.table)
    assert ck.task.config() == task.config() and ck.kb.subjects == task.kb.subjects
    assert ck.model.icr_config == model.icr_config
    expected = TrainConfig(n_samples=64, steps=8, seed=1, lr=0.01, schedule="constant")
    assert ck.model.icr_train == model.icr_train == expected
    assert ck.metrics == {"accuracy": 0.75, "note": "unit test"}
    # Loaded weights differ from a fresh build: the fine-tuned W_Q really came from the file.
    _, _, fresh = build_from_preset("tiny", seed=1)
    assert not torch.equal(fresh.blocks[0].attn.W_Q, ck.model.blocks[0].attn.W_Q)
    assert torch.equal(fresh.blocks[0].mlp.W_in, ck.model.blocks[0].mlp.W_in)
    # Fine-tuning the loaded model trains attention QK only, as for a freshly built one.
    from icr_interp.training.trainer import trainable_names

    assert set(trainable_names(ck.model)) == {"blocks.0.attn.W_Q", "blocks.0.attn.W_K", "blocks.0.attn.b_Q",
                                              "blocks.0.attn.b_K"}


def test_config_json_fields(trained, saved):
    task, model = trained
    config = json.loads((saved / "config.json").read_text())
    assert sorted(config) == sorted(["format", "library_version", "weights_sha256", "metrics", "model", "task",
                                     "train", "run_config", "knowledge_base"])
    assert config["run_config"] is None  # none was given
    assert config["format"] == FORMAT == "icr_interp-checkpoint/2"  # /1 (0.1) is read through its migration
    assert config["library_version"] == icr_interp.__version__
    assert config["weights_sha256"] == sha256(saved / "model.safetensors")
    assert config["model"] == json.loads(json.dumps(model.icr_config.to_dict()))
    assert config["model"]["d_model"] == 128 and config["model"]["construction"] == "pair"
    assert config["task"] == {"n_pairs": 2, "bos": True}
    assert config["train"]["steps"] == 8 and config["train"]["n_samples"] == 64
    assert config["knowledge_base"]["table"] == task.kb.table.tolist()
    assert config["knowledge_base"]["spec"]["seed"] == 1
    assert config["metrics"] == {"accuracy": 0.75, "note": "unit test"}
    # Every tensor of the state dict is in the file, byte for byte.
    tensors = safetensors.torch.load_file(str(saved / "model.safetensors"))
    state = model.state_dict()
    assert sorted(tensors) == sorted(state)
    assert all(torch.equal(tensors[k], state[k].cpu()) for k in state)


def test_model_without_training_config_round_trips(tmp_path):
    _, task, model = build_from_preset("tiny", seed=2)
    ck = load_checkpoint(save_checkpoint(tmp_path / "untrained", model, task))
    assert json.loads((tmp_path / "untrained" / "config.json").read_text())["train"] is None
    assert ck.model.icr_train is None and ck.metrics == {}
    tokens = task.sample(16, seed=0).tokens
    assert torch.equal(ck.model(tokens), model(tokens))


def test_pretrained_memory_round_trips_without_refitting(tmp_path, monkeypatch):
    pretrain = pytest.importorskip("icr_interp.model.memory.pretrained")
    kb = KnowledgeBase.random(16, 4, 16, seed=0)
    task = ICRecallTask(kb, n_pairs=2)
    model = icr_interp.build_model(task, memory="pretrained", pretrain=dict(steps=3))
    with pytest.raises(CheckpointError, match="pretrained memory has not been fitted"):
        save_checkpoint(tmp_path / "unfitted", model, task)  # a saved memory is a fitted one
    assert not (tmp_path / "unfitted").exists()
    pretrain.pretrain_memory(model, task, progress=False)

    def no_refit(*args, **kwargs):
        raise AssertionError("loading must not pretrain the memory again")

    monkeypatch.setattr(pretrain, "fit_memory", no_refit)
    ck = load_checkpoint(save_checkpoint(tmp_path / "pre", model, task))
    tokens = task.sample(16, seed=0).tokens
    assert torch.equal(ck.model(tokens), model(tokens))
    assert ck.model.icr_config.pretrain["steps"] == 3 and ck.model.memory_fitted


# ------------------------------------------------------------------ damaged checkpoints
def test_truncated_weights(ckpt):
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    expect_error(ckpt, "model.safetensors is corrupted or truncated", "sha256")


def test_flipped_byte_in_weights(ckpt):
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    expect_error(ckpt, "corrupted or truncated")


def test_weights_that_do_not_parse(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    rewrite_config(ckpt, weights_sha256=sha256(ckpt / "model.safetensors"))
    expect_error(ckpt, "cannot be parsed as safetensors")


def test_corrupted_config_json(ckpt):
    text = (ckpt / "config.json").read_text()
    (ckpt / "config.json").write_text(text[: len(text) // 2])
    expect_error(ckpt, "config.json is not valid JSON", "line")


def test_config_json_not_an_object(ckpt):
    (ckpt / "config.json").write_text("[1, 2]")
    expect_error(ckpt, "must hold a JSON object")


@pytest.mark.parametrize("fmt, fragment", [("icr_interp-checkpoint/99", "unsupported checkpoint version"),
                                           ("something-else/1", "unknown checkpoint format"),
                                           (None, "unknown checkpoint format")])
def test_unknown_format(ckpt, fmt, fragment):
    rewrite_config(ckpt, format=fmt)
    expect_error(ckpt, fragment, repr(fmt))


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_missing_file(ckpt, name):
    (ckpt / name).unlink()
    expect_error(ckpt, "incomplete checkpoint", f"has no {name}")


def test_missing_or_wrong_kind_of_path(tmp_path):
    expect_error(tmp_path / "nowhere", "checkpoint not found")
    (tmp_path / "file").write_text("x")
    expect_error(tmp_path / "file", "not a checkpoint directory")


def test_missing_config_key(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    del config["knowledge_base"]
    (ckpt / "config.json").write_text(json.dumps(config))
    expect_error(ckpt, "lacks the key(s) knowledge_base")


def test_invalid_model_config(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    rewrite_config(ckpt, model={**config["model"], "colour": "blue"})
    expect_error(ckpt, "invalid model config", "colour")


def test_wrong_shape_tensor(ckpt):
    def shrink(t):
        t["blocks.0.attn.W_Q"] = t["blocks.0.attn.W_Q"][:, :, :64].contiguous()

    rewrite_weights(ckpt, shrink)
    expect_error(ckpt, "does not match config.json", "blocks.0.attn.W_Q has shape (1, 128, 64)", "(1, 128, 128)")


def test_config_that_implies_other_shapes(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    rewrite_config(ckpt, model={**config["model"], "d_model": 192})
    expect_error(ckpt, "does not match config.json", "config implies", "192")


def test_missing_unexpected_and_wrong_dtype_tensors(ckpt):
    def damage(t):
        del t["blocks.0.mlp.W_out"]
        t["extra.weight"] = torch.zeros(3)
        t["unembed.b_U"] = t["unembed.b_U"].double()

    rewrite_weights(ckpt, damage)
    expect_error(ckpt, "missing tensors blocks.0.mlp.W_out", "unexpected tensors extra.weight",
                 "unembed.b_U has dtype torch.float64")


def test_first_release_interrupted_swap_is_loaded_by_itself(ckpt):
    """The first release moved the old checkpoint aside before moving the new one in; a crash left only that."""
    moved = ckpt.parent / f".{ckpt.name}.old-1234abcd"
    ckpt.rename(moved)
    with pytest.warns(UserWarning, match=f"loading the previous one .* at {moved}"):
        assert load_checkpoint(ckpt).metrics == {"accuracy": 0.75, "note": "unit test"}
    shutil.rmtree(moved)
    expect_error(ckpt, "checkpoint not found")


# ------------------------------------------------------------------ writing
def test_save_replaces_existing_checkpoint(trained, tmp_path):
    task, model = trained
    path = save_checkpoint(tmp_path / "ck", model, task, run=1)
    task2, model2 = _trained(seed=2, steps=2)
    save_checkpoint(path, model2, task2, run=2)
    ck = load_checkpoint(path)
    assert ck.metrics == {"run": 2}
    tokens = task2.sample(16, seed=0).tokens
    assert torch.equal(ck.model(tokens), model2(tokens))
    assert torch.equal(ck.task.kb.table, task2.kb.table) and not torch.equal(ck.task.kb.table, task.kb.table)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temp or old directories left
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]  # nor backups


def test_save_into_empty_directory_and_new_parents(trained, tmp_path):
    task, model = trained
    (tmp_path / "empty").mkdir()
    save_checkpoint(tmp_path / "empty", model, task)
    save_checkpoint(tmp_path / "a" / "b" / "c", model, task)
    assert load_checkpoint(tmp_path / "empty").config["weights_sha256"] == \
        load_checkpoint(tmp_path / "a" / "b" / "c").config["weights_sha256"]


def _crash(*args, **kwargs):
    raise OSError("simulated crash")


@pytest.mark.parametrize("stage", ["weights", "config"])
def test_crash_while_writing_leaves_old_checkpoint(trained, saved, tmp_path, monkeypatch, stage):
    task, model = trained
    path = Path(shutil.copytree(saved, tmp_path / "ck"))
    before = snapshot(tmp_path)
    if stage == "weights":
        def partial_write(file, tensors):
            Path(file).write_bytes(b"half a file")
            raise OSError("simulated crash")

        monkeypatch.setattr(checkpoint_files, "_write_weights", partial_write)
    else:
        monkeypatch.setattr(checkpoint_files, "_write_json", _crash)
    with pytest.raises(CheckpointError, match="cannot write checkpoint .*simulated crash"):
        save_checkpoint(path, model, task, run="new")
    assert snapshot(tmp_path) == before  # old checkpoint byte-identical
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # temp dir cleaned up
    assert load_checkpoint(path).metrics == {"accuracy": 0.75, "note": "unit test"}


def test_crash_between_the_two_replacements_loads_the_old_checkpoint(trained, saved, tmp_path, monkeypatch):
    """New weights in, old config.json still there: load_checkpoint finds the old weights at their backup name."""
    task, _ = trained
    _, model = _trained(seed=1, steps=3)  # other weights, same task
    path = Path(shutil.copytree(saved, tmp_path / "ck"))
    old_weights = (path / "model.safetensors").read_bytes()
    calls = []
    real_replace = os.replace

    def replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if Path(dst).name == "config.json":  # weights already replaced; crash before the config follows
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(CheckpointError, match="simulated crash"):
        save_checkpoint(path, model, task, run="new")
    monkeypatch.undo()
    assert [c[1] for c in calls] == ["model.safetensors", "config.json"]
    assert (path / "model.safetensors").read_bytes() != old_weights  # the window: new weights, old config
    backups = atomic.backups(path / "model.safetensors")
    assert len(backups) == 1 and backups[0].read_bytes() == old_weights
    ck = load_checkpoint(path)  # finds the previous checkpoint by itself
    assert ck.metrics == {"accuracy": 0.75, "note": "unit test"}
    tokens = task.sample(8, seed=0).tokens
    assert torch.equal(ck.model(tokens), load_checkpoint(saved).model(tokens))
    save_checkpoint(path, model, task, run="again")  # the next save cleans up
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert load_checkpoint(path).metrics == {"run": "again"}


def test_refuses_to_overwrite_what_is_not_a_checkpoint(trained, tmp_path):
    task, model = trained
    (tmp_path / "notes.txt").write_text("precious")
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "data.csv").write_text("precious")
    for target, fragment in [("notes.txt", "is not a directory"), ("project", "not a checkpoint")]:
        with pytest.raises(CheckpointError, match=fragment):
            save_checkpoint(tmp_path / target, model, task)
    assert (tmp_path / "notes.txt").read_text() == "precious"
    assert (tmp_path / "project" / "data.csv").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "project"]
    with pytest.raises(CheckpointError, match="notes.txt is not a directory"):
        save_checkpoint(tmp_path / "notes.txt" / "ck", model, task)
    check_writable(tmp_path / "new" / "deeper")  # a free path is fine


@pytest.mark.parametrize("value, fragment", [(object(), "not JSON serializable"), (float("nan"), "Out of range"),
                                             (torch.tensor(1.0), "Tensor")])
def test_metrics_must_be_json(trained, tmp_path, value, fragment):
    task, model = trained
    with pytest.raises(CheckpointError, match=f"metric 'bad' is not JSON-serialisable.*{fragment}"):
        save_checkpoint(tmp_path / "ck", model, task, ok=1, bad=value)
    assert not any(tmp_path.iterdir())


def test_model_and_task_must_match(trained, tmp_path):
    _, model = trained
    other_task = ICRecallTask(KnowledgeBase.random(64, 8, 64), n_pairs=4)
    with pytest.raises(CheckpointError, match="was not built for this task"):
        save_checkpoint(tmp_path / "ck", model, other_task)
