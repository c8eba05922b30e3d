"""MLflow at the edge: where runs go, the tracker training reports to, and logged models.

With this module and ``rgops/registry.py`` the only importers of mlflow, training stays
framework-free: it takes a :class:`~rgops.training.common.Tracker`, and :class:`MlflowTracker` is
the adapter. Nothing happens at import time; the tracking URI is set when a tracker starts.

Models are logged with ``mlflow.pytorch.log_model(serialization_format="pickle")`` (torch.export
cannot take the two-input models) with extra files beside them: ``config.json``, ``gene_panel.json``,
``metadata.json`` (the model card) and ``state_dict.pt``. The SHA-256 of every one of these and of
the pickle itself is recorded as run tags; :func:`load_logged_model` checks them *before*
unpickling, because unpickling runs code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from rgops.config import from_dict, to_dict
from rgops.data.datasets import Datasets, GenePanel
from rgops.errors import IntegrityError, RegistryError, TrackingError
from rgops.lineage import dvc_hash, git_commit, sha256_file
from rgops.models.cae import CAEConfig
from rgops.models.gan import GANConfig

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

URI_ENVS = ("RGOPS_TRACKING_URI", "MLFLOW_TRACKING_URI")
DEFAULT_EXPERIMENT = "rgops"
MODEL_NAME = "model"
TAG_WEIGHTS = "rgops.weights_sha256"  # SHA-256 of the pickled module (data/model.pth)
TAG_FILES = "rgops.files_sha256"  # JSON {relative path: SHA-256} of every file we check
TAG_PROGRAM_HEAD = "rgops.program_head_sha256"  # SHA-256 of the CAE's program head (program_head/<sha>.json)
PROGRAM_HEAD_DIR = "program_head"
CHECKED_FILES = ("data/model.pth", "extra_files/config.json", "extra_files/gene_panel.json",
                 "extra_files/metadata.json", "extra_files/state_dict.pt")
_CONFIGS = {"cae": CAEConfig, "gan": GANConfig}


def resolve_tracking_uri() -> str:
    """``RGOPS_TRACKING_URI``, then ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    for env in URI_ENVS:
        if os.environ.get(env):
            return os.environ[env]
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


