"""``python -m service``: run the REST service with uvicorn (and the connection limits of `service.connections`).
Every setting is a flag and a ``DETECT_*`` variable."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

from pydantic import ValidationError

from .settings import Settings


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _setting(location: tuple) -> str:
    """A setting as a user sets it: its option and its environment variable."""
    if not location:
        return "settings"
    name = str(location[0])
    return f"{_flag(name)} ({Settings.model_config['env_prefix']}{name.upper()})"


def _given(error: dict) -> str:
    """The rejected value, where the error is about one."""
    return f" (given: {error['input']!r})" if error.get("loc") and isinstance(error.get("input"), str) else ""


def _default_text(name: str) -> str:
    field = Settings.model_fields[name]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "default_text" in extra:
        return str(extra["default_text"])
    default = field.get_default(call_default_factory=True)
    if isinstance(default, list):
        return ",".join(map(str, default)) or "empty"
    return str(default)


def build_parser() -> argparse.ArgumentParser:
    """One flag per setting, documented with its environment variable and default."""
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve ONNX detection models over HTTP (native, DeepStack and KServe v2 APIs). "
        "Each flag overrides its DETECT_* environment variable.",
    )
    for name, field in Settings.model_fields.items():
        help_text = f"{field.description} (env DETECT_{name.upper()}; default: {_default_text(name)})"
        if field.annotation is bool:
            parser.add_argument(
                _flag(name), action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(_flag(name), metavar=name.upper(), default=argparse.SUPPRESS, help=help_text)
    return parser


def load_settings(argv: list[str] | None = None) -> Settings:
    """Settings from the environment, overridden by the flags; exits with the reasons when they are invalid."""
    parser = build_parser()
    overrides: dict[str, Any] = vars(parser.parse_args(argv))
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problems = "\n".join(f"  {_setting(item['loc'])}: {item['msg']}{_given(item)}" for item in error.errors())
        parser.exit(2, f"{parser.prog}: invalid settings:\n{problems}\n")


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(argv)
    # Imported once the settings are valid, so that --help and bad settings answer without loading the app.
    import uvicorn

    from .app import create_app
    from .connections import ConnectionLimits, GuardedHttpProtocol
    from .logs import configure_logging

    configure_logging(settings.log_format)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        http=functools.partial(GuardedHttpProtocol, limits=ConnectionLimits.from_settings(settings)),
        ws="none",  # no WebSocket routes: an upgrade request is an ordinary request, under the same limits
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.graceful_timeout_s,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
