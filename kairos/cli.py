"""``kairos``: the command line of the platform, as ``feast`` is Feast's.

Every subcommand reads the settings object (``conf/kairos.yaml``, ``KAIROS_*`` environment
variables; ``--config`` names another YAML) and calls one job step of :mod:`kairos.jobs`;
long steps show progress bars. ``kairos --help`` lists them, ``kairos <command> --help``
their options. The Makefile's targets call these commands.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from conf.settings import Settings, load_settings
from kairos import jobs
from kairos.progress import LOGS, RichProgress, quiet_dependencies
from pipelines.engine import BuildReport
from pipelines.ingest.import_config import ImportConfigError, SourceError

app = typer.Typer(name="kairos", no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  help="Kairos: behavioural events to fresh features, models and decisions.")
console = Console()
if not console.is_terminal:  # a log (CI, a pipe): wide lines rather than rich's 80 columns
    console.width = 120
state: dict[str, Any] = {"verbose": False}


@app.callback()
def _global(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="settings YAML (default: KAIROS_CONFIG, "
                                                "else conf/kairos.yaml under KAIROS_HOME or here)",
                                                exists=True, dir_okay=False)] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Spark's, MLflow's and Feast's own "
                                          "logs instead of writing them to data_dir/logs/")] = False,
) -> None:
    if config is not None:
        os.environ["KAIROS_CONFIG"] = str(config.resolve())
    state["verbose"] = verbose


def settings() -> Settings:
    try:
        return load_settings()
    except Exception as exc:  # a bad YAML or environment value: name it, no traceback
        console.print(f"[red]error:[/red] invalid settings: {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc


class _Quiet:
    """Dependencies' stderr to ``data_dir/logs/kairos.log`` unless ``--verbose``."""

    def __init__(self, s: Settings) -> None:
        self.path = s.data_path / LOGS / "kairos.log"
        self.cm: Any = None

    def __enter__(self) -> None:
        if not state["verbose"]:
            self.cm = quiet_dependencies(self.path)
            self.cm.__enter__()
            console.print(f"[dim]Spark, MLflow and Feast log to {self.path} (--verbose shows them)[/dim]")

    def __exit__(self, *exc: Any) -> None:
        if self.cm is not None:
            self.cm.__exit__(*exc)
            if exc[0] is not None:
                console.print(f"[red]failed[/red]; the dependencies' log is {self.path}")


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, title_justify="left", min_width=min(len(title), console.width))
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*(f"{v:,}" if isinstance(v, int) else str(v) for v in r))
    return t


def build_table(title: str, report: BuildReport) -> Table:
    rows: list[list[Any]] = [[v, n] for v, n in report.views.items()]
    rows += [[f"not counted: {k}", n] for k, n in report.dropped.items() if n]
    rows += [[f"collisions: {k}", n] for k, n in report.collisions.items() if n]
    return table(title, ["view", "change points"], rows)


# ----------------------------------------------------------------------------------------------- commands
@app.command()
def demo(
    users: Annotated[int, typer.Option(help="simulated users")] = 1000,
    days: Annotated[int, typer.Option(help="simulated days")] = 14,
) -> None:
    """The main job end to end on the embedded defaults: simulate, validate, Spark, Bytewax, parity, an online
    read, training; a summary table at the end."""
    from kairos.demo import render_summary, run  # the demo imports the parity rules: only for this command

    s = settings()
    console.print(f"[bold]Kairos demo[/bold]: {users:,} users x {days} days on the embedded defaults "
                  f"(SQLite online store, local parquet, MLflow on SQLite) under {s.data_path}")
    with _Quiet(s):
        summary = run(s, users=users, days=days, progress=RichProgress(console), console=console)
    console.print(render_summary(summary))
    if not summary.agrees:
        console.print("[red]the engines disagree with the reference[/red]")
        raise typer.Exit(1)