def default_artifact_location(uri: str) -> str | None:
    """``file://<folder of the database>/mlartifacts`` for a local SQLite store, so artifacts stay
    beside their database whatever folder a run starts from (a bare SQLite store would scatter
    ``./mlruns`` into each); None for a server, which decides where artifacts live."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts").resolve().as_uri()
    if uri.startswith("sqlite:"):
        return (Path.cwd() / "mlartifacts").resolve().as_uri()
    return None


def is_unreachable(exc: BaseException) -> bool:
    """Whether an MLflow error means the tracking server (or its database) could not be reached,
    as opposed to a request it refused."""
    text = str(exc)
    markers = ("API request to", "Max retries exceeded", "Connection refused", "ConnectionError",
               "Failed to establish", "Read timed out", "RemoteDisconnected", "database is locked")
    return any(m in text for m in markers)


@contextlib.contextmanager
def mlflow_errors(what: str, uri: str) -> Iterator[None]:
    """The one translation of MLflow's exceptions into rgops errors (tracking and registry both use it).

    An unreachable server or locked database -> :class:`~rgops.errors.TrackingError` naming the URI;
    a missing run, model or version -> :class:`~rgops.errors.RegistryError`; any other refusal ->
    ``TrackingError``. rgops's own errors pass through unchanged.
    """
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (RegistryError, TrackingError, IntegrityError):
        raise
    except MlflowException as exc:
        if is_unreachable(exc):
            raise TrackingError(
                f"{what}: the MLflow tracking server at {uri} is unreachable "
                f"({str(exc).splitlines()[0][:200]}); start it or set MLFLOW_TRACKING_URI, then retry") from exc
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            raise RegistryError(f"{what}: {exc.message} (in {uri}); check the name, version or run id") from exc
        raise TrackingError(f"{what}: MLflow at {uri} refused the request: {exc.message}; check the server "
                            "and RGOPS_TRACKING_URI/MLFLOW_TRACKING_URI") from exc
    except OSError as exc:  # requests' ConnectionError derives from OSError
        raise TrackingError(f"{what}: the MLflow tracking server at {uri} is unreachable ({exc}); start it or "
                            "set MLFLOW_TRACKING_URI, then retry") from exc


def make_client(tracking_uri: str | None = None) -> MlflowClient:
    """An explicit :class:`mlflow.MlflowClient` for tracking and registry at ``tracking_uri``
    (default :func:`resolve_tracking_uri`); pass it on instead of setting a global URI."""
    from mlflow import MlflowClient

    uri = tracking_uri or resolve_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


class MlflowTracker:
    """A :class:`~rgops.training.common.Tracker` writing to one MLflow run.

    Use as a context manager: entering starts (or, with ``run_id``, reopens) the run; leaving ends
    it as FINISHED, or FAILED when an exception escapes.

    Args:
        experiment: experiment name (created with the default artifact location when missing).
        run_name: display name of the run.
        tracking_uri: defaults to :func:`resolve_tracking_uri`.
        run_id: continue an existing run (``--resume``).
    """

    def __init__(self, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
                 tracking_uri: str | None = None, run_id: str | None = None) -> None:
        self.experiment = experiment
        self.run_name = run_name
        self.tracking_uri = tracking_uri or resolve_tracking_uri()
        self.run_id = run_id
        self._active = False

    def __enter__(self) -> "MlflowTracker":
        import mlflow

        client = make_client(self.tracking_uri)
        with mlflow_errors(f"starting a run in experiment {self.experiment!r}", self.tracking_uri):
            if self.run_id is None:
                exp = client.get_experiment_by_name(self.experiment)
                exp_id = exp.experiment_id if exp is not None else client.create_experiment(
                    self.experiment, artifact_location=default_artifact_location(self.tracking_uri))
            # mlflow.<flavor>.log_model and mlflow.log_input log to the *active* run through the
            # global tracking URI (MLflow offers no client for them), so a tracker is the one place
            # rgops sets it; it stays set after the run (MLflow mirrors it into MLFLOW_TRACKING_URI),
            # which later default-URI calls of the same process (evaluation logging) rely on.
            mlflow.set_tracking_uri(self.tracking_uri)
            run = (mlflow.start_run(experiment_id=exp_id, run_name=self.run_name) if self.run_id is None
                   else mlflow.start_run(run_id=self.run_id))
        self.run_id = run.info.run_id
        self._active = True
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        import mlflow

        if self._active:
            mlflow.end_run(status="FINISHED" if exc_type is None else "FAILED")
            self._active = False

    def _require(self) -> None:
        if not self._active:
            raise TrackingError("MlflowTracker used outside `with MlflowTracker(...) as tracker:`")

    def log_params(self, params: Mapping[str, Any]) -> None:
        import mlflow

        self._require()
        mlflow.log_params({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in params.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import mlflow

        self._require()
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        import mlflow

        self._require()
        mlflow.log_image(image, artifact_file=artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        import mlflow

        self._require()
        mlflow.log_figure(figure, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        import mlflow

        self._require()
        mlflow.log_artifact(str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        import mlflow

        self._require()
        mlflow.set_tags(dict(tags))

    def log_dataset(self, datasets: Datasets, context: str = "training") -> str:
        """Record the datasets folder as the run's input (``mlflow.log_input``) with its digest, and
        tag its DVC hash; returns the digest. Only the folder path and hashes are recorded, no rows."""
        import mlflow
        from mlflow.data.dataset_source_registry import get_registered_sources
        from mlflow.data.meta_dataset import MetaDataset

        self._require()
        digest = datasets.digest()
        root = str(datasets.root.resolve()) if datasets.root is not None else "memory"
        local = next(s for s in get_registered_sources() if s._get_source_type() == "local")
        source = local(root if datasets.root is not None else "memory://in-process-arrays")
        ds = MetaDataset(source=source, name=Path(root).name or "datasets", digest=digest[:36])
        mlflow.log_input(ds, context=context)
        self.set_tags({"rgops.dataset_digest": digest, "rgops.dataset_path": root,
                       "rgops.dvc_hash": dvc_hash(root) if datasets.root is not None else "untracked",
                       "rgops.n_patches": str(len(datasets)), "rgops.patch_size": str(datasets.size)})
        return digest


@dataclass
class LoadedModel:
    """A logged model, checked and rebuilt.

    Attributes:
        kind: ``"cae"`` or ``"gan"``.
        module: the nn.Module (ConditionalAE or Generator) in eval mode on CPU.
        config: its CAEConfig or GANConfig.
        panel: the gene panel (order and normalisation statistics) it expects.
        card: the model card (metadata.json).
        weights_sha256: SHA-256 of the pickled module that was loaded.
        run_id: the MLflow run that produced it.
        program_head: the latent -> gene-program map fitted at evaluation time
            (``rgops.models.program_head.ProgramHead`` JSON: names, coef, intercept), digest-checked; None when
            the model (for a registry URI: the version) records none.
    """

    kind: Literal["cae", "gan"]
    module: torch.nn.Module
    config: CAEConfig | GANConfig
    panel: GenePanel
    card: dict[str, Any]
    weights_sha256: str
    run_id: str
    program_head: dict[str, Any] | None = None

    @property
    def spec(self) -> Any:
        """The :class:`rgops.data.patch.PatchSpec` recorded in the model card (what ``/extract`` cuts)."""
        from rgops.data.patch import PatchSpec

        return PatchSpec.from_json(self.card.get("patch") or {})


def _card_spec(datasets: Datasets | None, size: int) -> dict[str, Any]:
    """The patch contract the model was trained on, copied from the datasets' ``patch_spec.json``."""
    from rgops.data.patch import PatchSpec

    spec = datasets.spec if datasets is not None and datasets.spec is not None else PatchSpec(size=size)
    return spec.to_json()


