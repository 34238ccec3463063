"""synthloop — turn a small labeled image set into a better classifier (DreamBooth + human review + honest evaluation).

Thin: each subcommand loads params.yaml and calls into tasks/ or flows/.

No flag repeats a params key: change params.yaml (or ``dvc exp run -S``/``--set`` on ``run``) instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

from tasks.params import STAGES, ParamsError, load_params
from tasks.stage import EXIT_WAITING, StageError, WaitingForReview, configure_logging, run_stage

log = logging.getLogger("synthloop")


def _cmd_run(args: argparse.Namespace) -> int:
    from flows.pipeline import synthloop_loop

    params = load_params()
    try:
        synthloop_loop(set_params=args.set or None, stages=args.stages or None)
    except Exception as err:  # noqa: BLE001 — the flow already logged the stage and cause; say how to resume
        log.error("the loop stopped: %s\n  fix the cause, then resume with `make run` (finished stages are not "
                  "re-run; inspect with `dvc status`).", err)
        return 1
    _print_summary(load_params() if args.set else params)
    return 0


def _print_summary(params) -> None:
    report = params.paths.reports / "report.md"
    lines = ["", "synthloop: loop finished."]
    if report.exists():
        lines.append(f"  report:   {report} (and report.html)")
    lines += [
        "  MLflow:   mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1   (or `make ui`)",
        "  Prefect:  prefect flow-run ls   /   prefect server start --host 127.0.0.1   (or `make ui`)",
        "  metrics:  dvc metrics show",
    ]
    print("\n".join(lines))
    headline = _headline(report)
    if headline:
        print("\n" + headline)


def _headline(report: Path) -> str:
    """The report's answer and its first two tables (arms × splits, paired difference), for the terminal."""
    if not report.exists():
        return ""
    lines = report.read_text(encoding="utf-8").splitlines()
    sections = [i for i, line in enumerate(lines) if line.startswith("## ")]
    end = sections[2] if len(sections) > 2 else len(lines)
    return "\n".join(line for line in lines[:end] if not line.startswith("Data: ")).strip()


def _cmd_stage(args: argparse.Namespace) -> int:
    try:
        outputs = run_stage(args.name, load_params())
    except WaitingForReview as err:
        log.warning("%s", err)
        return EXIT_WAITING
    print(json.dumps(getattr(outputs, "metrics", {}), indent=2, default=str))
    return 0


def _cmd_params(args: argparse.Namespace) -> int:
    """Update params.local.yaml when asked, then print the layers and what they change in params.yaml."""
    from tasks.overrides import read_layers, record_resolved, write_local

    if args.profile is not None or args.set or args.clear:
        write_local(Path.cwd(), profile=args.profile, set_items=args.set, clear=args.clear)
    layers, params = read_layers(Path.cwd()), record_resolved()
    base = load_params(layers=False).flat()
    changed = {k: v for k, v in params.flat().items() if base.get(k) != v}
    print(json.dumps({"layers": layers.describe(), "changed": changed}, indent=2, default=str))
    return 0


def _cmd_review(args: argparse.Namespace) -> int:
    from tasks.review.app import serve

    params = load_params()
    serve(params, host=params.review.host, port=params.review.port)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from flows.schedule import serve_loop

    serve_loop(load_params())
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    """Start the MLflow UI and a persistent Prefect server on 127.0.0.1 (Ctrl-C stops both)."""
    procs = [
        subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", "sqlite:///mlflow.db",
                          "--host", "127.0.0.1", "--port", str(args.mlflow_port)]),
        subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                          "--port", str(args.prefect_port)]),
    ]
    print(f"MLflow:  http://127.0.0.1:{args.mlflow_port}\nPrefect: http://127.0.0.1:{args.prefect_port}\n"
          f"(for flows to report to this server: export PREFECT_API_URL=http://127.0.0.1:{args.prefect_port}/api)")
    try:
        for p in procs:
            p.wait()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthloop", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the whole loop (Prefect flow over the DVC stages); re-runs only what changed")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="a params override for this run only (repeatable); params.yaml is not rewritten")
    p.add_argument("--stages", nargs="+", choices=STAGES, help="run only these stages (in DAG order)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("stage", help="run one stage in this process (same as `python -m tasks.<stage>`)")
    p.add_argument("name", choices=STAGES)
    p.set_defaults(func=_cmd_stage)

    p = sub.add_parser("params", help="show or change this checkout's params layers (params.local.yaml): a "
                       "profile and overrides over params.yaml, which is never rewritten")
    p.add_argument("--profile", metavar="NAME|FILE", help="use configs/NAME.yaml (or FILE) over params.yaml; "
                   "'none' drops it")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="keep an override (repeatable)")
    p.add_argument("--clear", action="store_true", help="drop the profile and every kept override first")
    p.set_defaults(func=_cmd_params)

    p = sub.add_parser("review", help="start the review web app on review.host:review.port (127.0.0.1)")
    p.set_defaults(func=_cmd_review)

    p = sub.add_parser("serve", help="serve the scheduled Prefect deployment of the loop (flow.serve)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("ui", help="start the MLflow UI and a Prefect server on 127.0.0.1")
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.add_argument("--prefect-port", type=int, default=4200)
    p.set_defaults(func=_cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        sys.exit(args.func(args))
    except (ParamsError, StageError) as err:
        log.error("%s", err)
        sys.exit(1)


if __name__ == "__main__":
    main()