@app.command()
def simulate(
    users: Annotated[int | None, typer.Option(help="default: simulator.users")] = None,
    days: Annotated[int | None, typer.Option(help="default: simulator.days")] = None,
    seed: Annotated[int | None, typer.Option(help="default: simulator.seed")] = None,
    out: Annotated[Path | None, typer.Option(help="writes OUT/events and OUT/truth (default: data_dir)")] = None,
    duplicate_rate: Annotated[float | None, typer.Option(min=0, max=1)] = None,
    out_of_order_rate: Annotated[float | None, typer.Option(min=0, max=1)] = None,
    late_rate: Annotated[float | None, typer.Option(min=0, max=1)] = None,
    workers: Annotated[int, typer.Option(min=1, help="processes (the output does not depend on it)")] = 1,
    chunk_users: Annotated[int, typer.Option(min=1, help="users per chunk (bounds memory)")] = 4000,
    jsonl: Annotated[bool, typer.Option(help="also write OUT/stream.jsonl, the stream's replay file")] = False,
) -> None:
    """Simulate behavioural events (and their latent truth) into the event log."""
    s = settings()
    rates = {k: v for k, v in {"duplicate_rate": duplicate_rate, "out_of_order_rate": out_of_order_rate,
                               "late_rate": late_rate}.items() if v is not None}
    with console.status("simulating"):
        sim = jobs.simulate(s, users=users, days=days, seed=seed, out=out, workers=workers, chunk_users=chunk_users,
                            jsonl=jsonl, **rates)
    console.print(f"{sim.rows:,} events for {sim.users:,} users ({sim.sessions:,} sessions) in {sim.seconds:.1f}s "
                  f"= {sim.rows_per_second:,.0f} events/s -> {sim.out_dir}")
    console.print(table("events by type", ["type", "events"], [[k, v] for k, v in sim.by_type.items()]))
    console.print("injected: " + ", ".join(f"{k} {v:,}" for k, v in sim.anomalies.items()))


@app.command("import")
def import_(
    mapping: Annotated[Path, typer.Option(help="the import mapping, e.g. conf/importers/retail_transactions.yaml",
                                          exists=True, dir_okay=False)],
    input: Annotated[Path, typer.Option("--input", help="the source file (CSV or parquet)", exists=True,
                                        dir_okay=False)],
    out: Annotated[Path | None, typer.Option(help="event log root to write day partitions into "
                                             "(default: data_dir/events)")] = None,
    dead_letter: Annotated[Path | None, typer.Option(help="dead-letter JSON-lines file (default: "
                                                     "<out>/../dead_letter/import-<name>-<file>.jsonl)")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="validation processes for large inputs "
                                                "(default: CPUs, at most 4)")] = None,
) -> None:
    """Import a foreign event log (a CSV or parquet export) as Kairos events, through a mapping."""
    s = settings()
    try:
        with console.status(f"importing {input}"):
            summary = jobs.import_log(s, mapping, input, out=out, dead_letter=dead_letter, workers=workers)
    except (ImportConfigError, SourceError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    console.print(summary.render(), highlight=False, markup=False, soft_wrap=True)


@app.command()
def apply(
    write_only: Annotated[bool, typer.Option(help="write the repo folder only, without feast apply")] = False,
) -> None:
    """Generate the Feast repo from the specs and run feast apply (registry, online store tables)."""
    s = settings()
    with _Quiet(s), console.status("feast apply"):
        applied = jobs.apply(s, write_only=write_only)
    console.print(f"feast repo: {applied.repo}")
    if applied.registry:
        console.print(f"registry: {applied.registry}  online store: {s.online_store.type}  "
                      f"offline store: {s.offline_store.type}")
        for line in applied.objects:
            console.print(f"  {line}", highlight=False)


@app.command()
def backfill(
    start: Annotated[datetime | None, typer.Option(formats=["%Y-%m-%d"], help="first UTC day (default: the "
                                                   "log's start)")] = None,
    end: Annotated[datetime | None, typer.Option(formats=["%Y-%m-%d"], help="UTC day after the last "
                                                 "(default: the log's end)")] = None,
    view: Annotated[list[str] | None, typer.Option(help="only this view (repeatable)")] = None,
) -> None:
    """Spark: build the offline tables of every feature view for [start, end) from the event log."""
    s = settings()
    with _Quiet(s):
        done = jobs.backfill(s, start=_day(start), end=_day(end), views=view, progress=RichProgress(console))
    console.print(build_table(f"Spark backfill in {done.report.seconds:.1f}s -> {s.offline_path}", done.report))
    if done.dead_letters:
        console.print("dead letters by problem: " + ", ".join(f"{k} {v:,}" for k, v in done.dead_letters.items()))


@app.command()
def stream(
    path: Annotated[Path | None, typer.Option(help="replay file (default: data_dir/stream.jsonl, written from "
                                              "the event log if missing)")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="default: stream.workers")] = None,
    until: Annotated[datetime | None, typer.Option(help="run expiries up to this UTC time at the end (default: "
                                                   "the midnight after the log's last arrival)")] = None,
    live: Annotated[bool, typer.Option(help="Kafka: tail the topic with wall-clock timers until Ctrl-C")] = False,
    online: Annotated[bool, typer.Option(help="write the Feast online store")] = True,
    report_only: Annotated[bool, typer.Option(help="only report the last run's logs")] = False,
) -> None:
    """Bytewax: run the feature dataflow over the settings' source (replay file or Kafka) into the online store."""
    s = settings()
    if report_only:
        from pipelines.stream.flow import stream_report

        console.print(build_table("the last stream run's logs", stream_report()))
        return
    with _Quiet(s):
        done = jobs.stream(s, path=path, workers=workers, until=_utc(until), live=live, online=online,
                           progress=RichProgress(console))
    console.print(build_table(f"Bytewax ({done.workers} worker{'s' if done.workers > 1 else ''}) over {done.source} "
                              f"in {done.report.seconds:.1f}s", done.report))
    for name, where in done.outputs.items():
        if where:
            console.print(f"  {name}: {where}")


