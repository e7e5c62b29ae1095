"""The `tritonflow` command: a dispatcher. Each subcommand lives with the layer it drives and is
imported only when used, so `tritonflow models` does not pay for the serving stack."""

from __future__ import annotations

import argparse
import importlib
import sys

from tritonflow import __version__
from tritonflow.lineage.errors import TritonflowError

# name -> (module exposing add_arguments(parser) and main(args) -> int, one-line help)
COMMANDS = {
    "quickstart": (
        "tritonflow.quickstart",
        "the whole loop in a minute: flow, deploy, serve, request, lineage",
    ),
    "init": ("tritonflow.init_command", "copy the starter pack (flow, client, README) into a folder"),
    "serve": ("tritonflow.serving.server", "serve a model repository over Triton's HTTP protocol"),
    "models": ("tritonflow.lineage.models_command", "list the models, versions and deployment IDs"),
    "gc": ("tritonflow.lineage.gc_command", "remove what killed deploys left in a repository"),
    "lineage": (
        "tritonflow.lineage_command",
        "trace a deployment ID, a saved response or a run to its lineage",
    ),
    "check-config": ("tritonflow.serving.check_command", "validate config.pbtxt files (Triton schema + FIL)"),
    "triton-backends": ("tritonflow.serving.triton_backends_command", "a backend dir for Triton without FIL"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tritonflow", description="Metaflow runs -> Triton model repositories -> serving -> lineage"
    )
    parser.add_argument("--version", action="version", version=f"tritonflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if only == name:  # NOTE: import only the chosen command's layer
            module = importlib.import_module(module_name)
            module.add_arguments(command)
            command.set_defaults(handler=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(chosen if chosen in COMMANDS else None).parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except TritonflowError as exc:
        print(f"tritonflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
