"""Train, evaluate, track and promote the purchase-propensity and churn models.

``train_all(settings)`` runs, per task of ``training.run`` (the built-in purchase propensity and churn, or
tasks a user configures for their own log under ``training.tasks``, :class:`conf.settings.TrainingTaskSettings`):

1. decision points and labels: moments inside sessions, as serving asks (:mod:`training.labels`, plus the
   simulator's oracle score when its truth is there), or every customer seen before each cutoff date on a
   schedule (:mod:`training.cutoffs`), with the task's label horizon;
2. the point-in-time training set from the offline engine
   (``SparkRetrieval.training_set`` with the model's feature service);
3. the Great Expectations training-set suite (:mod:`validation.training_suite`),
   with Data Docs; a failure raises ``DataValidationError`` and nothing
   downstream runs;
4. a time split (train on earlier decision points, test on the later ones, an
   embargo between; at cutoffs: the latest cutoffs are the test set and a train
   cutoff's label window closes before them), XGBoost tuned by user-grouped
   cross-validation with early stopping, a logistic-regression baseline, a
   heuristic and, when the task asks for it, the classical BG/NBD model
   (:mod:`training.classical`);
5. holdout metrics (AUC, PR-AUC, log loss, Brier, ECE) for all three and the
   oracle's AUC on the same rows;
6. an MLflow run (parameters, metrics, plots, feature importance, SHAP summary,
   fingerprint, the feature contract, signature, input example) and a registry
   version that is ``challenger`` and becomes ``champion`` only through the gate
   (:mod:`training.registry`).

The event log is read from ``settings.events_path`` and the truth from
``truth/`` beside it; the offline tables are backfilled with Spark when missing.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import infer_signature
from pyspark.sql import SparkSession

from conf.settings import BUILTIN_TASKS, ChurnTrainingSettings, ModelTrainingSettings, Settings, TrainingTaskSettings
from features.registry import REGISTRY
from features.spec import FeatureView
from pipelines.progress import Progress, as_progress
from pipelines.spark.backfill import SparkBackfill
from pipelines.spark.retrieval import SparkRetrieval
from pipelines.spark.session import spark_session
from training import labels as lbl
from training.classical import BGNBD_FEATURES, BGNBDModel, fit_bgnbd
from training.contract import FEATURES_ARTIFACT, ModelContract
from training.cutoffs import CutoffSplit, cutoff_dates, cutoff_labels, cutoff_points, cutoff_split
from training.datasets import TimeSplit, TrainingFrame, build_training_frame, fingerprint, time_split
from training.metrics import (
    auc,
    binary_metrics,
    plot_calibration,
    plot_importance,
    plot_pr,
    plot_roc,
    plot_shap_summary,
)
from training.models import (
    HEURISTICS,
    LOGREG_C,
    TARGET_HEURISTICS,
    Heuristic,
    fit_heuristic,
    train_logreg,
    train_xgboost,
    user_folds,
)
from training.registry import (
    client_for,
    ensure_experiment,
    model_contract,
    register_and_gate,
    registered_model_name,
)
from validation.training_suite import TrainingSetSpec, validate_training_set

PURCHASE: Final = "purchase_propensity"
CHURN: Final = "churn"
SCORERS: Final = ("xgboost", "logreg", "heuristic", "bgnbd")  # in report order; a task has those it can fit
SHAP_ROWS: Final = 2000


# ------------------------------------------------------------------------------------------------ report
@dataclass
class ModelReport:
    """What training one model measured and decided."""

    model: str
    feature_service: str
    features: list[str]
    label_definition: str
    rows_train: int
    rows_test: int
    label_rate_train: float
    label_rate_test: float
    metrics: dict[str, dict[str, float]]  # scorer -> holdout metrics
    oracle_auc: float | None
    fingerprint: str
    run_id: str
    registered_model: str
    version: str
    alias: str
    reason: str
    xgboost_params: dict[str, Any] = field(default_factory=dict)
    excluded_features: dict[str, str] = field(default_factory=dict)
    data_docs: str | None = None
    seconds: float = 0.0

    @property
    def auc(self) -> dict[str, float]:
        return {k: v["auc"] for k, v in self.metrics.items()}

    @property
    def baselines(self) -> list[str]:
        return [k for k in SCORERS if k in self.metrics and k != "xgboost"]

    @property
    def beats_baselines(self) -> bool:
        return all(self.auc["xgboost"] > self.auc[b] for b in self.baselines)

    @property
    def auc_over(self) -> dict[str, float]:
        """By how much XGBoost's holdout AUC beats each baseline's (negative: it does not)."""
        return {b: self.auc["xgboost"] - self.auc[b] for b in self.baselines}

    @property
    def gap_to_oracle(self) -> float | None:
        return None if self.oracle_auc is None else self.oracle_auc - self.auc["xgboost"]

    def lines(self) -> list[str]:
        out = [f"{self.model}: {self.label_definition}",
               f"  feature service {self.feature_service} ({len(self.features)} model features); "
               f"{self.rows_train:,} train / {self.rows_test:,} test decision points, label rate "
               f"{self.label_rate_train:.3f} / {self.label_rate_test:.3f}",
               f"  {'holdout':10s} {'AUC':>7s} {'PR-AUC':>7s} {'logloss':>8s} {'Brier':>7s} {'ECE':>7s}"]
        for name in (k for k in SCORERS if k in self.metrics):
            m = self.metrics[name]
            out.append(f"  {name:10s} {m['auc']:7.4f} {m['pr_auc']:7.4f} {m['log_loss']:8.4f} {m['brier']:7.4f} "
                       f"{m['ece']:7.4f}")
        if self.oracle_auc is not None:
            gap = self.gap_to_oracle or 0.0
            out.append(f"  {'oracle':10s} {self.oracle_auc:7.4f}   (simulator truth; XGBoost is {gap:+.4f} "
                       f"below it: {'within' if gap <= 0.02 else 'NOT within'} the 0.02 target)")
        verdict = "beats" if self.beats_baselines else "does NOT beat"
        over = ", ".join(f"{b} by {d:+.4f}" for b, d in self.auc_over.items())
        out.append(f"  XGBoost {verdict} every baseline on the holdout AUC ({over})")
        out.append(f"  {self.registered_model} v{self.version} -> {self.alias}: {self.reason}")
        out.append(f"  run {self.run_id}; training set sha256 {self.fingerprint[:16]}...")
        return out


@dataclass
class TrainingReport:
    models: dict[str, ModelReport]
    tracking_uri: str
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"MLflow tracking: {self.tracking_uri}"]
        for r in self.models.values():
            out.extend(r.lines())
        out.append(f"trained {len(self.models)} models in {self.seconds:.1f}s")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "seconds": self.seconds,
                "models": {k: {**asdict(v), "beats_baselines": v.beats_baselines, "auc_over": v.auc_over,
                               "gap_to_oracle": v.gap_to_oracle}
                           for k, v in self.models.items()}}


# ------------------------------------------------------------------------------------------------ tasks
@dataclass(frozen=True)
class Task:
    """A model to train: a built-in one (``training.purchase``, ``training.churn``) or one configured under
    ``training.tasks`` (:class:`conf.settings.TrainingTaskSettings`: decision points in session or at cutoffs)."""

    name: str
    cfg: ModelTrainingSettings | TrainingTaskSettings

    @property
    def configured(self) -> TrainingTaskSettings | None:
        return self.cfg if isinstance(self.cfg, TrainingTaskSettings) else None

    @property
    def at_cutoffs(self) -> bool:
        return self.configured is not None and self.configured.decision_points == "cutoffs"

    @property
    def label_definition(self) -> str:
        h = _fmt(self.cfg.horizon)
        own = self.configured
        if own is not None:
            at = f"the {own.schedule} cutoff" if self.at_cutoffs else "the decision point"
            return (f"a purchase within {h} after {at}" if own.target == "purchase"
                    else f"no event of the customer within {h} after {at}")
        if self.name == PURCHASE:
            return f"a purchase within {h} after the decision point"
        assert isinstance(self.cfg, ChurnTrainingSettings)
        if self.cfg.label == "simulator":
            return f"the user stops for good within {h} (simulator churn_stop)"
        return f"no activity for {_fmt(self.cfg.inactivity)} after the session"

    def labels(self, points: pd.DataFrame, events: pd.DataFrame, truth: lbl.Truth | None) -> pd.DataFrame:
        own = self.configured
        if own is not None:
            if self.at_cutoffs:
                return cutoff_labels(cutoff_points(events, cutoff_dates(events, own)), events, own)
            if own.target == "purchase":
                return lbl.purchase_labels(points, events, own.horizon)
            return lbl.churn_labels_inactivity(points, events, own.horizon)
        if self.name == PURCHASE:
            return lbl.purchase_labels(points, events, self.cfg.horizon)
        assert isinstance(self.cfg, ChurnTrainingSettings)
        if self.cfg.label == "inactivity":
            return lbl.churn_labels_inactivity(points, events, self.cfg.inactivity)
        if truth is None:
            raise FileNotFoundError("churn label 'simulator' needs the simulator's truth tables; "
                                    "set training.churn.label: inactivity for a real event log")
        return lbl.churn_labels_simulator(points, truth, self.cfg.horizon)

    def oracle(self, labelled: pd.DataFrame, events: pd.DataFrame, truth: lbl.Truth | None) -> pd.Series | None:
        if truth is None or self.configured is not None:  # the oracles score the built-in tasks' labels
            return None
        if self.name == PURCHASE:
            return lbl.purchase_oracle(labelled, events, truth, self.cfg.horizon)
        assert isinstance(self.cfg, ChurnTrainingSettings)
        if self.cfg.label != "simulator":
            return None  # the oracle scores the simulator's churn, not the inactivity label
        return lbl.churn_oracle(labelled, truth, self.cfg.horizon)

    def split(self, times: pd.Series, test_fraction: float) -> TimeSplit:
        if self.at_cutoffs:
            assert self.configured is not None
            return cutoff_split(times, test_cutoffs=self.configured.test_cutoffs, horizon=self.cfg.horizon)
        return time_split(times, test_fraction=test_fraction, embargo=self.cfg.embargo)

    def heuristic(self, columns: Sequence[str]) -> Heuristic | None:
        """The task's rule of thumb, if the training set holds its features."""
        own = self.configured
        if own is None:
            return HEURISTICS[self.name]
        candidates = [TARGET_HEURISTICS[own.target]]
        if own.target == "purchase":
            candidates.append(HEURISTICS[PURCHASE])
        return next((h for h in candidates if set(h.features) <= set(columns)), None)