def model_card(kind: str, config: CAEConfig | GANConfig, panel: GenePanel, datasets: Datasets | None,
               metrics: Mapping[str, float], dataset_digest: str, dvc: str, commit: str) -> dict[str, Any]:
    """The model card written as ``metadata.json``."""
    from rgops.data.provenance import trained_on

    s, g = config.image_size, config.n_genes
    if kind == "cae":
        inputs = {"image": [-1, 1, s, s], "genes": [-1, g], "scale_log2_mm_per_px": [-1]}
        outputs = {"reconstruction": [-1, 1, s, s], "encode(image, genes)": [-1, config.latent_dim]}  # type: ignore[union-attr]
        use = ("Research use: extract an imaging biomarker (encode) from a lung tumour CT patch for "
               "radiogenomic analysis. Not for diagnosis.")
    else:
        inputs = {"z": [-1, config.z_dim], "genes": [-1, g]}  # type: ignore[union-attr]
        outputs = {"image": [-1, 1, s, s]}
        use = ("Research use: generate synthetic tumour CT patches that illustrate a gene-expression profile. "
               "Outputs are synthetic and must be labelled as such; not for diagnosis.")
    return {
        "format": "rgops-model-card/1", "kind": kind, "intended_use": use,
        "inputs": inputs, "outputs": outputs,
        "patch": _card_spec(datasets, s),
        "trained_on": trained_on(datasets, dataset_digest, _card_spec(datasets, s)),
        "genes": {"order": list(panel.genes), "transform": panel.transform, "n_train": panel.n_train},
        "training_data": {"digest": dataset_digest, "dvc_hash": dvc,
                          "n_patches": len(datasets) if datasets is not None else None},
        "git_commit": commit, "metrics": {k: float(v) for k, v in metrics.items()},
        "config": to_dict(config),
    }


