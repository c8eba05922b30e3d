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


@app.command("ingest")
@handles_errors
def ingest_cmd(
    cohort: Path = typer.Argument(..., help="Cohort folder (ct/, genes.tsv, clinical.csv)."),
    out: Path = typer.Argument(..., help="Datasets folder to write (replaced when complete)."),
    params: Path = ParamsOpt,
    patch_size: Optional[int] = typer.Option(None, "--patch-size", help="Override ingest.patch_size (64, 128)."),
) -> None:
    """De-identify a cohort and write the datasets folder (patches, genes, manifest, ...)."""
    import dataclasses

    from rgops.config import load_params
    from rgops.data.ingest import IngestConfig, ingest_cohort

    config = IngestConfig.from_params(load_params(params))
    if patch_size is not None:
        config = dataclasses.replace(config, patch_size=patch_size)
    with progress() as bar:
        task = bar.add_task("ingest", total=None)
        report = ingest_cohort(cohort, out, config,
                               progress=lambda done, total: bar.update(task, completed=done, total=total))
    skipped = ", ".join(f"{k} {n}" for k, n in report.skipped_counts.items()) or "none"
    typer.echo(
        f"ingested {report.ingested}/{report.patients_seen} patients into {out} "
        f"(train {report.splits['train']}, val {report.splits['val']}, test {report.splits['test']}; "
        f"{report.n_genes} genes; S={report.patch_size}; skipped: {skipped}) in {report.seconds:.1f}s"
    )

# --- validation ----------------------------------------------------------------------------------

# --- training ------------------------------------------------------------------------------------

# --- evaluation ----------------------------------------------------------------------------------

# --- registry and flows --------------------------------------------------------------------------

# --- serving -------------------------------------------------------------------------------------


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