def _fmt(td: timedelta) -> str:
    hours = td.total_seconds() / 3600
    return f"{hours / 24:g} days" if hours >= 48 and hours % 24 == 0 else f"{hours:g} hours"


def tasks(settings: Settings, names: Sequence[str] | None = None) -> list[Task]:
    """The tasks ``training.run`` names (or ``names``): built-in ones and those under ``training.tasks``."""
    t = settings.training
    builtin: dict[str, ModelTrainingSettings] = {PURCHASE: t.purchase, CHURN: t.churn}
    out = []
    for name in names or t.run:
        if name in builtin:
            out.append(Task(name, builtin[name]))
        elif name in t.tasks:
            out.append(Task(name, t.tasks[name]))
        else:
            raise KeyError(f"no training task {name!r}: built-in {list(BUILTIN_TASKS)} or training.tasks "
                           f"{sorted(t.tasks)}")
    return out


def training_set_spec(task: Task) -> TrainingSetSpec:
    service = REGISTRY.service(task.cfg.feature_service)
    keys = tuple(dict.fromkeys(v.entity.join_key for v in service.stored_views))
    return TrainingSetSpec(model=task.name, service=service, keys=keys, label_rate_min=task.cfg.label_rate_min,
                           label_rate_max=task.cfg.label_rate_max, max_null_rate=task.cfg.max_null_rate)


