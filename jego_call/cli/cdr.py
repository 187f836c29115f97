"""`jego cdr`: list call records (newest first) from the database `jego serve` writes, with each
call's quality score (MOS 1..4.5 of the ITU-T G.107 E-model, and its word good / fair / poor;
`-` when no leg reported). --json prints every field of the record (mos, r_factor, quality)."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from ..calllog import CallLog
from ..config import load_config
from ..db import open_database, sqlite_path


def add_parser(sub: Any) -> None:
    p = sub.add_parser("cdr", help="list call records")
    p.add_argument("--config", metavar="PATH")
    p.add_argument("--data-dir", help="override data.dir")
    p.add_argument("--limit", type=int, default=50, help="how many records (default 50)")
    p.add_argument("--phone", action="store_true", help="only calls to or from phone numbers")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=run)


def _ts(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def run(args: argparse.Namespace) -> int:
    overrides = {"data": {"dir": args.data_dir}} if args.data_dir else None
    cfg = load_config(args.config, overrides=overrides)
    path = sqlite_path(cfg)
    if not cfg.db.url and not path.exists():
        print(f"no call records yet ({path} does not exist)")
        return 0

    async def read() -> list[dict[str, Any]]:
        db = await open_database(cfg)
        try:
            return await CallLog(db).all(max(1, args.limit), phone_only=args.phone)
        finally:
            await db.close()

    rows = asyncio.run(read())
    if args.json:
        for r in rows:
            print(json.dumps(r, sort_keys=True))
        return 0
    print(f"{'started':19}  {'from':16} {'to':16} {'outcome':17} {'sip':>3} {'q850':>4} {'secs':>7} "
          f"{'cost':>10} {'mos':>4} {'quality':7} codec")
    for r in rows:
        mos = f"{r['mos']:.2f}" if r.get("mos") is not None else "-"
        print(f"{_ts(r['started_at']):19}  {r['caller'][:16]:16} {r['callee'][:16]:16} {r['outcome'][:17]:17} "
              f"{r['sip_code'] or '-':>3} {r['q850_cause'] if r['q850_cause'] is not None else '-':>4} "
              f"{r['duration_s']:7.1f} {r['cost_text'] or '-':>10} {mos:>4} {r.get('quality') or '-':7} "
              f"{r['codec'] or '-'}")
    return 0
