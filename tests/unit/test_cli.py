"""The ``kairos`` command: its subcommands, their options, settings and errors (no engines: the quick commands)."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import yaml
from typer.testing import CliRunner

from conf.settings import Settings
from kairos.cli import app
from pipelines.stream.changelog import encode_drops
from pipelines.stream.types import DropRecord, StreamOutputs
from serving.security import KeyRing

ROOT = Path(__file__).resolve().parents[2]
MAPPING = ROOT / "conf" / "importers" / "retail_transactions.yaml"
GOLDEN = ROOT / "tests" / "golden" / "retail_transactions.csv"
COMMANDS = ("demo", "simulate", "import", "apply", "backfill", "stream", "parity", "train", "serve", "keys")

runner = CliRunner()


def test_help_lists_every_subcommand() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == list(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: kairos {command}" in result.output and "--help" in result.output


def test_no_command_shows_the_help() -> None:
    result = runner.invoke(app, [])
    assert "Commands:" in result.output


def test_simulate_writes_and_summarises(tmp_settings: Settings) -> None:
    result = runner.invoke(app, ["simulate", "--users", "50", "--days", "2", "--seed", "4", "--late-rate", "0.1",
                                 "--jsonl"])
    assert result.exit_code == 0, result.output
    assert "events for 50 users" in result.output and "injected: duplicate" in result.output
    assert "product_view" in result.output  # the table of events by type
    data = tmp_settings.data_path
    assert any((data / "events").rglob("*.parquet")) and (data / "truth" / "users.parquet").exists()
    lines = (data / "stream.jsonl").read_text().splitlines()
    assert len(lines) == ds.dataset(data / "events", partitioning="hive").count_rows()


def test_simulate_rejects_a_rate_out_of_range(tmp_settings: Settings) -> None:
    result = runner.invoke(app, ["simulate", "--late-rate", "1.5"])
    assert result.exit_code == 2
    assert "--late-rate" in result.output and "less than or equal to 1" in result.output


def test_config_option_reads_another_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAIROS__DATA_DIR", raising=False)
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "lake"), "simulator": {"users": 30, "days": 1}}))
    monkeypatch.setenv("KAIROS_CONFIG", "unset-after-the-test")  # --config sets it for the process
    result = runner.invoke(app, ["--config", str(config), "simulate"])
    assert result.exit_code == 0, result.output
    assert "events for 30 users" in result.output
    assert any((tmp_path / "lake" / "events").rglob("*.parquet"))


def test_an_invalid_setting_is_named_without_a_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path), "spark": {"shuffle_partitions": "many"}}))
    monkeypatch.setenv("KAIROS_CONFIG", "unset-after-the-test")  # --config sets it for the process
    result = runner.invoke(app, ["--config", str(config), "simulate"])
    assert result.exit_code == 2
    assert "invalid settings" in result.output and "shuffle_partitions" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_import_prints_the_summary(tmp_settings: Settings, tmp_path: Path) -> None:
    dlq = tmp_path / "dead.jsonl"
    result = runner.invoke(app, ["import", "--mapping", str(MAPPING), "--input", str(GOLDEN),
                                 "--dead-letter", str(dlq)])
    assert result.exit_code == 0, result.output
    for line in ("accepted       33", "dead-lettered  7", "dropped        0", "sessions synthesized 24",
                 "amount (source column 'Amount'): must be >= 0, got -3", f"dead letters -> {dlq}"):
        assert line in result.output
    # the default output is the settings' event log
    assert ds.dataset(tmp_settings.events_path, partitioning="hive").count_rows() == 33
    assert len(dlq.read_text().splitlines()) == 7


def test_import_names_a_bad_mapping_without_a_traceback(tmp_settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    data = yaml.safe_load(MAPPING.read_text())
    data["event_type"] = "teleport"
    bad.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["import", "--mapping", str(bad), "--input", str(GOLDEN)])
    assert result.exit_code == 2
    assert "event_type: 'teleport' is not a Kairos event type" in result.output


def test_import_requires_an_existing_input(tmp_settings: Settings, tmp_path: Path) -> None:
    result = runner.invoke(app, ["import", "--mapping", str(MAPPING), "--input", str(tmp_path / "nope.csv")])
    assert result.exit_code == 2
    assert "nope.csv" in result.output and "does not exist" in result.output


def test_backfill_rejects_a_date_in_another_format(tmp_settings: Settings) -> None:
    result = runner.invoke(app, ["backfill", "--start", "01/10/2026"])
    assert result.exit_code == 2
    assert "--start" in result.output and "%Y-%m-%d" in result.output


def test_stream_report_only_reads_the_logs_of_a_run(tmp_settings: Settings) -> None:
    outputs = StreamOutputs.from_settings(tmp_settings)
    assert outputs.changelog_dir is not None
    outputs.changelog_dir.mkdir(parents=True)
    outputs.drops_dir.mkdir(parents=True)
    (outputs.drops_dir / "part-0.jsonl").write_bytes(encode_drops([
        DropRecord("late", "stream.jsonl:3", "e1", None), DropRecord("late", "stream.jsonl:9", "e2", None),
        DropRecord("duplicate", "stream.jsonl:4", "e3", None)]))
    result = runner.invoke(app, ["stream", "--report-only"])
    assert result.exit_code == 0, result.output
    assert re.search(r"not counted: late\s+│\s+2 │", result.output), result.output
    assert re.search(r"not counted: duplicate\s+│\s+1 │", result.output), result.output


def test_keys_create_prints_the_key_once_and_stores_its_hash(tmp_settings: Settings) -> None:
    result = runner.invoke(app, ["keys", "create", "web", "--scopes", "score,events:write"])
    assert result.exit_code == 0, result.output
    key = result.output.strip().splitlines()[-1]
    assert key.startswith("kairos_")
    stored = tmp_settings.keys_path.read_text()
    assert key not in stored and "web" in stored
    ring = KeyRing.from_settings(tmp_settings)
    assert ring.authenticate(key, "events:write").name == "web"
    listed = runner.invoke(app, ["keys", "list"])
    assert "web" in listed.output and "score, events:write" in listed.output and key not in listed.output


def test_keys_create_names_an_unknown_scope(tmp_settings: Settings) -> None:
    result = runner.invoke(app, ["keys", "create", "web", "--scopes", "score,root"])
    assert result.exit_code == 2
    assert "--scopes" in result.output and "got score, root" in result.output
    assert not tmp_settings.keys_path.exists()
