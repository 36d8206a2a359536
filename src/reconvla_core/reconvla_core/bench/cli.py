"""`reconvla bench infer|ros|train|data|all`: wires the benchmark modules into the CLI."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BENCHMARKS: dict[str, str] = {
    "infer": "reconvla_core.bench.infer",  # decoding latency vs a naive generate() baseline
    "ros": "reconvla_core.bench.ros",  # ROS-layer overhead, missed control ticks, memory slope
    "train": "reconvla_core.bench.train",  # step time with and without the reconstruction branch
    "data": "reconvla_core.bench.data",  # dataset build speed, loader wait share
}


def _available() -> dict[str, Any]:
    modules = {}
    for name, module_name in BENCHMARKS.items():
        try:
            modules[name] = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if not error.name or not module_name.startswith(error.name):
                raise
    return modules


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks that print JSON (never pass/fail on time)")
    bench_sub = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    modules = _available()
    for name, module in modules.items():
        parser = bench_sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else None)
        module.add_arguments(parser)
        parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        parser.set_defaults(func=lambda args, module=module: _run_one(module, args))
    every = bench_sub.add_parser("all", help="run every benchmark with its defaults; write JSON + markdown table")
    every.add_argument("--out", type=Path, default=Path("runs/bench"), help="directory for bench.json and bench.md")
    every.add_argument("--quick", action="store_true", help="short durations (smoke run; figures are noisier)")
    every.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    every.set_defaults(func=_run_all)


def _run_one(module: Any, args: argparse.Namespace) -> int:
    from reconvla_core.cli.main import emit_result

    emit_result(module.run(args), args.json)
    return 0


def machine_description() -> dict[str, Any]:
    """Where a figure came from: CPU model, core count, torch build, accelerator if any."""
    import os

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        info["cpu"] = platform.processor()
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def _defaults(module: Any, quick: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    args = parser.parse_args([])
    args.json = True
    if quick and hasattr(module, "QUICK_OVERRIDES"):
        for key, value in module.QUICK_OVERRIDES.items():
            setattr(args, key, value)
    return args


def _run_all(args: argparse.Namespace) -> int:
    from reconvla_core.cli.main import emit_result

    results: dict[str, Any] = {}
    started = time.time()
    for name, module in _available().items():
        logger.info("bench %s ...", name)
        t0 = time.time()
        try:
            results[name] = module.run(_defaults(module, args.quick))
        except Exception as error:  # one failing benchmark must not hide the others' figures
            logger.exception("bench %s failed", name)
            results[name] = {"error": f"{type(error).__name__}: {error}"}
        results[name]["wall_s"] = round(time.time() - t0, 1)
    report = {"machine": machine_description(), "quick": args.quick,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "bench.md").write_text(markdown_table(report))
    report["files"] = {"json": str(args.out / "bench.json"), "markdown": str(args.out / "bench.md")}
    emit_result(report, args.json)
    return 0


def markdown_table(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        f"Measured {report['date']} on {machine.get('cpu', '?')} ({machine.get('cpu_count')} cores)"
        + (f", GPU {machine['gpu']}" if machine.get("gpu") else ", no GPU")
        + f", torch {machine.get('torch', '?')}" + (" (quick run)" if report.get("quick") else "") + ".",
        "",
        "| benchmark | metric | value |",
        "|---|---|---|",
    ]
    for name, result in report["results"].items():
        for key, value in result.items():
            if isinstance(value, (dict, list)):
                value = json.dumps(value)
            lines.append(f"| {name} | {key} | {value} |")
    return "\n".join(lines) + "\n"
