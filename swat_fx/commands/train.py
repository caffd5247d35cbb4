"""`swat-fx train`: train on digits densely and with SWAT, and compare (the main job)."""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from swat_fx import models
from swat_fx.config import ALGORITHMS, GRANULARITIES, SwatConfig
from swat_fx.data import load_digits
from swat_fx.introspect import format_layers, layers
from swat_fx.training import train
from swat_fx.transform import transform


def run(args: argparse.Namespace) -> int:
    config = SwatConfig(sparsity=args.sparsity, algorithm=args.algorithm, granularity=args.granularity,
                        period=args.period)
    data = load_digits(seed=args.seed)
    print(f"digits: {len(data.y_train)} train / {len(data.y_test)} test images, model {args.model}, "
          f"{args.epochs} epochs, {torch.get_num_threads()} threads")
    runs = {}
    for label, swat_config in (("dense", None), (f"{config.name} {config.sparsity:.0%}", config)):
        if label == "dense" and args.no_dense:
            continue
        torch.manual_seed(args.seed)
        model = models.build(args.model, num_classes=data.num_classes)
        if swat_config is not None:
            model = transform(model, config=swat_config)
        start = time.perf_counter()
        result = train(model, data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                       progress=not args.quiet, desc=label)
        runs[label] = (model, result, time.perf_counter() - start)
    print()
    for label, (_, result, seconds) in runs.items():
        print(f"{label:<14} test accuracy {result.accuracy:6.2%}   ({seconds:.1f} s)")
    swat_model = runs[next(reversed(runs))][0]
    print(f"\nper-layer sparsity of the {config.name} model (kept = density achieved at the last step):")
    print(format_layers(layers(swat_model, [data.x_test[:2]])))
    return 0


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "train", help="train a model on digits densely and with SWAT, and compare",
        description="Train on scikit-learn's digits (no download), densely and with SWAT; print both "
                    "accuracies and the per-layer sparsity achieved.")
    parser.add_argument("--model", default="small_cnn", choices=["small_cnn", "mlp"])
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--algorithm", default="swat", choices=sorted(ALGORITHMS))
    parser.add_argument("--granularity", default="nchw", choices=GRANULARITIES)
    parser.add_argument("--period", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-dense", action="store_true", help="skip the dense baseline")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)