@app.command()
def parity(
    users: Annotated[int, typer.Option(min=1)] = 300,
    days: Annotated[int, typer.Option(min=1)] = 6,
    start: Annotated[datetime | None, typer.Option(help="UTC start (default: 2026-10-28, so that the log crosses "
                                                   "a month boundary)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Bytewax workers")] = 2,
    reference_keys: Annotated[int, typer.Option(min=0, help="keys per view checked against the reference "
                                                "(0: all)")] = 200,
    data_dir: Annotated[Path | None, typer.Option(help="default: data_dir/parity-run")] = None,
) -> None:
    """Engine parity: the reference, Spark, Bytewax and Feast on one adversarial simulated log, feature by feature.
    Exits 1 on any disagreement."""
    s = settings()
    with _Quiet(s):
        run = jobs.parity(s, users=users, days=days, start=_utc(start),
                          workers=workers, reference_keys=reference_keys or None, data_dir=data_dir,
                          progress=RichProgress(console))
    console.print(f"{run.simulated.rows:,} simulated events ({users} users x {days} days from "
                  f"{run.simulated_from:%Y-%m-%d}), "
                  "injected " + ", ".join(f"{k} {v:,}" for k, v in run.simulated.anomalies.items()))
    console.print("\n".join(run.report.lines()), highlight=False, markup=False)
    console.print(f"\n{run.report.mismatches} disagreements -> {run.path}")
    if run.report.mismatches:
        raise typer.Exit(1)