def select_features(features: Sequence[str], settings: Settings, train_span: timedelta,
                    exclude: Mapping[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The service's numeric features, less the model's configured exclusions and the calendar
    features the train period is too short to learn; returns them and ``{excluded: reason}``."""
    t = settings.training
    excluded: dict[str, str] = {}
    unknown = sorted(set(exclude or {}) - set(features))
    if unknown:
        raise ValueError(f"exclude_features names {unknown}, which are not numeric features of the model's "
                         f"feature service")
    excluded.update(exclude or {})
    if train_span < t.calendar_min_span:
        for f in t.calendar_features:
            if f in features:
                excluded[f] = (f"train period {train_span} is shorter than calendar_min_span "
                               f"{t.calendar_min_span}: too few of each weekday to learn from")
    return [f for f in features if f not in excluded], excluded


# ------------------------------------------------------------------------------------------------ steps
def offline_tables_present(settings: Settings, views: Sequence[FeatureView] | None = None) -> bool:
    return not missing_offline_tables(settings, views)


def missing_offline_tables(settings: Settings, views: Sequence[FeatureView] | None = None) -> list[FeatureView]:
    """The views (default: every registered one) without an offline table under ``settings.offline_path``."""
    return [v for v in (REGISTRY.views if views is None else views)
            if not any((settings.offline_path / v.name).rglob("*.parquet"))]


def ensure_offline_tables(builder: SparkBackfill, events_dir: Path, progress: Progress,
                          views: Sequence[FeatureView] | None = None) -> None:
    """Backfill the offline tables of ``views`` (default: every view) that are missing, and only those."""
    missing = missing_offline_tables(builder.settings, views)
    if not missing:
        progress(f"offline tables present under {builder.settings.offline_path}")
        return
    progress(f"offline tables missing ({', '.join(v.name for v in missing)}): Spark backfill from {events_dir}")
    t0 = time.perf_counter()
    builder.progress = progress
    report = builder.backfill(events_path=events_dir, views=missing)
    progress(f"  built {report.views} in {time.perf_counter() - t0:.1f}s")


def _days(cutoffs: Sequence[Any]) -> str:
    return f"{cutoffs[0]:%Y-%m-%d}..{cutoffs[-1]:%Y-%m-%d} ({len(cutoffs)})" if cutoffs else "-"


def _fit_bgnbd(task: Task, train: pd.DataFrame) -> BGNBDModel | None:
    """The BG/NBD baseline of a configured task that asks for it (``baselines: [bgnbd]``), on the train rows."""
    own = task.configured
    if own is None or "bgnbd" not in own.baselines:
        return None
    missing = [f for f in BGNBD_FEATURES if f not in train.columns]
    if missing:
        raise ValueError(f"[{task.name}] the bgnbd baseline reads {missing}, which feature service "
                         f"{own.feature_service!r} lacks: use customer_value_v1 or drop bgnbd from baselines")
    return fit_bgnbd(train, horizon_days=own.horizon / timedelta(days=1), churn=own.target == "churn")


def champion_scorer(client: Any, name: str, test: pd.DataFrame, metric: str) -> Callable[[ModelVersion], float]:
    def score(version: ModelVersion) -> float:
        feats = list(model_contract(client, version).features)
        missing = [f for f in feats if f not in test.columns]
        if missing:
            raise LookupError(f"it needs features {missing[:5]} the holdout lacks")
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
        pred = np.asarray(model.predict(test[feats].astype("float64")), dtype=float).reshape(-1)
        y = test[lbl.LABEL].to_numpy()
        return auc(y, pred) if metric == "auc" else binary_metrics(y, pred)[metric]
    return score


def train_model(task: Task, settings: Settings, retrieval: SparkRetrieval, events: pd.DataFrame,
                truth: lbl.Truth | None, points: pd.DataFrame, progress: Progress) -> ModelReport:
    t0 = time.perf_counter()
    tcfg = settings.training
    spec = training_set_spec(task)
    labelled = task.labels(points, events, truth)
    oracle = task.oracle(labelled, events, truth)
    labelled[lbl.ORACLE] = np.nan if oracle is None else oracle.to_numpy()
    progress(f"[{task.name}] {len(labelled):,} decision points, label rate {labelled[lbl.LABEL].mean():.3f}; "
             f"point-in-time join with {spec.service.name}")
    tf: TrainingFrame = build_training_frame(retrieval, labelled, spec.service)
    frame = tf.frame

    docs = settings.validation_docs_path / f"training_set.{task.name}"
    outcome = validate_training_set(frame, spec, docs_dir=docs)  # raises DataValidationError: nothing below runs
    progress(f"[{task.name}] {outcome.summary()} ({outcome.evaluated} expectations); Data Docs {outcome.docs_index}")

    split = task.split(frame[lbl.DECISION_TIME], tcfg.test_fraction)
    train, test = frame.iloc[split.train].reset_index(drop=True), frame.iloc[split.test].reset_index(drop=True)
    span = train[lbl.DECISION_TIME].max() - train[lbl.DECISION_TIME].min()
    features, excluded = select_features(tf.features, settings, span.to_pytimedelta(),
                                         task.cfg.exclude_features)
    y_train, y_test = train[lbl.LABEL].to_numpy(), test[lbl.LABEL].to_numpy()
    for part, y in (("train", y_train), ("test", y_test)):
        if len(np.unique(y)) < 2:
            raise ValueError(f"[{task.name}] the {part} period has only label {y[0]}: simulate more users or days")
    folds = user_folds(train["user_id"], tcfg.cv_folds, y_train)
    by_cutoff = (f" (cutoffs {_days(split.train_cutoffs)} train, {_days(split.test_cutoffs)} test)"
                 if isinstance(split, CutoffSplit) else "")
    progress(f"[{task.name}] train {len(train):,} rows until {split.train_end:%Y-%m-%d %H:%M}, test {len(test):,} "
             f"rows from {split.test_start:%Y-%m-%d %H:%M}{by_cutoff}; {len(features)} features"
             + (f" (excluded {sorted(excluded)})" if excluded else ""))

    grid = len(tcfg.xgboost.max_depth) * len(tcfg.xgboost.min_child_weight)
    with progress.task(f"{task.name} cross-validation", total=(grid + len(LOGREG_C)) * len(folds),
                       unit="folds") as fits:
        xgbm = train_xgboost(train, y_train, features, folds, tcfg.xgboost, seed=tcfg.seed, on_fit=fits.advance)
        logreg = train_logreg(train, y_train, features, folds, seed=tcfg.seed, on_fit=fits.advance)
    rule = task.heuristic(list(train.columns))
    heuristic = None if rule is None else fit_heuristic(rule, train, y_train)
    bgnbd = _fit_bgnbd(task, train)
    probs = {"xgboost": xgbm.predict_proba(test), "logreg": logreg.predict_proba(test)}
    if heuristic is not None:
        probs["heuristic"] = heuristic.predict_proba(test)
    if bgnbd is not None:
        probs["bgnbd"] = bgnbd.predict_proba(test)
    metrics = {k: binary_metrics(y_test, p, bins=tcfg.calibration_bins) for k, p in probs.items()}
    oracle_auc = None if oracle is None else auc(y_test, test[lbl.ORACLE].to_numpy())
    progress(f"[{task.name}] holdout AUC " + ", ".join(f"{k} {m['auc']:.4f}" for k, m in metrics.items())
             + (f", oracle {oracle_auc:.4f}" if oracle_auc is not None else ""))

    fp_columns = [*spec.keys, lbl.DECISION_TIME, lbl.LABEL, *(f.name for f in spec.features)]
    fp = fingerprint(frame, fp_columns)
    client = client_for(settings)
    experiment_id = ensure_experiment(client, settings, task.name)
    name = registered_model_name(settings, task.name)
    contract = ModelContract(
        model=task.name, registered_model=name, feature_service=spec.service.name,
        feature_refs=tuple(r for r in spec.service.feature_refs if r.split(":", 1)[1] in features),
        features=tuple(features), entity_keys=tuple(spec.keys), label=task.label_definition, training_set_sha256=fp)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{task.name}-xgboost") as run:
        run_id = run.info.run_id
        mlflow.set_tags({"kairos.model": task.name, "feature_service": spec.service.name,
                         "training_set_sha256": fp, "label": task.label_definition})
        mlflow.log_params({
            "model": task.name, "feature_service": spec.service.name, "n_features": len(features),
            "label": task.label_definition, "horizon": str(task.cfg.horizon), "embargo": str(task.cfg.embargo),
            "decision_points_per_session": tcfg.decision_points_per_session, "seed": tcfg.seed,
            "test_fraction": tcfg.test_fraction, "cv_folds": tcfg.cv_folds, "cv": "GroupKFold by user_id",
            "train_end": split.train_end.isoformat(), "test_start": split.test_start.isoformat(),
            "rows_train": len(train), "rows_test": len(test), "training_set_sha256": fp,
            "xgb_max_depth": xgbm.params["max_depth"], "xgb_min_child_weight": xgbm.params["min_child_weight"],
            "xgb_eta": xgbm.params["eta"], "xgb_rounds": xgbm.rounds, "xgb_subsample": xgbm.params["subsample"],
            "xgb_colsample_bytree": xgbm.params["colsample_bytree"], "xgb_lambda": xgbm.params["lambda"],
            "logreg_C": logreg.c, "heuristic": heuristic.rule.description if heuristic is not None else "-",
            "excluded_features": ",".join(sorted(excluded)) or "-",
            "decision_points": "cutoffs" if task.at_cutoffs else "in_session",
        })
        if isinstance(split, CutoffSplit):
            mlflow.log_params({"schedule": task.configured.schedule if task.configured else "-",
                               "train_cutoffs": _days(split.train_cutoffs), "test_cutoffs": _days(split.test_cutoffs)})
        if bgnbd is not None:
            mlflow.log_params({"bgnbd_features": ",".join(BGNBD_FEATURES), "bgnbd_customers": bgnbd.customers,
                               "bgnbd_library": "lifetimes.BetaGeoFitter",
                               **{f"bgnbd_{k}": round(v, 6) for k, v in bgnbd.params.items()}})
        flat = {f"{scorer}_{k}": v for scorer, m in metrics.items() for k, v in m.items()}
        flat |= {f"xgboost_{k}": v for k, v in xgbm.cv.items()} | {"logreg_cv_auc": logreg.cv_auc}
        flat |= {"label_rate_train": float(y_train.mean()), "label_rate_test": float(y_test.mean())}
        # by how much XGBoost beats each baseline on the holdout (negative: it does not)
        flat |= {f"xgboost_auc_over_{k}": metrics["xgboost"]["auc"] - m["auc"] for k, m in metrics.items()
                 if k != "xgboost"}
        if oracle_auc is not None:
            flat |= {"oracle_auc": oracle_auc, "oracle_gap_auc": oracle_auc - metrics["xgboost"]["auc"]}
        mlflow.log_metrics(flat)
        _log_artifacts(task, test, y_test, probs, xgbm, contract, fp, fp_columns, frame, metrics, oracle_auc,
                       excluded, tcfg.calibration_bins, docs)
        x_example = test[features].astype("float64").head(5)
        signature = infer_signature(test[features].astype("float64").head(200), probs["xgboost"][:200])
        info = mlflow.xgboost.log_model(xgbm.booster, name="model", signature=signature, input_example=x_example,
                                        model_format="ubj")
    metric = tcfg.promotion_metric
    version, decision = register_and_gate(
        client, name=name, model_uri=info.model_uri, run_id=run_id, metric=metric,
        challenger_value=metrics["xgboost"][metric], margin=tcfg.promotion_margin,
        score_champion=champion_scorer(client, name, test, metric),
        tags={"feature_service": spec.service.name, "training_set_sha256": fp})
    progress(f"[{task.name}] {name} v{version.version} -> {decision.outcome}: {decision.reason}")
    return ModelReport(
        model=task.name, feature_service=spec.service.name, features=features,
        label_definition=task.label_definition, rows_train=len(train), rows_test=len(test),
        label_rate_train=float(y_train.mean()), label_rate_test=float(y_test.mean()), metrics=metrics,
        oracle_auc=oracle_auc, fingerprint=fp, run_id=run_id, registered_model=name, version=str(version.version),
        alias=decision.outcome, reason=decision.reason,
        xgboost_params={"max_depth": xgbm.params["max_depth"], "min_child_weight": xgbm.params["min_child_weight"],
                        "rounds": xgbm.rounds, **xgbm.cv},
        excluded_features=excluded, data_docs=str(outcome.docs_index) if outcome.docs_index else None,
        seconds=time.perf_counter() - t0)


def _log_artifacts(task: Task, test: pd.DataFrame, y_test: np.ndarray, probs: dict[str, np.ndarray],
                   xgbm: Any, contract: ModelContract, fp: str, fp_columns: list[str], frame: pd.DataFrame,
                   metrics: dict[str, dict[str, float]], oracle_auc: float | None, excluded: dict[str, str],
                   bins: int, docs: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        scores = dict(probs)
        if oracle_auc is not None:
            scores["oracle (truth)"] = test[lbl.ORACLE].to_numpy()
        title = task.name.replace("_", " ")
        plot_roc(y_test, scores, d / "plots" / "roc.png", f"ROC, holdout: {title}")
        plot_pr(y_test, scores, d / "plots" / "pr.png", f"Precision-recall, holdout: {title}")
        plot_calibration(y_test, probs, d / "plots" / "calibration.png", f"Calibration, holdout: {title}", bins)
        importance = xgbm.importance()
        plot_importance(importance, d / "plots" / "feature_importance.png", f"XGBoost total gain: {title}")
        sample = test.sample(min(SHAP_ROWS, len(test)), random_state=0)
        contribs = xgbm.contributions(sample)
        plot_shap_summary(contribs, sample[xgbm.features].to_numpy(float), list(xgbm.features),
                          d / "plots" / "shap_summary.png", f"SHAP summary (TreeSHAP), holdout: {title}")
        mean_abs = dict(zip(xgbm.features, np.abs(contribs).mean(axis=0).round(6).tolist(), strict=True))
        files = {
            FEATURES_ARTIFACT: contract.to_json(),
            "feature_importance.json": dict(sorted(importance.items(), key=lambda kv: -kv[1])),
            "shap_mean_abs.json": dict(sorted(mean_abs.items(), key=lambda kv: -kv[1])),
            "metrics.json": {"holdout": metrics, "oracle_auc": oracle_auc, "xgboost_cv": xgbm.cv,
                             "xgboost_grid": xgbm.grid, "excluded_features": excluded},
            "training_set_fingerprint.json": {
                "sha256": fp, "columns": fp_columns, "rows": len(frame),
                "decision_time_min": str(frame[lbl.DECISION_TIME].min()),
                "decision_time_max": str(frame[lbl.DECISION_TIME].max()),
                "label_rate": float(frame[lbl.LABEL].mean())},
        }
        for fname, data in files.items():
            (d / fname).write_text(json.dumps(data, indent=1, default=str) + "\n")
        mlflow.log_artifacts(str(d))
    if docs.exists():
        mlflow.log_artifacts(str(docs), "data_docs")


# ------------------------------------------------------------------------------------------------ entry point
def train_all(settings: Settings, *, events_dir: Path | str | None = None, truth_dir: Path | str | None = None,
              spark: SparkSession | None = None, progress: Progress | Callable[[str], None] | None = print,
              task_names: Sequence[str] | None = None) -> TrainingReport:
    """Train the tasks of ``training.run`` (or ``task_names``) on the simulated (or imported) event log; see the
    module docstring.

    ``progress``: a :class:`~pipelines.progress.Progress` (a task per model's cross-validation folds) or a line
    callback."""
    t0 = time.perf_counter()
    progress = as_progress(progress)
    events_path = Path(events_dir) if events_dir is not None else settings.events_path
    truth_path = Path(truth_dir) if truth_dir is not None else events_path.parent / "truth"
    if not any(events_path.rglob("*.parquet")):
        raise FileNotFoundError(f"no event log under {events_path}: simulate first (make simulate)")
    chosen = tasks(settings, task_names)
    views: list[FeatureView] = []
    for t in chosen:
        views += [v for v in REGISTRY.service(t.cfg.feature_service).stored_views if v not in views]
    spark = spark or spark_session(settings)
    ensure_offline_tables(SparkBackfill(settings, spark=spark), events_path, progress, views)
    retrieval = SparkRetrieval(settings, spark=spark)
    events = lbl.read_events(events_path)
    truth = lbl.Truth.read(truth_path) if (truth_path / "users.parquet").exists() else None
    if truth is None and any(t.configured is None for t in chosen):
        progress(f"no simulator truth under {truth_path}: no oracle AUC")
    tcfg = settings.training
    points = pd.DataFrame()
    if not all(t.at_cutoffs for t in chosen):  # moments inside sessions, for the tasks that ask there
        points = lbl.sample_decision_points(events, per_session=tcfg.decision_points_per_session, seed=tcfg.seed)
        progress(f"{len(events):,} events, {points['session_id'].nunique():,} sessions, {len(points):,} decision "
                 "points in session")
    else:
        progress(f"{len(events):,} events of {events['user_id'].nunique():,} customers")
    reports = {task.name: train_model(task, settings, retrieval, events, truth, points, progress)
               for task in chosen}
    return TrainingReport(models=reports, tracking_uri=settings.mlflow_tracking_uri,
                          seconds=time.perf_counter() - t0)
