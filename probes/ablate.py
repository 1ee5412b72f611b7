"""Ablations of a checkpoint: what the model loses without each component.

Usage::

    python probes/ablate.py CHECKPOINT [--method mean|zero|resample] [--n-prompts N] [--seed S]
                            [--out DIR] [--force] [--device cpu|cuda]

Samples N prompts and runs icr_interp.analysis.causal.ablation.standard_ablations on them: the
values at subject / answer / query positions, the query row restricted to
subjects, answers or both, each head, and the memory's relation vector.
Prints the table and writes DIR/ablation.json.
"""


import _common as C

PROG = "ablate.py"
METHODS = ("mean", "zero", "resample")  # icr_interp.analysis.causal.ablation.METHODS


def build_parser() -> C.OneLineParser:
    p = C.OneLineParser(prog=PROG, **C.help_texts(__doc__))
    C.add_common_arguments(p, "")
    p.add_argument("--method", choices=METHODS, default="mean", help="how to remove a component (default mean)")
    return p


def check(args) -> None:
    C.check_common(args, "ablate", single=PROG)


def run(args) -> int:
    from icr_interp import load_checkpoint
    from icr_interp.analysis.causal import ablation
    from icr_interp.experiments import checkpoint_analysis
    from icr_interp.storage.atomic import write_json

    ck = load_checkpoint(args.checkpoint, device=args.device)
    batch, _ = checkpoint_analysis.probe_prompts(ck.task, args.n_prompts, args.seed, args.device)
    results = ablation.standard_ablations(ck.model, batch, args.method)
    print(f"{args.method}-ablation on {args.n_prompts} prompts "
          f"(base accuracy {results[0].base_accuracy:.3f}, loss {results[0].base_loss:.3f})")
    print(ablation.format_table(results))
    data = dict(checkpoint=str(args.checkpoint), method=args.method, n_prompts=args.n_prompts, seed=args.seed,
                base_accuracy=results[0].base_accuracy, base_loss=results[0].base_loss,
                results=[r.to_dict() for r in results])
    C.report_files([write_json(args.out / "ablation.json", checkpoint_analysis.json_safe(data))], args)
    return 0


def main(argv: list[str] | None = None) -> int:
    return C.probe_main(build_parser(), check, run, argv)


if __name__ == "__main__":
    C.exit_process(main())
