"""A synthetic transaction export: the simulator's "transactions only" mode.

What a retailer's sales export holds and nothing more: ``CustomerID,InvoiceDate,Quantity,Amount``, one row per
order, dates without times, the format of ``conf/importers/retail_transactions.yaml``. Customers buy at their own
rate and stop for good at some point, the way a CRM's customers do:

* each customer is acquired on a day in the first ``acquisition_share`` of the span and buys then;
* the gaps between their orders are Gamma distributed with the customer's own mean (median
  ``median_gap_days``, log-normal across customers) and shape (1: as irregular as a Poisson process, up to 8:
  nearly periodic, "every few months");
* after each order the customer leaves for good with their own probability (Beta distributed across customers):
  they churn;
* order values are log-normal around the customer's own mean, quantities 1 + Poisson(1).

The buy-till-you-die model (BG/NBD) assumes Poisson purchasing while alive; real customers are more regular
than that, and this export is too, so the gap since the last order against the customer's usual gap tells more
than BG/NBD's frequency and recency alone.

    python -m pipelines.ingest.transactions --customers 2000 --months 18 --out var/retail/transactions.csv
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np

HEADER = ("CustomerID", "InvoiceDate", "Quantity", "Amount")


@dataclass(frozen=True, kw_only=True)
class TransactionExportConfig:
    customers: int = 2000
    months: int = 18
    start: date = date(2025, 1, 1)
    seed: int = 7
    acquisition_share: float = 0.7  # customers are acquired in the first 70% of the span
    median_gap_days: float = 45.0
    gap_spread: float = 0.6  # sigma of the log of the mean gap across customers
    shapes: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)  # Gamma shapes of the gaps: irregular to nearly periodic
    dropout_beta: tuple[float, float] = (1.2, 8.0)  # after each order, leaves for good with p ~ Beta(a, b)
    median_order_value: float = 40.0

    @property
    def days(self) -> int:
        end = date(self.start.year + (self.start.month - 1 + self.months) // 12,
                   (self.start.month - 1 + self.months) % 12 + 1, 1)
        return (end - self.start).days


@dataclass(frozen=True)
class TransactionExport:
    path: Path
    rows: int
    customers: int
    first: date
    last: date


def transaction_rows(cfg: TransactionExportConfig) -> list[tuple[str, str, int, str]]:
    """The export's rows in date order (then customer): (customer, ISO date, quantity, amount with 2 decimals)."""
    rng = np.random.default_rng(cfg.seed)
    n, days = cfg.customers, cfg.days
    acquired = rng.integers(0, max(int(days * cfg.acquisition_share), 1), size=n)
    mean_gap = np.clip(cfg.median_gap_days * np.exp(rng.normal(0.0, cfg.gap_spread, size=n)), 5.0, 365.0)
    shape = rng.choice(np.asarray(cfg.shapes), size=n)
    dropout = rng.beta(*cfg.dropout_beta, size=n)
    value = cfg.median_order_value * np.exp(rng.normal(0.0, 0.5, size=n))
    rows: list[tuple[int, str, str, int, str]] = []
    for i in range(n):
        customer = f"C{100000 + i}"
        day = float(acquired[i])
        while day < days:
            d = cfg.start + timedelta(days=int(day))
            qty = 1 + int(rng.poisson(1.0))
            amount = float(value[i] * np.exp(rng.normal(0.0, 0.4)) * (0.6 + 0.4 * qty))
            rows.append((int(day), customer, d.isoformat(), qty, f"{amount:.2f}"))
            if rng.random() < dropout[i]:
                break  # gone for good
            day += max(1.0, float(rng.gamma(shape[i], mean_gap[i] / shape[i])))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [(c, d, q, a) for _, c, d, q, a in rows]


def write_transaction_export(path: Path | str, cfg: TransactionExportConfig | None = None) -> TransactionExport:
    """Write the export as CSV (``HEADER``) and say what it holds."""
    cfg = cfg or TransactionExportConfig()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = transaction_rows(cfg)
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        w.writerows(rows)
    return TransactionExport(path=out, rows=len(rows), customers=len({r[0] for r in rows}),
                             first=date.fromisoformat(rows[0][1]), last=date.fromisoformat(rows[-1][1]))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--customers", type=int, default=2000)
    p.add_argument("--months", type=int, default=18)
    p.add_argument("--start", type=date.fromisoformat, default=date(2025, 1, 1))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    made = write_transaction_export(a.out, TransactionExportConfig(customers=a.customers, months=a.months,
                                                                   start=a.start, seed=a.seed))
    print(f"{made.rows:,} orders of {made.customers:,} customers, {made.first} to {made.last} -> {made.path}")


if __name__ == "__main__":
    main()
