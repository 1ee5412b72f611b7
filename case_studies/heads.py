"""Heads: with two heads, is the pairwise pattern per head, or split across heads?

Measured in docs/results.md ("Two layers and several heads").

For every knowledge-base shape and seed, build the model with ``--heads`` heads
(and ``--layers`` layers), fine-tune it with the library defaults, and report
the start and final accuracy, each head's template scores beside their null
(``pairwise_null``), each layer's OV-weighted combined row, and the verdict of
:func:`icr_interp.analysis.job_split.head_split`: ``per head`` (every head balanced),
``split across heads`` (one-sided heads whose combination is balanced) or
``mixed``.

    python case_studies/heads.py --shapes 48x6x3 64x8x4 --seeds 0 1 --heads 2
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, out_dir, positive, seed, write_json  # noqa: E402
from starts import shape  # noqa: E402

import icr_interp as ii  # noqa: E402
from icr_interp.analysis.job_split import head_split  # noqa: E402
from icr_interp.experiments.shapes import fine_tuned  # noqa: E402

SCORE_KEYS = ("pairwise", "pairwise_null", "p_value", "balance", "best")


def model_path(models: Path, s: int, r: int, k: int, seed_: int, layers: int, heads: int) -> Path:
    """Where a fine-tuned state dict of this build is saved (and reused with ``--reuse``), as safetensors."""
    return models / f"{s}x{r}x{k}_s{seed_}_L{layers}H{heads}.safetensors"


def save_state(path: Path, state: dict) -> None:
    """Write a state dict as safetensors, atomically: tensors and a header, never pickle."""
    import safetensors.torch

    from icr_interp.storage.atomic import write_bytes

    write_bytes(path, safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}))


def load_state(path: Path) -> dict | None:
    """A state dict saved by :func:`save_state`, or None if ``path`` does not exist (safetensors: no code runs).

    The bytes are read once and parsed from memory; a damaged file is a one-line ValueError.
    """
    import safetensors.torch

    if not path.exists():
        return None
    try:
        return safetensors.torch.load(path.read_bytes())
    except Exception as e:  # noqa: BLE001 -- safetensors raises its own error types
        raise ValueError(f"--reuse: {path} cannot be read as safetensors ({' '.join(str(e).split())}); "
                         f"delete it to retrain") from None


def measure(s: int, r: int, k: int, seed_: int, layers: int, heads: int, models: Path, reuse: bool, train: dict,
            n_eval: int, n_template: int) -> tuple[dict, "ii.ICRModel", "ii.ICRecallTask"]:
    """One row (start -> final accuracy, per-head and combined template scores, split verdict), model, task."""
    task = ii.ICRecallTask(ii.KnowledgeBase.random(s, r, s, answer_overlap=1.0, seed=seed_), n_pairs=k)
    path = model_path(models, s, r, k, seed_, layers, heads)
    train = {key: value for key, value in train.items() if value is not None}
    path = path.with_name(path.stem + "".join(f"_{key}{value}" for key, value in sorted(train.items()))
                          + path.suffix)
    state = load_state(path) if reuse else None
    model, row = fine_tuned(task, layers, heads, seed_, n_eval=n_eval, state=state, **train)
    if state is None:
        save_state(path, model.state_dict())
    batch = task.sample(n_template, seed=seed_ + 1)
    scores = ii.score_templates(model, batch).to_dict()
    pick = lambda d: {key: d[key] for key in SCORE_KEYS}  # noqa: E731
    row.update(train=train, reused=state is not None, shape=f"{s}x{r}x{k}", seed=seed_, n_layers=layers, n_heads=heads,
               heads=[dict(layer=h["layer"], head=h["head"], **pick(h)) for h in scores["per_head"]],
               combined=[dict(layer=c["layer"], head_shares=c["head_shares"], **pick(c)) for c in scores["combined"]],
               split=head_split(model, batch).to_dict())
    return row, model, task


def report(row: dict) -> str:
    lines = [f"{row['shape']:>9} seed {row['seed']} L{row['n_layers']}H{row['n_heads']}: start "
             f"{row['start_accuracy']:.3f} -> {row['accuracy']:.3f} (ceiling {row['ceiling']:.3f})"]
    split = row["split"]
    for h in row["heads"]:
        lay, hd = h["layer"], h["head"]
        lines.append(f"    L{lay} h{hd}: subj {split['subject'][lay][hd]:.3f} ans {split['answer'][lay][hd]:.3f} "
                     f"pairwise {h['pairwise']:.3f} (null {h['pairwise_null']:.3f}) balance {h['balance']:.3f} "
                     f"-> {h['best']}")
    for c in row["combined"]:
        lines.append(f"    L{c['layer']} combined: pairwise {c['pairwise']:.3f} (null {c['pairwise_null']:.3f}) "
                     f"balance {c['balance']:.3f} -> {c['best']}; {split['verdict'][c['layer']]}")
    return "\n".join(lines)


def parser(prog: str, doc: str, layers: int, heads: int, out: str) -> Parser:
    """The arguments heads.py and layers.py share (shapes, seeds, architecture, budgets, saved models)."""
    p = Parser(prog=prog, description=doc.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["48x6x3", "64x8x4"])
    p.add_argument("--seeds", type=seed, nargs="+", default=[0, 1])
    p.add_argument("--heads", type=positive, default=heads)
    p.add_argument("--layers", type=positive, default=layers)
    p.add_argument("--n-eval", type=positive, default=1024)
    p.add_argument("--n-template", type=positive, default=512)
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the library's)")
    p.add_argument("--n-samples", type=positive, default=None, help="training prompts (default: the library's)")
    p.add_argument("--models", default="runs/models", help="where fine-tuned state dicts are saved (git-ignored)")
    p.add_argument("--reuse", action="store_true", help="load a fine-tuned model saved in --models by an earlier run")
    p.add_argument("--threads", type=positive, default=1)
    p.add_argument("--out", default=out)
    return p


def parse(p: Parser, argv) -> tuple:
    """Parsed arguments and the shapes; a shape or an architecture the build refuses exits 2 with one line."""
    args = p.parse_args(argv)
    try:
        shapes = [shape(t) for t in args.shapes]
        ii.ModelConfig(n_layers=args.layers, n_heads=args.heads).validate()
    except ValueError as e:
        p.error(str(e))
    return args, shapes


def each_run(p: Parser, args, shapes):
    """Set the threads and the models folder, then yield (seed, row, model, task) for every shape and seed."""
    import torch

    torch.set_num_threads(args.threads)
    models = out_dir(p, args.models)
    train = dict(steps=args.steps, n_samples=args.n_samples)
    for s, r, k in shapes:
        for sd in args.seeds:
            yield (sd, *measure(s, r, k, sd, args.layers, args.heads, models, args.reuse, train, args.n_eval,
                                args.n_template))


def main(argv=None) -> int:
    p = parser("heads.py", __doc__, layers=1, heads=2, out="case_studies/results/heads")
    args, shapes = parse(p, argv)
    out = out_dir(p, args.out)
    rows = []
    for _, row, _, _ in each_run(p, args, shapes):
        rows.append(row)
        print(report(row), flush=True)
    write_json(out / "heads.json", dict(args=vars(args), rows=rows))
    print(f"wrote {out / 'heads.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
