"""Run a suite on a frame and stop the pipeline with a message that says what failed and where."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig

from validation.suites import Suite

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
logging.getLogger("great_expectations").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Failure:
    expectation: str
    column: str | None
    unexpected_count: int | None
    examples: list[Any]

    def __str__(self) -> str:
        where = f"column {self.column!r}" if self.column else "table"
        count = f"{self.unexpected_count} unexpected values" if self.unexpected_count is not None else "failed"
        sample = f", e.g. {self.examples[:3]}" if self.examples else ""
        return f"{where}: {self.expectation} — {count}{sample}"


@dataclass(frozen=True)
class ValidationOutcome:
    suite: str
    dataset: str
    success: bool
    evaluated: int
    failures: list[Failure] = field(default_factory=list)
    docs_index: Path | None = None

    def summary(self) -> str:
        status = "passed" if self.success else f"FAILED {len(self.failures)} of {self.evaluated} expectations"
        return f"{self.suite} on {self.dataset}: {status}"


class DataValidationError(RuntimeError):
    """A suite failed; downstream steps must not run."""

    def __init__(self, outcome: ValidationOutcome) -> None:
        self.outcome = outcome
        lines = [outcome.summary(), *(f"  - {f}" for f in outcome.failures)]
        if outcome.docs_index:
            lines.append(f"  Data Docs: {outcome.docs_index}")
        super().__init__("\n".join(lines))


def validate_frame(df: pd.DataFrame, suite: Suite, *, dataset: str,
                   docs_dir: Path | None = None, raise_on_failure: bool = True) -> ValidationOutcome:
    """Validate ``df`` with ``suite`` in an ephemeral GX context; optionally build Data Docs HTML."""
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir is not None:
        ctx.add_data_docs_site(site_name="kairos", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
    source = ctx.data_sources.add_pandas("kairos")
    asset = source.add_dataframe_asset(dataset)
    batch_def = asset.add_batch_definition_whole_dataframe("all")
    gx_suite = ctx.suites.add(gx.ExpectationSuite(name=suite.name))
    for e in suite.expectations:
        gx_suite.add_expectation(e.copy(deep=True))
    validation = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"{suite.name}:{dataset}",
                                                                        data=batch_def, suite=gx_suite))
    result = validation.run(batch_parameters={"dataframe": df}, result_format="SUMMARY")
    failures = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        kwargs = cfg.kwargs if cfg is not None else {}
        res = r.result or {}
        failures.append(Failure(expectation=cfg.type if cfg is not None else "unknown expectation",
                                column=kwargs.get("column") or kwargs.get("column_A"),
                                unexpected_count=res.get("unexpected_count"),
                                examples=list(res.get("partial_unexpected_list") or [])))
    docs_index = None
    if docs_dir is not None:
        ctx.build_data_docs(site_names=["kairos"])
        index = Path(docs_dir) / "index.html"
        docs_index = index if index.exists() else None
    outcome = ValidationOutcome(suite=suite.name, dataset=dataset, success=bool(result.success),
                                evaluated=len(result.results), failures=failures, docs_index=docs_index)
    if raise_on_failure and not outcome.success:
        raise DataValidationError(outcome)
    return outcome
