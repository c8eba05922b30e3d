"""The ``rgops`` command line.

The CLI owns output: it configures logging (rich) and progress bars, turns every
:class:`~rgops.errors.RgopsError` into a one-line reason on stderr and a non-zero exit, and
imports heavy libraries (torch, mlflow) only inside the command that needs them, so ``--help``
stays fast. Each command is one call into a library function.

Each area of the product adds its commands in its own section below.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from rgops.errors import RgopsError

app = typer.Typer(
    name="rgops",
    help="Radiogenomics MLOps for lung cancer: synthetic cohorts, ingest, validation, training, "
    "evaluation, registry and serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

log = logging.getLogger("rgops")

ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="params.yaml to read parameters from.")


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.INFO
    handler = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("rgops").setLevel(level)


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    _setup_logging(verbose)


def handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn an RgopsError into ``error: <reason>`` on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RgopsError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def progress():  # noqa: ANN201 - rich.progress.Progress, imported lazily
    """A rich progress bar for long work, writing to stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
        disable=not sys.stderr.isatty() and os.environ.get("RGOPS_PROGRESS") != "1",
    )


# --- data: synth, ingest ------------------------------------------------------------------------

# --- validation ----------------------------------------------------------------------------------

# --- training ------------------------------------------------------------------------------------

# --- evaluation ----------------------------------------------------------------------------------

# --- registry and flows --------------------------------------------------------------------------

TrackingOpt = typer.Option(None, "--tracking-uri", help="MLflow tracking/registry URI (default: "
                           "RGOPS_TRACKING_URI, MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db).")


@app.command("promote")
@handles_errors
def promote_cmd(
    approve: Optional[str] = typer.Option(None, "--approve", metavar="VERSION", help="Approve this version."),
    reject: Optional[str] = typer.Option(None, "--reject", metavar="VERSION", help="Reject this version."),
    name: str = typer.Option("rgops-cae", "--name", help="Registered model: rgops-cae or rgops-gan."),
    reviewer: Optional[str] = typer.Option(None, "--reviewer", help="Who decides (default: $RGOPS_ACTOR, $USER)."),
    comment: str = typer.Option("", "--comment", help="Why (kept on the version and in the history)."),
    tracking_uri: Optional[str] = TrackingOpt,
) -> None:
    """Approve or reject a registered version; approval moves @champion (the gates must have passed)."""
    from rgops.errors import ConfigError
    from rgops.registry import Decision, Registry, actor_name, kind_of

    if (approve is None) == (reject is None):
        raise ConfigError("give exactly one of --approve VERSION or --reject VERSION")
    kind_of(name)
    reg = Registry(tracking_uri)
    version = approve if approve is not None else reject
    previous = reg.decide(name, version, Decision(approve is not None, actor_name(reviewer), comment))
    if approve is not None:
        typer.echo(f"{name}@champion: {previous or 'none'} -> {version}")
    else:
        typer.echo(f"{name} version {version} rejected; @champion unchanged")


@app.command("rollback")
@handles_errors
def rollback_cmd(
    name: str = typer.Argument(..., help="Registered model: rgops-cae or rgops-gan."),
    reason: str = typer.Option("", "--reason", help="Why (kept in the history)."),
    actor: Optional[str] = typer.Option(None, "--by", help="Who rolls back (default: $RGOPS_ACTOR, $USER)."),
    tracking_uri: Optional[str] = TrackingOpt,
) -> None:
    """Move @champion back to the previous approved version (nothing is deleted)."""
    from rgops.registry import Registry

    old, new = Registry(tracking_uri).rollback(name, actor=actor, reason=reason)
    typer.echo(f"{name}@champion: {old} -> {new} (rolled back)")


@app.command("models")
@handles_errors
def models_cmd(
    name: Optional[str] = typer.Argument(None, help="One registered model (default: all rgops models)."),
    history: bool = typer.Option(False, "--history", help="Also show the history of decisions and alias moves."),
    tracking_uri: Optional[str] = TrackingOpt,
) -> None:
    """Versions, aliases, gates and approvals of the registered models, as a table."""
    from rich.console import Console
    from rich.table import Table

    from rgops.registry import KINDS, Registry, kind_of, model_name

    names = [name] if name else [model_name(k) for k in KINDS]
    for n in names:
        kind_of(n)
    reg = Registry(tracking_uri)
    console = Console(width=None if sys.stdout.isatty() else 220)  # piped output: do not wrap columns
    for n in names:
        table = Table(title=n)
        for col in ("version", "aliases", "decision", "by", "at", "gates", "metrics", "data", "created"):
            table.add_column(col)
        for v in reg.versions(n):
            t = v.tags
            metrics = ", ".join(f"{k}={x:.3g}" for k, x in sorted(v.metrics.items()))
            table.add_row(v.version, ",".join(v.aliases), t.get("decision", ""), t.get("approved_by", ""),
                          t.get("approved_at", ""), t.get("rgops.gates", "—"), metrics,
                          t.get("rgops.data_digest", "")[:12], v.created)
        console.print(table)
        if history:
            hist = Table(title=f"{n} history")
            for col in ("n", "at", "by", "action", "version", "alias", "previous", "reason"):
                hist.add_column(col)
            for e in reg.history(n):
                hist.add_row(str(e.n), e.at, e.by, e.action, e.version, e.alias or "", e.previous or "", e.reason)
            console.print(hist)


# --- serving -------------------------------------------------------------------------------------


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
