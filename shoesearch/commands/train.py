"""Train and evaluate commands: ``shoesearch train`` (the Prefect flow) and ``shoesearch evaluate``."""

from __future__ import annotations

from core.errors import ShoesearchError

FORMAT_HELP = "the evaluation as a report (table, default) or its rows (one per variant) as csv / json"


def register(sub) -> None:
    p = sub.add_parser("train", help="split -> k-means -> train NetVLAD -> evaluate (Prefect flow `train`)")
    p.add_argument("--backbone", help="vgg16 | resnet50 | efficientnet_lite0/1/2 | timm/<model> (default: train.backbone)")
    p.add_argument("--epochs", type=int, help="maximum epochs (default: train.epochs)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: train.device")
    p.add_argument("--photos", choices=["auto", "raw", "denoised"], default="auto",
                   help="train on photos denoise kept, or on all photos (auto: denoised when a denoise run exists)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table", help=FORMAT_HELP)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="Recall@1/5/10 + mAP ablation of a trained model on the test split")
    p.add_argument("--model", help="trained model id (default: the newest netvlad model)")
    p.add_argument("--compare", action="append", default=[], metavar="MODEL_ID",
                   help="another model trained on the same split (e.g. on raw photos); repeatable")
    p.add_argument("--protocol", choices=["all", "consumer-to-shop"], default="all")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table", help=FORMAT_HELP)
    p.set_defaults(func=cmd_evaluate)


def cmd_train(args, settings) -> int:
    from flows.train import train_flow
    from shoesearch.runtime import run_flow

    options = {"train.backbone": args.backbone, "train.epochs": args.epochs, "train.device": args.device}
    for key, value in options.items():  # the command's own options are --set shorthands
        if value is not None:
            settings.set(key, value)
    result = run_flow(train_flow, settings, args.debug, photos=args.photos)
    _print_report(settings, result["evaluate"], args.format)
    print(f"model {result['model_id']} (train run {result['train']})", file=_notes(args.format))
    return 0


def cmd_evaluate(args, settings) -> int:
    from tasks.evaluate import evaluate
    from warehouse import open_warehouse
    from warehouse.models_table import newest_model

    model_id = args.model
    if not model_id:
        newest = newest_model(open_warehouse(settings))
        if newest is None:
            raise ShoesearchError("no trained model yet: run `shoesearch train` first")
        model_id = newest["model_id"]
    run_id = evaluate(settings, model_id, protocol=args.protocol, compare=args.compare)
    _print_report(settings, run_id, args.format)
    return 0


def _notes(fmt: str):
    """Where the lines around the rows go: stdout with the report, stderr when stdout carries csv / json."""
    import sys

    return sys.stdout if fmt == "table" else sys.stderr


def _print_report(settings, run_id: str, fmt: str = "table") -> None:
    from shoesearch.output import format_table
    from warehouse import open_warehouse

    path = settings.reports_dir / f"{run_id}.md"
    if fmt == "table":
        print(path.read_text())
    else:
        rows = open_warehouse(settings).query("SELECT * FROM evaluations WHERE run_id = ?", [run_id])
        print(format_table(rows, fmt))
    print(f"report: {path} (+ .png)", file=_notes(fmt))
