"""``python -m benchmarks [--quick] [--only NAME ...] [--no-write] [--list]``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback

from . import BENCHMARKS
from ._fixtures import Databases
from ._harness import BenchResult, Options
from ._report import machine, print_result, write_benchmarks_md


def _postgres_version(dbs: Databases) -> str | None:
    url = dbs.postgres_url()
    if url is None:
        return None
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("SHOW server_version").scalar())
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: fewest rounds and sizes; writes nothing"
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        choices=list(BENCHMARKS),
        help="run only this benchmark (repeatable)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not rewrite docs/*.md")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)

    if args.list:
        for name, (_, title) in BENCHMARKS.items():
            print(f"{name:12} {title}")
        return 0

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    write = not (args.no_write or args.quick)
    options = Options(quick=args.quick, write=write)
    selected = args.only or list(BENCHMARKS)
    order = [(name, title) for name, (_, title) in BENCHMARKS.items()]

    dbs = Databases()
    results: list[BenchResult] = []
    failed = []
    started = time.perf_counter()
    try:
        info = machine(_postgres_version(dbs))
        print(f"agent-session benchmarks{' (quick)' if args.quick else ''}: {', '.join(selected)}")
        print(
            f"{info['cpus']} CPUs, {info['python']}, {info['os']}, PostgreSQL {info['postgresql']}"
        )
        for name in selected:
            module_name, title = BENCHMARKS[name]
            bench_started = time.perf_counter()
            load_before = os.getloadavg()[0]
            try:
                module = importlib.import_module(f"{__package__}.{module_name}")
                result: BenchResult = module.run(options, dbs)
            except Exception as exc:
                traceback.print_exc()
                failed.append(name)
                result = BenchResult(name=name, title=title, target="", measured=f"error: {exc!r}")
            result.seconds = time.perf_counter() - bench_started
            result.judged = not options.quick
            result.load = (load_before, os.getloadavg()[0])
            print_result(result)
            results.append(result)
    finally:
        dbs.close()
    total = time.perf_counter() - started

    print(f"\nsummary ({total:.0f} s):")
    for result in results:
        print(f"  {result.verdict}")
    if write and not failed:
        path = write_benchmarks_md(results, info, order, total)
        print(f"wrote {path.relative_to(path.parent.parent)}")
    elif write:
        print("not writing docs: a benchmark failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