def log_model(module: torch.nn.Module, kind: Literal["cae", "gan"], config: CAEConfig | GANConfig,
              panel: GenePanel, card: Mapping[str, Any], name: str = MODEL_NAME) -> str:
    """Log ``module`` to the active run and record the SHA-256 of its files as run tags.

    Returns the logged model's URI (``models:/m-...``).
    """
    import mlflow
    import mlflow.pytorch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    run = mlflow.active_run()
    if run is None:
        raise TrackingError("log_model needs an active MLflow run; call it inside `with MlflowTracker(...)`")
    module = module.to("cpu").eval()
    s, g = config.image_size, config.n_genes
    first = ("image", (-1, 1, s, s)) if kind == "cae" else ("z", (-1, config.z_dim))  # type: ignore[union-attr]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), first[1], first[0]), TensorSpec(np.dtype(np.float32), (-1, g), "genes")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, s, s), "image")]),
    )
    example = {first[0]: np.zeros((1, *first[1][1:]), dtype=np.float32), "genes": np.zeros((1, g), dtype=np.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"config.json": json.dumps({"kind": kind, **to_dict(config)}, indent=2),
                 "gene_panel.json": json.dumps(panel.to_json()),
                 "metadata.json": json.dumps(dict(card), indent=2)}
        paths = []
        for fname, text in files.items():
            (Path(tmp) / fname).write_text(text)
            paths.append(str(Path(tmp) / fname))
        torch.save(module.state_dict(), Path(tmp) / "state_dict.pt")
        paths.append(str(Path(tmp) / "state_dict.pt"))
        # The pytorch flavor's pyfunc takes one array, so MLflow's check of a two-input example
        # always fails and logs a misleading warning; the example is still saved with the model,
        # and rgops loads models through load_logged_model, not pyfunc.
        quiet = logging.getLogger("mlflow.models.model")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            info = mlflow.pytorch.log_model(module, name=name, serialization_format="pickle", signature=signature,
                                            input_example=example, extra_files=paths,
                                            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        finally:
            quiet.setLevel(level)
    digests = _digests(mlflow.artifacts.download_artifacts(info.model_uri))
    mlflow.set_tags({TAG_WEIGHTS: digests["data/model.pth"], TAG_FILES: json.dumps(digests),
                     "rgops.model_kind": kind, "rgops.model_uri": info.model_uri})
    log.info("logged %s model %s (weights sha256 %s)", kind, info.model_uri, digests["data/model.pth"][:12])
    return info.model_uri


def _digests(local_dir: str | Path) -> dict[str, str]:
    root = Path(local_dir)
    missing = [f for f in CHECKED_FILES if not (root / f).is_file()]
    if missing:
        raise IntegrityError(f"logged model at {str(root)!r} lacks {missing}; it was not logged by rgops.tracking.log_model")
    return {f: sha256_file(root / f) for f in CHECKED_FILES}


def _resolve(model_uri: str, client: MlflowClient) -> tuple[str, dict[str, str] | None]:
    """The run that logged ``model_uri`` and, for a registry URI (``models:/NAME/VERSION`` or
    ``models:/NAME@ALIAS``), the version's tags; asked of the tracking store, not of the artifacts."""
    if model_uri.startswith("runs:/"):
        return model_uri[len("runs:/"):].split("/", 1)[0], None
    if not model_uri.startswith("models:/"):
        raise RegistryError(f"model URI {model_uri!r} is not runs:/..., models:/m-..., models:/NAME/VERSION or "
                            "models:/NAME@ALIAS")
    ref = model_uri[len("models:/"):]
    with mlflow_errors(f"resolving model {model_uri!r}", client.tracking_uri):
        if ref.startswith("m-"):
            return client.get_logged_model(ref.split("/", 1)[0]).source_run_id, None
        name, _, alias = ref.partition("@")
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = ref.partition("/")
            mv = client.get_model_version(name, version)
        return mv.run_id, dict(mv.tags or {})


def log_program_head(run_id: str, head: Mapping[str, Any], tracking_uri: str | None = None) -> str:
    """Log a program head (``rgops.models.program_head.ProgramHead`` JSON) to an existing run and tag its digest.

    The file goes to ``program_head/<sha256>.json`` (content-addressed, so re-evaluating a run
    never overwrites the head an already registered version points at) and the run gains the tag
    ``rgops.program_head_sha256``, which :meth:`rgops.registry.Registry.register` copies onto the
    version with the run's other ``rgops.*`` tags. Returns the SHA-256.

    Raises:
        TrackingError: ``head`` lacks ``names``/``coef``/``intercept``, or MLflow refuses the run.
    """
    missing = sorted({"names", "coef", "intercept"} - set(head))
    if missing:
        raise TrackingError(f"program head for run {run_id} lacks {missing} (has {sorted(head)}); "
                            "pass evaluation.json's program_heads[<encoder>]")
    text = json.dumps({"names": list(head["names"]), "coef": head["coef"], "intercept": head["intercept"]},
                      sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    with tempfile.TemporaryDirectory() as tmp, MlflowTracker(run_id=run_id, tracking_uri=tracking_uri) as tracker:
        path = Path(tmp) / f"{digest}.json"
        path.write_text(text)
        tracker.log_artifact(path, PROGRAM_HEAD_DIR)
        tracker.set_tags({TAG_PROGRAM_HEAD: digest})
    log.info("logged program head (%d programs, sha256 %s) to run %s", len(head["names"]), digest[:12], run_id)
    return digest


def load_program_head(run_id: str, expected_sha256: str, client: MlflowClient | None = None) -> dict[str, Any]:
    """The program head logged to ``run_id`` with digest ``expected_sha256``, verified before use.

    Raises:
        IntegrityError: the file is missing or its SHA-256 differs from ``expected_sha256``.
    """
    import mlflow

    client = client or make_client()
    uri = f"runs:/{run_id}/{PROGRAM_HEAD_DIR}/{expected_sha256}.json"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=tmp, tracking_uri=client.tracking_uri))
        except (mlflow.exceptions.MlflowException, OSError) as exc:
            raise IntegrityError(f"run {run_id} records program head sha256 {expected_sha256[:16]}... but "
                                 f"{uri!r} cannot be read ({exc}); re-run `rgops evaluate` for this model") from None
        actual = sha256_file(local)
        if actual != expected_sha256:
            raise IntegrityError(
                f"program head of run {run_id}: SHA-256 {actual[:16]}... differs from the recorded "
                f"{expected_sha256[:16]}...; the artifact was altered: do not serve it, re-run `rgops evaluate`")
        return json.loads(local.read_text())


def load_logged_model(model_uri: str, client: MlflowClient | None = None) -> LoadedModel:
    """Download a model logged by :func:`log_model`, verify its SHA-256 digests against the run's
    tags, then load it through ``mlflow.pytorch.load_model``.

    The program head comes along when one is recorded: for a registry URI the version's
    ``rgops.program_head_sha256`` tag names it (the head the version was registered with), for a
    ``runs:/`` or ``models:/m-`` URI the run's tag (the latest evaluation); see :func:`load_program_head`.

    Args:
        model_uri: ``runs:/...``, ``models:/m-...``, ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``.
        client: the store to read from (default: :func:`make_client`).

    Raises:
        IntegrityError: a file's digest differs from the one recorded at logging time (checked
            before anything is unpickled), or the recorded program head is missing or altered.
        RegistryError: the model URI does not resolve.
    """
    import mlflow
    import mlflow.pytorch

    client = client or make_client()
    run_id, version_tags = _resolve(model_uri, client)
    with mlflow_errors(f"reading run {run_id} of model {model_uri!r}", client.tracking_uri):
        tags = client.get_run(run_id).data.tags
    if TAG_FILES not in tags:
        raise IntegrityError(f"run {run_id} has no {TAG_FILES} tag: model {model_uri!r} was not logged by rgops; "
                             "refusing to unpickle it")
    expected = json.loads(tags[TAG_FILES])
    with tempfile.TemporaryDirectory() as tmp:
        with mlflow_errors(f"downloading model {model_uri!r}", client.tracking_uri):
            local = mlflow.artifacts.download_artifacts(model_uri, dst_path=tmp, tracking_uri=client.tracking_uri,
                                                        registry_uri=client.tracking_uri)
        actual = _digests(local)
        bad = sorted(f for f in CHECKED_FILES if actual[f] != expected.get(f))
        if bad:
            raise IntegrityError(
                f"model {model_uri!r}: SHA-256 of {bad} differs from run {run_id}'s record "
                f"(e.g. {bad[0]}: recorded {str(expected.get(bad[0]))[:16]}..., found {actual[bad[0]][:16]}...); "
                "the artifact was altered: do not load it, re-log the model from its run"
            )
        extra = Path(local) / "extra_files"
        cfg = json.loads((extra / "config.json").read_text())
        kind = cfg.pop("kind")
        config = from_dict(_CONFIGS[kind], cfg, "config.json")
        panel = GenePanel.read(extra / "gene_panel.json")
        card = json.loads((extra / "metadata.json").read_text())
        module = mlflow.pytorch.load_model(local, map_location="cpu")
    module.eval()
    # A registry version carries the head it was registered with; other URIs the run's latest.
    head_sha = (version_tags if version_tags is not None else tags).get(TAG_PROGRAM_HEAD)
    head = load_program_head(run_id, head_sha, client) if head_sha else None
    return LoadedModel(kind, module, config, panel, card, actual["data/model.pth"], run_id, head)


# --- evaluation (rgops/evaluation/evaluate.py) -----------------------------------------------------


def log_evaluation(run_id: str, metrics: Mapping[str, float], files: Mapping[str, str | Path],
                   report_dir: str | Path, tracking_uri: str | None = None) -> None:
    """Log evaluation metrics and files to an existing run (the evaluated model's).

    Metrics keep their stable flat names (``cae.cv_r2.mean``, ``gan.frechet``, ...). Each file goes
    under ``evaluation/`` in the run's artifacts, keeping its path relative to ``report_dir`` (so the
    report's relative figure links still work); files outside it go to ``evaluation/`` directly.
    """
    root = Path(report_dir).resolve()
    with MlflowTracker(run_id=run_id, tracking_uri=tracking_uri) as tracker:
        tracker.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)}, step=0)
        for path in files.values():
            p = Path(path).resolve()
            rel = p.parent.relative_to(root) if p.parent.is_relative_to(root) else Path()
            tracker.log_artifact(p, str(Path("evaluation") / rel) if str(rel) != "." else "evaluation")
        tracker.set_tags({"rgops.evaluated": "true"})


