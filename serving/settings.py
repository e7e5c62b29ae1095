"""Triton's log and trace settings (`/v2/logging`, `/v2/trace/setting`), as the node has them.

Log settings are real: the verbosity, the levels and the format change the node's own log lines
(verbose level 0 is INFO, 1 and above DEBUG). The node logs to stderr only, so its log file stays
Triton's empty value. It has no tracing: the trace settings answer Triton 24.10's defaults and take
any update that keeps tracing off; one that would turn it on is refused, saying so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from tritonflow.serving.errors import InvalidSetting

Log = dict[str, bool | int | str]
Trace = dict[str, list[str]]

LOGGER = "tritonflow"  # NOTE: the parent of every tritonflow.* logger: verbosity applies to them all
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # the node's own: Triton's "default"
FORMATS = {
    "default": logging.Formatter(LOG_FORMAT),
    "ISO8601": logging.Formatter(
        "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
    ),
}
FORMATS["ISO8601"].converter = time.gmtime
LOG_DEFAULTS: Log = {
    "log_file": "",
    "log_info": True,
    "log_warning": True,
    "log_error": True,
    "log_verbose_level": 0,
    "log_format": "default",
}
# Triton 24.10's answer to GET /v2/trace/setting (tests/triton/test_triton_settings.py checks it).
TRACE_DEFAULTS: Trace = {
    "trace_level": ["OFF"],
    "trace_rate": ["1000"],
    "trace_count": ["-1"],
    "log_frequency": ["0"],
    "trace_file": [""],
    "trace_mode": ["triton"],
}
TRACE_LEVELS = ("OFF", "TIMESTAMPS", "TENSORS")
NO_TRACING = "this server has no tracing"


class _Levels(logging.Filter):
    """Passes a record when its level is switched on (log_info, log_warning, log_error)."""

    def __init__(self, settings: Log) -> None:
        super().__init__()
        self.settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return bool(self.settings["log_error"])
        if record.levelno >= logging.WARNING:
            return bool(self.settings["log_warning"])
        if record.levelno >= logging.INFO:
            return bool(self.settings["log_info"])
        return True  # NOTE: debug lines reach a handler only when the verbose level lets them


class LogSettings:
    """The node's log settings, applied to the handlers of the root logger (the node's stderr)."""

    def __init__(self) -> None:
        self._settings: Log = dict(LOG_DEFAULTS)
        self._filter = _Levels(self._settings)

    def get(self) -> Log:
        return dict(self._settings)

    def update(self, update: Mapping[str, Any]) -> Log:
        """Check every value first, then apply them all: a refused update changes nothing."""
        for key, value in update.items():
            _check_log(key, value)
        self._settings.update(update)
        logging.getLogger(LOGGER).setLevel(
            logging.DEBUG if self._settings["log_verbose_level"] else logging.INFO
        )
        for handler in logging.getLogger().handlers:
            if self._filter not in handler.filters:
                handler.addFilter(self._filter)
            handler.setFormatter(FORMATS[str(self._settings["log_format"])])
        return self.get()


def _check_log(key: str, value: Any) -> None:
    if key not in LOG_DEFAULTS:
        raise InvalidSetting("log", key, value, f"use one of {', '.join(LOG_DEFAULTS)}")
    if key == "log_file":
        if value != "":
            raise InvalidSetting("log", key, value, "the node logs to stderr: redirect it to write a file")
    elif key == "log_verbose_level":
        if type(value) is not int or value < 0:
            raise InvalidSetting("log", key, value, "expected an integer >= 0")
    elif key == "log_format":
        if value not in FORMATS:
            raise InvalidSetting("log", key, value, f"expected one of {', '.join(FORMATS)}")
    elif not isinstance(value, bool):
        raise InvalidSetting("log", key, value, "expected true or false")


class TraceSettings:
    """The global trace settings and each model's own; a model's unset keys follow the global ones."""

    def __init__(self) -> None:
        self._global: Trace = {key: list(value) for key, value in TRACE_DEFAULTS.items()}
        self._models: dict[str, Trace] = {}

    def get(self, model: str | None) -> Trace:
        own = self._models.get(model, {}) if model is not None else {}
        return {key: list(own.get(key, value)) for key, value in self._global.items()}

    def update(self, model: str | None, update: Mapping[str, list[str] | None]) -> Trace:
        """None clears a key: back to the default (global) or to the global value (a model's)."""
        for key, value in update.items():
            _check_trace(key, value, self.get(model))
        for key, value in update.items():
            if model is not None:
                own = self._models.setdefault(model, {})
                if value is None:
                    own.pop(key, None)
                else:
                    own[key] = list(value)
            else:
                self._global[key] = list(TRACE_DEFAULTS[key] if value is None else value)
        return self.get(model)


def _check_trace(key: str, value: list[str] | None, current: Trace) -> None:
    if key not in TRACE_DEFAULTS:
        raise InvalidSetting("trace", key, value, f"use one of {', '.join(TRACE_DEFAULTS)}")
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidSetting("trace", key, value, "expected a string (trace_level: a list of strings)")
    if key == "trace_level":
        unknown = [v for v in value if v not in TRACE_LEVELS]
        if unknown or not value:
            raise InvalidSetting("trace", key, value, f"expected some of {', '.join(TRACE_LEVELS)}")
        if set(value) != {"OFF"}:
            raise InvalidSetting("trace", key, value, f"{NO_TRACING}: keep it OFF")
        return
    if len(value) != 1:
        raise InvalidSetting("trace", key, value, "expected one value")
    if key == "trace_file" and value != current[key]:
        raise InvalidSetting("trace", key, value[0], f"{NO_TRACING}, so it writes no trace file")
    if key == "trace_mode" and value[0] != "triton":
        raise InvalidSetting("trace", key, value[0], f"{NO_TRACING}: only 'triton' is accepted")
    if key in ("trace_rate", "trace_count", "log_frequency"):
        lowest = -1 if key == "trace_count" else 0
        if not value[0].lstrip("-").isdigit() or int(value[0]) < lowest:
            raise InvalidSetting("trace", key, value[0], f"expected an integer >= {lowest}")


def trace_from_http(body: Mapping[str, Any]) -> dict[str, list[str] | None]:
    """An HTTP update's values as the plane takes them: Triton's HTTP sends one string, a list, or null."""
    return {key: [value] if isinstance(value, str) else value for key, value in body.items()}


def trace_to_http(settings: Trace) -> dict[str, list[str] | str]:
    """Trace settings as Triton's HTTP answers them: trace_level a list, every other one a string."""
    return {key: value if key == "trace_level" else value[0] for key, value in settings.items()}
