"""Corrections by hand: ``shoesearch override IMAGE_ID --keep|--drop|--withdraw --reason TEXT [--who NAME]``.

Runs on the data home itself (no API, so no ``api.write_token``): whoever may write the home may correct it.
"""

from __future__ import annotations

import getpass


def register(sub) -> None:
    p = sub.add_parser("override", help="correct a photo's denoise decision by hand (the next train and index use it)")
    p.add_argument("image_id", help="the photo, e.g. 'jd:100012345#3' (image_id in images_current)")
    decision = p.add_mutually_exclusive_group(required=True)
    decision.add_argument("--keep", dest="decision", action="store_const", const="keep",
                          help="keep the photo although the rule dropped it")
    decision.add_argument("--drop", dest="decision", action="store_const", const="drop",
                          help="drop the photo although the rule kept it")
    decision.add_argument("--withdraw", dest="decision", action="store_const", const="withdraw",
                          help="withdraw the photo's correction: the rule decides again")
    p.add_argument("--reason", required=True, help="why, in a few words (recorded with the correction)")
    p.add_argument("--who", help="who decided (default: the user running the command)")
    p.set_defaults(func=cmd_override)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container): say so rather than guess
        return "unknown user"


def cmd_override(args, settings) -> int:
    from warehouse import open_warehouse
    from warehouse.overrides import record_override, withdraw_override

    who = args.who if args.who is not None else _user()
    if args.decision == "withdraw":
        run_id = withdraw_override(settings, args.image_id, who, args.reason)
    else:
        run_id = record_override(settings, args.image_id, args.decision == "keep", who, args.reason)
    wh = open_warehouse(settings)
    row = wh.query("""SELECT r.message, o.rule_kept FROM runs r JOIN denoise_overrides o ON o.run_id = r.run_id
                      WHERE r.run_id = ?""", [run_id]).to_pylist()[0]
    rule = {True: "kept", False: "dropped", None: "not judged yet"}[row["rule_kept"]]
    print(f"{run_id}: {row['message']} (the rule: {rule})")
    print("the next `shoesearch train` and `shoesearch index` use it")
    return 0
