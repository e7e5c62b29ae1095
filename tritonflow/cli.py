"""The `tritonflow` command: a dispatcher. Each subcommand lives with the layer it drives and is
imported only when used, so `tritonflow models` does not pay for the serving stack.

Every command behaves in a pipe: once the reader is gone (`tritonflow models R | head -1`) it stops
without a word and exits 141, as a Unix tool killed by SIGPIPE does. SIGPIPE itself stays ignored
(Python's default), so a serving node whose log pipe closes keeps serving.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import signal
import sys

from tritonflow import __version__
from tritonflow.lineage.errors import TritonflowError

# name -> (module exposing add_arguments(parser) and main(args) -> int, or "module:object" for an
# object of the module that does, one-line help)
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
    "releases": (
        "tritonflow.releases_command:releases",
        "a model's versions, which one is champion, and the history of release decisions",
    ),
    "promote": ("tritonflow.releases_command:promote", "make MODEL:VERSION the champion, with a reason"),
    "rollback": ("tritonflow.releases_command:rollback", "make the previous champion champion again"),
    "canary": (
        "tritonflow.releases_command:canary",
        "send a share of unversioned requests to MODEL:VERSION (tritonflow serve only)",
    ),
    "shadow": (
        "tritonflow.releases_command:shadow",
        "run a copy of the traffic on MODEL:VERSION, off the response path (tritonflow serve only)",
    ),
    "captures": (
        "tritonflow.lineage.captures_command",
        "what a node captured: files and rows per model and hour",
    ),
    "lookup": (
        "tritonflow.lookup_command",
        "one request's captured inputs, outputs and stamp, with its deployment's lineage",
    ),
    "drift": (
        "tritonflow.lineage.drift_command",
        "a version's captured traffic against its training data profile; exit 1 on drift",
    ),
    "check-config": ("tritonflow.serving.check_command", "validate config.pbtxt files (Triton schema + FIL)"),
    "triton-backends": ("tritonflow.serving.triton_backends_command", "a backend dir for Triton without FIL"),
    "kube": ("tritonflow.serving.kubernetes.command", "Kubernetes/KServe manifests serving a model from S3"),
}
PIPE_CLOSED = 128 + signal.SIGPIPE  # 141: the exit status of a process killed by SIGPIPE


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tritonflow", description="Metaflow runs -> Triton model repositories -> serving -> lineage"
    )
    parser.add_argument("--version", action="version", version=f"tritonflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if only == name:  # NOTE: import only the chosen command's layer
            path, _, attribute = module_name.partition(":")
            module = importlib.import_module(path)
            module = getattr(module, attribute) if attribute else module
            module.add_arguments(command)
            command.set_defaults(handler=module.main, command_parser=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _run(sys.argv[1:] if argv is None else argv)
        finally:
            # NOTE: output still buffered meets a closed pipe here, where it is caught, not at exit
            sys.stdout.flush()
            sys.stderr.flush()
    except BrokenPipeError:
        # NOTE: the reader has what it wanted; later writes (and the flush at exit) go nowhere
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            os.dup2(devnull, stream.fileno())
        return PIPE_CLOSED


def _run(argv: list[str]) -> int:
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in COMMANDS else None)
    if (
        chosen is not None
        and chosen not in COMMANDS
        and (close := difflib.get_close_matches(chosen, COMMANDS))
    ):
        parser.error(f"unknown command {chosen!r}: did you mean {close[0]!r}? (tritonflow --help lists them)")
    args, extra = parser.parse_known_args(argv)
    if extra:
        args.command_parser.error(_unrecognized(extra, args.command_parser))
    try:
        return int(args.handler(args) or 0)
    except TritonflowError as exc:
        print(f"tritonflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _unrecognized(extra: list[str], parser: argparse.ArgumentParser) -> str:
    """argparse's own error for unknown arguments, plus the option each mistyped one is closest to."""
    options = [option for action in parser._actions for option in action.option_strings]
    words = [word.partition("=")[0] for word in extra if word.startswith("--")]
    hints = [
        f"{word}: did you mean {close[0]}?"
        for word in words
        if (close := difflib.get_close_matches(word, options, n=1))
    ]
    return f"unrecognized arguments: {' '.join(extra)}" + (f" ({'; '.join(hints)})" if hints else "")
