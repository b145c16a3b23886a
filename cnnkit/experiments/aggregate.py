"""What a sweep found, computed: per setting, n and each metric's mean, std and Student-t 95% interval.

Pure functions over plain data (no Optuna, no torch). The interval is mean ± t(0.975, n-1)·s/√n,
s the sample standard deviation (n-1 in the denominator): the interval a reviewer expects from n
seeds. The t quantile is computed here (scipy is not a dependency): the t distribution's CDF through
the regularised incomplete beta function (a continued fraction), inverted by bisection.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field

# ---------------------------------------------------------------------------------------- statistics


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz), as in Numerical Recipes."""
    tiny, eps = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), 0 ≤ x ≤ 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    # The fraction converges fast for x < (a+1)/(a+b+2); use the symmetry I_x(a,b) = 1 - I_{1-x}(b,a) beyond.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t such that P(T ≤ t) = p (0 < p < 1), by bisection on the CDF (to ~1e-12)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0 (got p={p}, df={df})")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass
class Stat:
    """One metric over n runs: mean, sample std, and the 95% interval's half-width (None below n=2)."""

    n: int
    mean: float
    std: float | None
    ci95: float | None  # the interval is mean ± ci95
    values: list[float]

    @property
    def low(self) -> float | None:
        return None if self.ci95 is None else self.mean - self.ci95

    @property
    def high(self) -> float | None:
        return None if self.ci95 is None else self.mean + self.ci95


def describe(values: list[float], confidence: float = 0.95) -> Stat | None:
    """mean, std (n-1) and the Student-t interval of `values`; None for no values."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return None
    mean = math.fsum(values) / n
    if n == 1:
        return Stat(1, mean, None, None, values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Stat(n, mean, std, half, values)


# ---------------------------------------------------------------------------------------- a sweep's summary

# The metrics a summary reports, in order: key in a cell's result → (column title, is a fraction).
METRICS: dict[str, tuple[str, bool]] = {
    "best_val": ("best val acc", True),
    "test": ("test acc (best.pt)", True),
    "tta": ("TTA acc", True),
    "train_s": ("train s", False),
}


def epoch_metrics(epoch: int) -> dict[str, tuple[str, bool]]:
    """The metrics read at one epoch of every run (`--at-epoch`): val and test accuracy then."""
    return {f"val_acc@{epoch}": (f"val acc @{epoch}", True), f"test_acc@{epoch}": (f"test acc @{epoch}", True)}


@dataclass
class CellResult:
    """One cell as the study holds it."""

    name: str
    setting: dict[str, str]
    seed: int
    state: str  # complete, failed, running, waiting, pruned
    reason: str | None = None  # why it failed
    metrics: dict[str, float] = field(default_factory=dict)  # best_val, test, tta, train_s
    epochs: list[dict] = field(default_factory=list)  # per epoch: epoch, val_acc, test_acc


@dataclass
class SettingSummary:
    label: str
    setting: dict[str, str]
    n: int  # finished runs
    seeds: list[int]
    stats: dict[str, Stat]  # metric key → its statistics (metrics no run reported are absent)
    failed: list[dict]  # {"cell", "seed", "reason"}


@dataclass
class SweepSummary:
    name: str
    axes: list[str]
    metrics: dict[str, tuple[str, bool]]
    settings: list[SettingSummary]
    best: str | None  # the label of the setting with the highest mean best val acc
    selection: str  # one line: how `best` was chosen, or why there is none
    done: int
    total: int
    unfinished: list[str]  # cells not finished (waiting or running)
    at_epoch: int | None = None  # val and test accuracy also read at this epoch (`--at-epoch`)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["metrics"] = {k: {"title": t, "fraction": f} for k, (t, f) in self.metrics.items()}
        for setting, summary in zip(out["settings"], self.settings, strict=True):
            for key, stat in summary.stats.items():
                setting["stats"][key].update(low=stat.low, high=stat.high)
        return out


def cell_metrics(result: CellResult, at_epoch: int | None) -> dict[str, float]:
    """A finished cell's metrics, plus val/test accuracy at `at_epoch` when asked and logged."""
    values = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    if at_epoch is not None:
        row = next((r for r in result.epochs if r.get("epoch") == at_epoch), {})
        for name in ("val_acc", "test_acc"):
            if isinstance(row.get(name), (int, float)):
                values[f"{name}@{at_epoch}"] = row[name]
    return values


def summarize(name: str, axes: list[str], results: list[CellResult], *, has_val: bool,
              at_epoch: int | None = None) -> SweepSummary:
    """Group cells by setting (in the order they come), describe each metric, choose on validation."""
    metrics = dict(METRICS)
    if at_epoch is not None:
        metrics.update(epoch_metrics(at_epoch))
    groups: dict[str, list[CellResult]] = {}
    for r in results:
        groups.setdefault(_label(r.setting), []).append(r)
    settings = []
    for label, members in groups.items():
        done = [m for m in members if m.state == "complete"]
        per_cell = [cell_metrics(m, at_epoch) for m in done]
        stats = {key: stat for key in metrics if (stat := describe([c[key] for c in per_cell if key in c]))}
        failed = [{"cell": m.name, "seed": m.seed, "reason": m.reason} for m in members if m.state == "failed"]
        settings.append(SettingSummary(label, members[0].setting, len(done), [m.seed for m in done], stats, failed))
    used = [k for k in metrics if any(k in s.stats for s in settings)]
    metrics = {k: metrics[k] for k in used}
    best, selection = _select(settings, has_val, at_epoch)
    unfinished = [r.name for r in results if r.state in ("waiting", "running")]
    done = sum(r.state in ("complete", "failed", "pruned") for r in results)
    return SweepSummary(name, axes, metrics, settings, best, selection, done, len(results), unfinished, at_epoch)


def _label(setting: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items()) or "(the config as it is)"


def _select(settings: list[SettingSummary], has_val: bool, at_epoch: int | None) -> tuple[str | None, str]:
    """The setting with the highest mean validation accuracy; test accuracy never takes part."""
    if not has_val:
        return None, ("not selecting: the config has no validation split (data.val_split: 0), and the test "
                      "set must not choose; set data.val_split to compare settings")
    key = f"val_acc@{at_epoch}" if at_epoch is not None else "best_val"
    scored = [(s.stats[key].mean, s.label) for s in settings if key in s.stats]
    if len(settings) < 2:
        return None, "one setting: nothing to select"
    if not scored:
        return None, "not selecting: no run has finished yet"
    mean, label = max(scored)
    what = f"val acc at epoch {at_epoch}" if at_epoch is not None else "best val acc"
    return label, f"best on validation ({what}, mean over seeds): {label} at {mean:.2%}; test was not consulted"


def summary_csv(summary: SweepSummary) -> str:
    """One row per setting: its values, n, and each metric's mean, std, 95% interval and values."""
    out = io.StringIO()
    writer = csv.writer(out)
    header = [*summary.axes, "n"]
    for key in summary.metrics:
        header += [f"{key}_mean", f"{key}_std", f"{key}_ci95_low", f"{key}_ci95_high", f"{key}_values"]
    writer.writerow(header)
    for s in summary.settings:
        row = [s.setting.get(a, "") for a in summary.axes] + [s.n]
        for key in summary.metrics:
            stat = s.stats.get(key)
            if stat is None:
                row += ["", "", "", "", ""]
            else:
                row += [_num(stat.mean), _num(stat.std), _num(stat.low), _num(stat.high),
                        ";".join(_num(v) for v in stat.values)]
        writer.writerow(row)
    return out.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))