@app.command()
def train(
    events: Annotated[Path | None, typer.Option(help="event log directory (default: data_dir/events)")] = None,
    truth: Annotated[Path | None, typer.Option(help="simulator truth (default: truth/ beside the events)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the report as JSON here")] = None,
    task: Annotated[list[str] | None, typer.Option(help="a task to train instead of training.run: "
                                                   "purchase_propensity, churn or one under training.tasks "
                                                   "(repeatable)")] = None,
) -> None:
    """Train the tasks of training.run (purchase propensity and churn by default, or tasks configured under
    training.tasks): point-in-time training sets, XGBoost against the baselines, MLflow, and the
    champion/challenger gate."""
    s = settings()
    try:
        chosen = training_tasks(s, task)
    except KeyError as exc:
        console.print(f"[red]error:[/red] --task: {escape(str(exc.args[0]))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    with _Quiet(s):
        report = jobs.train(s, events_dir=events, truth_dir=truth, progress=RichProgress(console), tasks=chosen)
    console.print(training_table(report))
    console.print(f"MLflow: {report.tracking_uri}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_dict(), indent=1, default=str) + "\n")


@app.command()
def serve(
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port")] = 3000,
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
) -> None:
    """Serve scores, features and event intake: `bentoml serve serving.service:Kairos` on the settings."""
    import os
    import subprocess

    from kairos.server import NO_TRACKING

    root = Path(__file__).resolve().parents[1]  # where the serving package lives (a checkout or site-packages)
    console.print(f"bentoml serve serving.service:Kairos on http://{host}:{port} (OpenAPI: /v1/openapi.json)")
    code = subprocess.call([sys.executable, "-m", "bentoml", "serve", "serving.service:Kairos", "--host", host,
                            "--port", str(port), "--working-dir", str(root)], env={**NO_TRACKING, **os.environ})
    raise typer.Exit(code)


keys_app = typer.Typer(help="API keys of the service: created here, stored as hashes only.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="who the key is for, e.g. web-frontend")],
    scopes: Annotated[str, typer.Option(help="comma-separated: events:write, score, admin")] = "score",
) -> None:
    """Create an API key: print it once, store only its salted hash in serving.keys_file."""
    from serving.security import new_key, store_key

    s = settings()
    try:
        key, record = new_key(name, [x.strip() for x in scopes.split(",") if x.strip()])  # type: ignore[misc]
    except ValueError as exc:
        console.print(f"[red]error:[/red] --scopes: {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    store_key(s.keys_path, record)
    console.print(f"API key {name!r} ({', '.join(record.scopes)}), stored as a hash in {s.keys_path}.")
    console.print("It is shown once; send it as 'Authorization: Bearer <key>':")
    print(key)


@keys_app.command("list")
def keys_list() -> None:
    """The keys the service accepts (names, ids and scopes; never the keys)."""
    from serving.security import read_keys_file

    s = settings()
    rows = [[k.name, k.key_id, ", ".join(k.scopes), "settings"] for k in s.serving.keys]
    rows += [[k.name, k.key_id, ", ".join(k.scopes), str(s.keys_path)] for k in read_keys_file(s.keys_path)]
    console.print(table("API keys", ["name", "key id", "scopes", "from"], rows))


def training_tasks(s: Settings, names: list[str] | None) -> list[str] | None:
    """``--task`` names, checked against the built-in tasks and training.tasks (KeyError naming the unknown)."""
    if not names:
        return None
    known = ("purchase_propensity", "churn", *s.training.tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"no training task {unknown}: choose from {list(known)}")
    return names


def training_table(report: Any) -> Table:
    rows = []
    for name, m in report.models.items():
        auc = m.metrics

        def cell(scorer: str, auc: dict[str, dict[str, float]] = auc) -> str:
            return f"{auc[scorer]['auc']:.4f}" if scorer in auc else "-"

        rows.append([name, cell("xgboost"), cell("logreg"), cell("heuristic"), cell("bgnbd"),
                     "-" if m.oracle_auc is None else f"{m.oracle_auc:.4f}",
                     "yes" if m.beats_baselines else "no", f"v{m.version}", m.alias])
    return table(f"models (holdout AUC), trained in {report.seconds:.0f}s",
                 ["model", "xgboost", "logreg", "heuristic", "bg/nbd", "oracle", "beats all", "version", "alias"],
                 rows)


def _utc(t: datetime | None) -> datetime | None:
    """A time given on the command line, in UTC (a naive one is read as UTC)."""
    return None if t is None else t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _day(d: datetime | None) -> date | None:
    return None if d is None else d.date()


def main() -> None:
    app(prog_name="kairos")


if __name__ == "__main__":
    main()