# --- orphaned runs (rgops/retrain.py reaps them when a retrain starts) ---------------------------------


def reap_orphan_runs(client: MlflowClient, experiment: str, host: str) -> list[str]:
    """Mark RUNNING runs of ``experiment`` owned by a dead process on ``host`` as FAILED.

    A SIGKILL gives a process no chance to end its run, so the next start does it. A run's owner is
    recorded in its ``rgops.host``/``rgops.pid`` tags (:func:`rgops.training.run.owner_tags`); a run
    with a live owner, or owned by another host, is left alone. Returns the ids of the runs marked FAILED.
    """
    uri = client.tracking_uri
    with mlflow_errors(f"looking for orphaned runs in experiment {experiment!r}", uri):
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'")
    reaped = []
    for run in runs:
        tags = run.data.tags
        if tags.get("rgops.host") != host or not tags.get("rgops.pid", "").isdigit():
            continue
        try:
            os.kill(int(tags["rgops.pid"]), 0)
            continue  # the owner still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # a live process of another user
        at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with mlflow_errors(f"marking orphaned run {run.info.run_id} FAILED", uri):
            client.set_tag(run.info.run_id, "rgops.failure",
                           f"owner process {tags['rgops.pid']} on {host} died; marked FAILED at {at}")
            client.set_terminated(run.info.run_id, status="FAILED")
        log.warning("run %s was left RUNNING by dead process %s; marked FAILED", run.info.run_id, tags["rgops.pid"])
        reaped.append(run.info.run_id)
    return reaped
