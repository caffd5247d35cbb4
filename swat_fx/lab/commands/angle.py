"""`swat-fx angle`: the sparsification angle of random high-dimensional vectors (Fig. 9a-d)."""

from __future__ import annotations

import argparse
from typing import Any

from swat_fx.analysis import angle_study
from swat_fx.lab import cli_options, experiments


@cli_options.interruptible
def run(args: argparse.Namespace) -> int:
    study = experiments.angle(dim=args.dim, trials=args.trials, percents=args.percents, deltas=args.deltas,
                              seed=args.seed, csv=args.csv, png=args.plot)
    random = study.random_angles
    print(f"{study.trials} random {study.dim}-d vectors; two independent ones are {random.mean():.1f}° "
          f"± {random.std():.1f}° apart")
    rows = [{"top-k": f"{p:g}%", "angle": f"{a.mean():.1f}° ± {a.std():.1f}°"} for p, a in study.distributions.items()]
    print(cli_options.format_rows(rows, ("top-k", "angle")))
    rows = [{"delta": f"{d:g}°", "top-k needed": f"{m:.1f}% ± {s:.1f}%"}
            for d, m, s in zip(study.deltas, study.needed_mean, study.needed_std, strict=True)]
    print(cli_options.format_rows(rows, ("delta", "top-k needed")))
    cli_options.print_outputs(args)
    return 0


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "angle", help="sparsification angle of random vectors vs Top-K percentage",
        description="Sparsify random standard-normal vectors at every Top-K percentage and measure the angle "
                    "to the original: its distribution, the Top-K needed to stay within δ degrees, and the "
                    "angle between two random vectors for comparison.")
    parser.add_argument("--dim", type=int, default=cli_options.default(angle_study, "dim"),
                        help="vector size (default: %(default)s)")
    parser.add_argument("--trials", type=int, default=cli_options.default(angle_study, "trials"),
                        help="random vectors (default: %(default)s)")
    parser.add_argument("--percents", nargs="+", type=float, default=list(cli_options.default(angle_study, "percents")),
                        help="Top-K %% of the distributions (default: %(default)s)")
    parser.add_argument("--deltas", nargs="+", type=float, help="angles δ in degrees (default: %(default)s)",
                        default=list(cli_options.default(angle_study, "deltas")))
    parser.add_argument("--seed", type=int, default=0)
    cli_options.add_output_options(parser, "the study (panels curve, delta, histogram)")
    parser.set_defaults(run=run)
