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
    from rgops.data.dicom import quiet_value_warnings

    quiet_value_warnings()  # raw cohort headers are not de-identified yet: no value of theirs in a log


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    _setup_logging(verbose)
    # Prefect's ephemeral API gives itself 20 s to start; a busy 2-core machine needs more.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # No telemetry from a hospital network, and no per-download progress bars in the logs.
    for var, value in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("GX_ANALYTICS_ENABLED", "false"),
                       ("BENTOML_DO_NOT_TRACK", "true"), ("DO_NOT_TRACK", "1"),
                       ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")):
        os.environ.setdefault(var, value)


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


@app.command("synth")
@handles_errors
def synth_cmd(
    out: Path = typer.Argument(..., help="Cohort folder to write (must be empty or new)."),
    patients: Optional[int] = typer.Option(None, "--patients", help="Override synth.n_patients."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override synth.seed."),
    genes: Optional[int] = typer.Option(None, "--genes", help="Override synth.n_genes."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Override synth.image_size (rows = cols)."),
    truth_out: Optional[Path] = typer.Option(None, "--truth-out", help="Ground-truth folder (default: OUT-truth beside OUT)."),
    params: Optional[Path] = typer.Option(
        None, "--params", help="params.yaml to read the synth section from (default: ./params.yaml if present)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT (and the truth folder) if written by rgops synth."),
) -> None:
    """Write a synthetic radiogenomic cohort (CT + SEG DICOM, genes.tsv, clinical.csv) and its ground truth."""
    from rgops.data.synth import default_truth_dir, generate_cohort, synth_config

    config = synth_config(params, n_patients=patients, seed=seed, n_genes=genes, image_size=image_size)
    with progress() as bar:
        task = bar.add_task("synth", total=config.n_patients)
        summary = generate_cohort(out, config, truth_out,
                                  progress=lambda done, total: bar.update(task, completed=done, total=total),
                                  overwrite=force)
    typer.echo(
        f"wrote {summary['patients']} patients ({summary['series']} series, {summary['instances']} DICOM instances, "
        f"{summary['genes']} genes) to {out} in {summary['seconds']:.1f}s; ground truth in "
        f"{truth_out or default_truth_dir(out)}"
    )


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


@app.command("validate")
@handles_errors
def validate_cmd(
    cohort: Optional[Path] = typer.Argument(None, help="Raw cohort folder (ct/, genes.tsv, clinical.csv)."),
    datasets: Optional[Path] = typer.Option(None, "--datasets", help="Validate an ingested datasets folder instead."),
    json_out: Optional[Path] = typer.Option(None, "--json-out", help="Write the JSON result here."),
    docs_out: Optional[Path] = typer.Option(None, "--docs-out", help="Write Great Expectations Data Docs (HTML) here."),
    params: Path = ParamsOpt,
) -> None:
    """Run the expectation suites; print a summary; exit 1 when a critical expectation fails."""
    from rgops.config import load_params
    from rgops.errors import ConfigError
    from rgops.validation import ValidateConfig, require_passed, validate_path

    if (cohort is None) == (datasets is None):
        raise ConfigError("pass either a COHORT folder or --datasets DIR (exactly one); "
                          f"got cohort={cohort}, datasets={datasets}")
    config = ValidateConfig.from_params(load_params(params))
    with progress() as bar:
        task = bar.add_task("validate: read headers", total=None)
        report = validate_path(cohort or datasets, config, datasets=datasets is not None,  # type: ignore[arg-type]
                               docs_out=docs_out, json_out=json_out,
                               progress=lambda done, total: bar.update(task, completed=done, total=total))
    typer.echo(report.summary())
    require_passed(report)

# --- training ------------------------------------------------------------------------------------

train_app = typer.Typer(help="Train the conditional autoencoder or the conditional GAN (tracked in MLflow).",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")


def _train(kind: str, datasets: Path, preset: str, params: Path, resume: bool, checkpoint_dir: Optional[Path],
           device: str, experiment: str, metrics_out: Optional[Path], plots_out: Optional[Path],
           model_uri_out: Optional[Path] = None) -> None:
    from rgops.errors import ConfigError
    from rgops.training.presets import PRESETS
    from rgops.training.run import run_training

    if preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r} is not one of {list(PRESETS)}")
    with progress() as bar:
        task = bar.add_task(f"train {kind} ({preset})", total=None)
        run_id = run_training(kind, datasets, preset, params, device=device, checkpoint_dir=checkpoint_dir,  # type: ignore[arg-type]
                              resume=resume, experiment=experiment, metrics_out=metrics_out, plots_out=plots_out,
                              model_uri_out=model_uri_out, progress=lambda done, total: bar.update(task, completed=done, total=total))
    if run_id is not None:
        typer.echo(run_id)


def _train_command(kind: str) -> Callable[..., None]:
    @handles_errors
    def command(
        datasets: Path = typer.Argument(..., help="Datasets folder written by `rgops ingest`."),
        preset: str = typer.Option("tiny", "--preset", help="Preset of params.yaml train.<kind>.presets: tiny, demo or full."),
        params: Path = ParamsOpt,
        resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in --checkpoint-dir."),
        checkpoint_dir: Optional[Path] = typer.Option(None, "--checkpoint-dir", help="Where checkpoints are written."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        experiment: str = typer.Option("rgops", "--experiment", help="MLflow experiment name."),
        metrics_out: Optional[Path] = typer.Option(None, "--metrics-out", help="Write final metrics JSON here (DVC metrics)."),
        plots_out: Optional[Path] = typer.Option(None, "--plots-out", help="Write per-epoch CSV here (DVC plots)."),
        model_uri_out: Optional[Path] = typer.Option(None, "--model-uri-out",
                                                     help="Write the logged model's URI here (for the evaluate stage)."),
    ) -> None:
        _train(kind, datasets, preset, params, resume, checkpoint_dir, device, experiment, metrics_out, plots_out,
               model_uri_out)

    command.__doc__ = (f"Train the {'conditional autoencoder' if kind == 'cae' else 'conditional GAN'} on DATASETS; "
                       "prints the MLflow run id last. Honours RGOPS_TRACKING_URI / MLFLOW_TRACKING_URI.")
    return command


train_app.command("cae")(_train_command("cae"))
train_app.command("gan")(_train_command("gan"))

# --- evaluation ----------------------------------------------------------------------------------


@app.command("evaluate")
@handles_errors
def evaluate_cmd(
    datasets: Path = typer.Argument(..., help="Datasets folder written by `rgops ingest`."),
    cohort: Optional[Path] = typer.Option(None, "--cohort", help="Synthetic cohort folder: its COHORT-truth/ "
                                          "adds ground-truth recovery (program recall/precision, oracle R^2)."),
    out: Path = typer.Option(Path("evaluation.json"), "--out", help="Metrics JSON (read by the promotion gates)."),
    report_dir: Path = typer.Option(Path("reports/evaluation"), "--report-dir", help="Report and figures folder."),
    cae: Optional[str] = typer.Option(None, "--cae", help="CAE model URI, e.g. models:/rgops-cae@challenger."),
    ae: Optional[str] = typer.Option(None, "--ae", help="Unconditional AE baseline model URI."),
    encoder: list[str] = typer.Option([], "--encoder", help="More encoders to compare, as NAME=URI (repeatable)."),
    gan: Optional[str] = typer.Option(None, "--gan", help="GAN model URI, e.g. models:/rgops-gan@challenger."),
    params: Path = ParamsOpt,
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not log to the models' MLflow runs."),
) -> None:
    """Radiogenomic and image metrics of trained models vs the radiomics baseline on held-out patients;
    writes --out and a markdown/HTML report, and logs both to each model's MLflow run."""
    from rgops.config import load_params
    from rgops.errors import ConfigError
    from rgops.evaluation.evaluate import run_evaluation

    uris = {name: uri for name, uri in (("cae", cae), ("ae", ae)) if uri}
    for item in encoder:
        name, sep, uri = item.partition("=")
        if not sep or not name or not uri:
            raise ConfigError(f"--encoder {item!r} is not NAME=URI, e.g. cae_aux=models:/rgops-cae/3")
        uris[name] = uri
    with progress() as bar:
        tasks: dict[str, Any] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        result = run_evaluation(datasets, uris, gan, cohort, load_params(params), out, report_dir,
                                log_to_mlflow=not no_mlflow, progress=report)
    from rgops.evaluation.protocol import summary_lines

    m = result.metrics
    typer.echo(f"probe protocol: {int(m['probe.n_train'])} training, {int(m['probe.n_held_out'])} held-out patients "
               "(R2 on held-out patients, 90% bootstrap interval)")
    for line in summary_lines(m):
        typer.echo(line)
    if "gan.frechet" in m:
        typer.echo(f"gan: frechet={m['gan.frechet']:.3f} (real-vs-real {m['gan.frechet_ref']:.3f}) "
                   f"cond_consistency={m['gan.cond_consistency']:.3f} ms_ssim={m['gan.ms_ssim']:.3f}")
    typer.echo(f"wrote {out} and {report_dir / 'report.html'}")


# --- registry and flows --------------------------------------------------------------------------

TrackingOpt = typer.Option(None, "--tracking-uri", help="MLflow tracking/registry URI (default: "
                           "RGOPS_TRACKING_URI, MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db).")


@app.command("retrain")
@handles_errors
def retrain_cmd(
    cohort: Path = typer.Argument(..., help="Cohort folder (ct/, genes.tsv, clinical.csv)."),
    approval: Optional[str] = typer.Option(None, "--approval", help="auto or manual (default: promote.approval)."),
    workdir: Path = typer.Option(Path("retrain-output"), "--workdir", help="Datasets and reports go here."),
    preset: str = typer.Option("tiny", "--preset", help="Training preset: tiny, demo, full."),
    params: Path = ParamsOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    experiment: str = typer.Option("rgops", "--experiment", help="MLflow experiment of the training runs."),
    approval_timeout: int = typer.Option(3600, "--approval-timeout", help="Seconds a manual approval waits."),
    ingest_workers: int = typer.Option(2, "--ingest-workers", help="Ingest as Prefect tasks (4 per "
                                       "process, each a run of patients) on a local Dask cluster of N processes; "
                                       "0 or 1: in-process, no Dask."),
    dask_address: Optional[str] = typer.Option(None, "--dask-address", help="Dask scheduler (tcp://host:8786) "
                                               "to fan ingest out to instead of a local cluster."),
) -> None:
    """Run the retrain flow once, locally: validate, ingest, train, evaluate, register, gate, promote.

    With --approval manual the flow pauses for a decision in the Prefect UI (or `rgops promote`).
    """
    import importlib

    from rgops.config import load_params
    from rgops.errors import ConfigError

    load_params(params)  # the whole file, numbers included: refused here, before Prefect starts or anything trains
    if approval not in (None, "auto", "manual"):
        raise ConfigError(f"--approval got {approval!r}, expected auto or manual")
    if ingest_workers < 0:
        raise ConfigError(f"--ingest-workers got {ingest_workers}, expected 0 or more (0 or 1: no Dask)")
    # The flow is the Prefect shell over rgops.retrain; imported here so rgops itself stays
    # free of Prefect at import time.
    flow = importlib.import_module("flows.retrain").retrain
    result = flow(cohort=str(cohort), workdir=str(workdir), params_path=str(params), preset=preset,
                  approval=approval, tracking_uri=tracking_uri, experiment=experiment,
                  approval_timeout_s=approval_timeout, ingest_workers=ingest_workers, dask_address=dask_address)
    for key in ("promoted", "rejected", "pending"):
        for kind, version in sorted(result[key].items()):
            typer.echo(f"rgops-{kind} version {version}: {key}")


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


@app.command("serve")
@handles_errors
def serve_cmd(
    port: Optional[int] = typer.Option(None, "--port", help="HTTP port (default: serve.port in params.yaml, 3000)."),
    host: Optional[str] = typer.Option(None, "--host", help="Interface to bind (default 127.0.0.1)."),
    params: Path = ParamsOpt,
) -> None:
    """Start the feature-extraction and image-generation services (`bentoml serve`) on localhost.

    Loads models:/rgops-cae@champion and models:/rgops-gan@champion from the registry
    (MLFLOW_TRACKING_URI) and needs API keys in RGOPS_API_KEYS or RGOPS_API_KEYS_FILE.
    """
    import importlib
    import signal
    import tempfile

    from rgops.config import load_params
    from rgops.serving.config import ServeConfig
    from rgops.serving.process import run_in_group
    from rgops.serving.workers import STATE_DIR_ENV

    cfg = ServeConfig.from_params(load_params(params) if params.is_file() else None)
    # fail here, with the reason, rather than inside the server (services/ is the app layer, like flows/)
    importlib.import_module("services.security").load_api_keys()
    host = host or cfg.host
    port = port or cfg.port
    env = {**os.environ, "RGOPS_PARAMS": str(params.resolve())} if params.is_file() else dict(os.environ)
    root = Path(__file__).resolve().parent.parent
    typer.echo(f"rgops services on http://{host}:{port}  (routes /extract /extract_patches /generate "
               f"/metadata /healthz; OpenAPI at /docs)")
    cmd = [sys.executable, "-m", "bentoml", "serve", "services.service:RgopsService", "--host", host,
           "--port", str(port)]
    # the workers' shared folder (reload announcements, metrics snapshots): fresh, removed afterwards
    with tempfile.TemporaryDirectory(prefix="rgops-serve-") as state:
        env.setdefault(STATE_DIR_ENV, state)
        typer.echo(f"{cfg.worker_count()} worker process(es), {cfg.threads} thread(s) each (serve.workers, serve.threads)")
        # its own process group, signals forwarded: stopping `rgops serve` stops every server process
        code = run_in_group(cmd, cwd=root if (root / "services").is_dir() else None, env=env)
    raise typer.Exit(0 if code in (-signal.SIGTERM, -signal.SIGINT) else code)


# --- PACS ----------------------------------------------------------------------------------------

pacs_app = typer.Typer(help="The hospital PACS (DICOMweb): watch for new CT + SEG studies, answer each with an SR.",
                       no_args_is_help=True)
app.add_typer(pacs_app, name="pacs")


@pacs_app.command("watch")
@handles_errors
def pacs_watch_cmd(
    state: Path = typer.Option(Path(".rgops/pacs-watch.json"), "--state", help="State file (which studies are done)."),
    interval: float = typer.Option(30.0, "--interval", help="Seconds between polls."),
    polls: Optional[int] = typer.Option(None, "--polls", help="Stop after this many polls (default: run until ^C)."),
    alias: str = typer.Option("champion", "--alias", help="CAE registry alias to extract with."),
    store: bool = typer.Option(True, "--store/--no-store", help="Store each result in its study as a DICOM SR."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow registry (default MLFLOW_TRACKING_URI)."),
) -> None:
    """Poll the PACS (QIDO-RS) and extract each new CT + SEG study once; restart-safe.

    The PACS comes from the environment: RGOPS_PACS_URL (DICOMweb root), RGOPS_PACS_USER,
    RGOPS_PACS_PASSWORD or RGOPS_PACS_PASSWORD_FILE; never from params.yaml.
    """
    from rgops.pacs import Pacs, PacsConfig
    from rgops.pacs_watch import Watcher, registry_extractor

    watcher = Watcher(Pacs(PacsConfig.from_env()), registry_extractor(alias, tracking_uri), state, store=store)
    typer.echo(f"watching {watcher.pacs.config.url} every {interval:g} s (state {state})")
    try:
        watcher.run(interval, max_polls=polls)
    except KeyboardInterrupt:
        pass
    done = sum(e.get("status") == "done" for e in watcher.state.studies.values())
    failed = sum(e.get("status") == "failed" for e in watcher.state.studies.values())
    typer.echo(f"studies done: {done}, failed: {failed}")


# --- demo: the main job ----------------------------------------------------------------------------


@app.command("demo")
@handles_errors
def demo_cmd(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for everything the demo writes."),
    preset: str = typer.Option("demo", "--preset", help="Training preset: tiny (quick look), demo, full."),
    patients: Optional[int] = typer.Option(None, "--patients", help="Override synth.n_patients (default 150)."),
    port: Optional[int] = typer.Option(None, "--port", help="Port of the services (default: a free one)."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Stop after promotion; do not start the services."),
    params: Path = ParamsOpt,
) -> None:
    """The main job end to end on embedded defaults: synthetic cohort -> validate -> ingest -> train ->
    evaluate -> register -> promote -> serve -> one request to each service."""
    import importlib
    import time

    t0 = time.perf_counter()
    run_demo = importlib.import_module("flows.demo").run_demo
    result = run_demo(out, params, preset=preset, patients=patients, port=port, serve=not no_serve)
    wall = time.perf_counter() - t0
    typer.echo("")
    typer.echo("rgops demo finished")
    for step, seconds in result.steps.items():
        typer.echo(f"  {step:<24} {seconds:8.1f} s")
    for kind_key in ("promoted", "pending", "rejected"):
        for kind, version in sorted(result.retrain.get(kind_key, {}).items()):
            typer.echo(f"  rgops-{kind} version {version}: {kind_key}")
    metrics = result.retrain.get("metrics") or {}
    if metrics:
        from rgops.evaluation.protocol import summary_lines

        typer.echo(f"held-out validity (probe protocol, {int(metrics.get('probe.n_held_out', 0))} held-out patients, "
                   "linked-program R2 with 90% interval):")
        for line in summary_lines(metrics):
            typer.echo(f"  {line}")
    if result.extract:
        z = result.extract.get("latent") or result.extract.get("features") or []
        typer.echo(f"  /extract: {len(z)}-dim biomarker from {result.extract.get('model', {}).get('name', '?')} "
                   f"v{result.extract.get('model', {}).get('version', '?')} (request {result.extract.get('request_id')})")
    if result.generate:
        typer.echo(f"  /generate: {result.generate.get('n_png')} PNG + {result.generate.get('n_dicom')} DICOM SC, "
                   f"{len(result.generate.get('imputed_genes') or [])} missing gene(s) imputed "
                   f"(request {result.generate.get('request_id')})")
    typer.echo("where to look:")
    for name, path in result.files.items():
        typer.echo(f"  {name:<20} {path}")
    typer.echo(f"  MLflow UI            mlflow ui --backend-store-uri {result.tracking_uri} "
               f"--port 5000   (then http://127.0.0.1:5000)")
    typer.echo(f"  registry             rgops models --tracking-uri {result.tracking_uri}")
    typer.echo(f"total wall time: {wall:.0f} s")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
