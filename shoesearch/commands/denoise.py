"""Embed and denoise commands: ``shoesearch embed``, ``shoesearch denoise``."""

from __future__ import annotations

import json

from core.errors import ShoesearchError


def register(sub) -> None:
    p = sub.add_parser("embed", help="embed the current photos with an ImageNet backbone (incremental)")
    p.add_argument("--backbone", help="vgg16 | resnet50 | efficientnet_lite0/1/2 | timm/<model> (default: embed.backbone)")
    p.add_argument("--model", help="a model spec instead: imagenet:<backbone> or a trained model id")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("denoise", help="drop photos far from their product's first photo (runs the denoise flow)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float, help="absolute distance in [0, 2] (default: denoise.threshold)")
    group.add_argument("--drop-rate", type=float, help="calibrate the threshold to drop this fraction, e.g. 0.2")
    p.add_argument("--backbone", help="ImageNet backbone (default: embed.backbone)")
    p.set_defaults(func=cmd_denoise)


def cmd_embed(args, settings) -> int:
    from embedding.vectors import embed_images
    from warehouse import open_warehouse

    if args.backbone and args.model:
        raise ShoesearchError("give --backbone or --model, not both")
    spec = args.model or (f"imagenet:{args.backbone}" if args.backbone else None)
    run_id = embed_images(settings, spec)
    message = open_warehouse(settings).query("SELECT message FROM runs WHERE run_id = ?", [run_id]).to_pylist()
    print(f"{run_id}: {message[0]['message'] if message else ''}")
    return 0


def cmd_denoise(args, settings) -> int:
    from flows.denoise import denoise_flow
    from shoesearch.runtime import run_flow
    from tasks.denoise import choose_threshold
    from warehouse import open_warehouse

    choose_threshold(settings, args.threshold, args.drop_rate)  # bad values fail before Prefect starts
    run_id = run_flow(denoise_flow, settings, args.debug, threshold=args.threshold, drop_rate=args.drop_rate,
                      backbone=args.backbone)
    wh = open_warehouse(settings)
    row = wh.query("SELECT message, parameters FROM runs WHERE run_id = ?", [run_id]).to_pylist()[0]
    first = json.loads(row["parameters"] or "{}").get("first_run_id")
    if first:  # the second pass ran after the first
        first_message = wh.query("SELECT message FROM runs WHERE run_id = ?", [first]).column(0)[0].as_py()
        print(f"{first}: {first_message}")
    print(f"{run_id}: {row['message']}")
    print(f"report: {settings.reports_dir / (first or run_id)}")  # tasks.denoise_report.report_folder
    return 0

