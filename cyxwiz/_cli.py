"""Shared plumbing for every ``cyxwiz`` command group.

Every group is a ``typer.Typer`` built by :func:`new_app`. Errors from the one hierarchy become a single
``error: ...`` line on stderr and a non-zero exit; anything unexpected becomes one line too, with the
traceback only when ``CYXWIZ_DEBUG=1`` (a user never sees a traceback by default).
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

import typer
from typer import _click as click  # typer >= 0.20 vendors click; its types are the ones in play
from typer.core import TyperGroup

from cyxwiz.errors import AuthenticationError, AuthorizationError, CyxwizError, NotFoundError

#: Exit codes: 1 is left to "checked and found bad" answers (e.g. ``verify`` finding a broken chain).
EXIT_ERROR = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_INTERNAL = 70


def exit_code_for(exc: CyxwizError) -> int:
    if isinstance(exc, AuthenticationError | AuthorizationError):
        return EXIT_AUTH
    if isinstance(exc, NotFoundError):
        return EXIT_NOT_FOUND
    return EXIT_ERROR


class CliError(click.ClickException):
    """A refusal shown as one line."""

    def __init__(self, message: str, *, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.message}", err=True, file=file)


class CyxwizGroup(TyperGroup):
    """Root group that turns library errors into one-line refusals."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CyxwizError as exc:
            # Printed here rather than raised as ClickException: typer would wrap it in a rich panel,
            # and scripts want one greppable line.
            click.echo(f"error: {exc}", err=True)
            raise typer.Exit(exit_code_for(exc)) from None
        except (
            click.ClickException,
            typer.Exit,
            typer.Abort,
            SystemExit,
            KeyboardInterrupt,
        ):
            raise
        except Exception as exc:
            if os.environ.get("CYXWIZ_DEBUG") == "1":
                raise
            click.echo(
                f"error: internal error ({type(exc).__name__}): {exc}; set CYXWIZ_DEBUG=1 for details",
                err=True,
            )
            raise typer.Exit(EXIT_INTERNAL) from None


def new_app(*, name: str | None = None, help: str) -> typer.Typer:
    """A command group with the project's conventions (no completion noise, rich help, -h works)."""
    return typer.Typer(
        name=name,
        help=help,
        cls=CyxwizGroup,
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode="rich",
        context_settings={"help_option_names": ["-h", "--help"]},
    )


def echo_err(message: str) -> None:
    print(message, file=sys.stderr)
