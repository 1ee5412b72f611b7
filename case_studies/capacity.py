"""How many facts fit: the capacity of each trained memory per size, against the associative-memory laws.

    python case_studies/capacity.py --out case_studies/results/capacity            # the 5-size sweep
    python case_studies/capacity.py --quick --out /tmp/capacity                     # 3 small sizes, minutes

For each memory (the pretrained memory; with --memories also the full IC-recall model, pretrained memory
plus fine-tuned attention) and each (d_model, neurons) size, the largest number of facts N recalled at
>= --target by doubling then bisection (icr_interp.experiments.capacity); the fit params = c N ln N with
a bootstrap 95% interval on c, beside the anchors (MLP memory m d ~ 0.35 N ln N; one-layer transformer
~0.15 facts per parameter) and the constructed memories (one neuron per fact).  Writes capacity.json
(rows with params and n_star, fit with constant, ci_low, ci_high) and capacity.png.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, out_dir, positive, save_figure, seed, setup_threads, write_json  # noqa: E402

from icr_interp.experiments.capacity import (MEMORIES, QUICK_SIZES, SIZES, capacity_sweep, plot_capacity,  # noqa: E402
                                             plot_probe_series)


def size(text: str) -> tuple[int, int]:
    """A size written ``D:M`` (d_model:neurons)."""
    try:
        d, m = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"a size is D:M (d_model:neurons), got {text!r}") from None
    return d, m


def main(argv=None) -> int:
    p = Parser(prog="capacity.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"the {len(QUICK_SIZES)} smallest sizes")
    p.add_argument("--sizes", type=size, nargs="+", default=None, metavar="D:M")
    p.add_argument("--memories", nargs="+", choices=MEMORIES, default=["pretrained"])
    p.add_argument("--target", type=float, default=0.99)
    p.add_argument("--pretrain-steps", type=positive, default=1500)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--probe-series", action="store_true",
                   help="instead: weight-only probes beside behaviour over the paper preset's fine-tuning")
    p.add_argument("--every", type=positive, default=20, help="--probe-series: steps between rows")
    p.add_argument("--threads", type=positive, default=None)
    p.add_argument("--out", default="case_studies/results/capacity")
    args = p.parse_args(argv)
    setup_threads(args.threads)
    out = out_dir(p, args.out)
    if args.probe_series:
        return probe_series_main(args, out)
    sizes = tuple(args.sizes or (QUICK_SIZES if args.quick else SIZES))
    t0 = time.perf_counter()
    try:
        result = capacity_sweep(sizes=sizes, memories=tuple(args.memories), target=args.target,
                                pretrain_steps=args.pretrain_steps, seed=args.seed).to_dict()
    except ValueError as e:
        p.error(str(e))
    result["wall_seconds"] = time.perf_counter() - t0
    write_json(out / "capacity.json", dict(args={k: v for k, v in vars(args).items()}, **result))
    save_figure(plot_capacity(result), out / "capacity.png")
    fit = result["fit"]
    shown = (f"params = {fit['constant']:.3g} N ln N (95% CI {fit['ci_low']:.3g}-{fit['ci_high']:.3g})"
             if fit["constant"] is not None else "none (no size reached the target)")
    print(f"fit: {shown}; anchor 0.35; {result['wall_seconds']:.0f} s")
    for row in result["rows"]:
        print(f"  {row['memory']:12s} d={row['d_model']:4d} m={row['neurons']:5d} params={row['params']:7d} "
              f"N*={row['n_star']}")
    return 0


def probe_series_main(args, out: Path) -> int:
    """The paper preset fine-tuned, its three weight-only probes logged beside behaviour."""
    from icr_interp.analysis.weights.weight_probes import probe_series
    from icr_interp.pipeline.config import RunConfig
    from icr_interp.pipeline.runner import build

    config = RunConfig.from_preset("paper", seed=args.seed)
    task, model = build(config)
    t0 = time.perf_counter()
    series = probe_series(model, task, every=args.every, config=config.train)
    write_json(out / "weight_probes.json", dict(args=vars(args), series=series, seconds=time.perf_counter() - t0))
    save_figure(plot_probe_series(series), out / "weight_probes.png")
    for row in series:
        print(f"step {row['step']:4d}: memory {row['memory']['accuracy']:.3f} (behaviour {row['behaviour_recall']:.3f}); "
              f"QK effect {row['qk']['pairwise_effect']:+.3f} (measured {row['measured_pairwise_effect']:+.3f}); "
              f"accuracy {row['accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    from icr_interp.plumbing import run_main

    sys.exit(run_main("capacity.py", main))
