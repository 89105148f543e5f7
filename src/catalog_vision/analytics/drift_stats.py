"""The drift tests. Each returns ``statistic, threshold, verdict`` (``drift`` when the statistic
passes the threshold, else ``ok``), plus a p-value where the test has one.

Thresholds are critical values at significance ``alpha`` (chi-squared, KS, domain-classifier AUC,
MMD permutation null), except PSI, whose conventional bands (0.1 moderate, 0.25 major) are effect
sizes, not tests. With five tests at ``alpha=0.01`` a same-distribution comparison alarms on any
of them with probability at most about 5%; ``bench/drift_calibration.py`` measures it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

PSI_EPS = 1e-4


def _verdict(statistic: float, threshold: float) -> str:
    return "drift" if statistic > threshold else "ok"


def label_counts(ref: np.ndarray, cur: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Counts per class over the union of both sides' labels (sorted)."""
    classes = sorted(set(np.unique(ref.astype(str)).tolist()) | set(np.unique(cur.astype(str)).tolist()))
    idx = {c: k for k, c in enumerate(classes)}
    a = np.bincount([idx[x] for x in ref.astype(str)], minlength=len(classes)) if len(ref) else np.zeros(len(classes), int)
    b = np.bincount([idx[x] for x in cur.astype(str)], minlength=len(classes)) if len(cur) else np.zeros(len(classes), int)
    return classes, a, b


def chi_squared(a: np.ndarray, b: np.ndarray, alpha: float) -> dict:
    """Homogeneity of two label distributions: chi-squared on the 2 x K table of counts."""
    keep = (a + b) > 0
    if keep.sum() < 2:
        return {"statistic": 0.0, "threshold": math.inf, "p_value": 1.0, "dof": 0, "verdict": "ok", "note": "one class only"}
    chi2, p, dof, _ = stats.chi2_contingency(np.stack([a[keep], b[keep]]), correction=False)
    threshold = float(stats.chi2.ppf(1 - alpha, dof))
    return {"statistic": float(chi2), "threshold": threshold, "p_value": float(p), "dof": int(dof), "alpha": alpha, "verdict": _verdict(chi2, threshold)}


def psi_terms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Population stability index per class: ``(q - p) ln(q / p)`` over smoothed fractions."""
    p = np.maximum(a / max(a.sum(), 1), PSI_EPS)
    q = np.maximum(b / max(b.sum(), 1), PSI_EPS)
    return (q - p) * np.log(q / p)


def psi(a: np.ndarray, b: np.ndarray, threshold: float) -> dict:
    value = float(psi_terms(a, b).sum())
    return {"statistic": value, "threshold": float(threshold), "verdict": _verdict(value, threshold), "bands": {"moderate": 0.1, "major": 0.25}}


def ks(ref: np.ndarray, cur: np.ndarray, alpha: float) -> dict:
    """Two-sample Kolmogorov-Smirnov on the top-1 score; the threshold is the asymptotic critical D."""
    n, m = len(ref), len(cur)
    res = stats.ks_2samp(ref, cur)
    threshold = math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))
    return {
        "statistic": float(res.statistic),
        "threshold": threshold,
        "p_value": float(res.pvalue),
        "alpha": alpha,
        "verdict": _verdict(res.statistic, threshold),
        "mean": [float(np.mean(ref)), float(np.mean(cur))],
    }


def domain_classifier(xa: np.ndarray, xb: np.ndarray, alpha: float, test_fraction: float = 0.5, seed: int = 0) -> dict:
    """Can a classifier tell the two sides apart? Logistic regression on standardised embeddings,
    fitted on a stratified ``1 - test_fraction`` of the rows; the statistic is its ROC-AUC on the
    held-out rest.

    That AUC is a Mann-Whitney statistic of one fixed model's scores on rows it never saw, so under
    no shift it is centred on 0.5 with sd ``sqrt((n+m+1) / (12 n m))`` (held-out ``n``, ``m``), and
    the threshold is ``0.5 + z(1-alpha) * sd``. (k-fold cross-validation would use every row, but
    its folds' AUCs are correlated, so their mean's null spread is wider than the formula's and
    the false-alarm rate rises with it: README "Drift".)"""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([xa, xb])
    y = np.concatenate([np.zeros(len(xa), int), np.ones(len(xb), int)])
    idx = np.arange(len(y))
    train, test = train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500)).fit(x[train], y[train])
    scores = model.predict_proba(x[test])[:, 1]
    auc = float(roc_auc_score(y[test], scores))
    n, m = int(np.sum(y[test] == 0)), int(np.sum(y[test] == 1))
    sd = math.sqrt((n + m + 1) / (12 * n * m))
    threshold = 0.5 + float(stats.norm.ppf(1 - alpha)) * sd
    return {"statistic": auc, "threshold": threshold, "p_value": float(stats.norm.sf((auc - 0.5) / sd)), "alpha": alpha,
            "rows": [len(xa), len(xb)], "held_out_rows": [n, m], "verdict": _verdict(auc, threshold),
            "scores": scores, "score_side": y[test]}


def mmd_permutation(xa: np.ndarray, xb: np.ndarray, alpha: float, permutations: int = 200, seed: int = 0) -> dict:
    """Maximum mean discrepancy (biased MMD^2, Gaussian kernel, median-distance bandwidth) with a
    permutation null: the threshold is its ``1 - alpha`` quantile."""
    x = np.concatenate([xa, xb]).astype(np.float64)
    n, m = len(xa), len(xb)
    sq = np.sum(x * x, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
    upper = d2[np.triu_indices(len(x), 1)]
    bandwidth2 = float(np.median(upper[upper > 0])) if np.any(upper > 0) else 1.0
    k = np.exp(-d2 / bandwidth2)
    rng = np.random.default_rng(seed)
    w0 = np.concatenate([np.full(n, 1 / n), np.full(m, -1 / m)])
    w = np.stack([w0] + [rng.permutation(w0) for _ in range(permutations)], axis=1)
    stat_all = np.einsum("ip,ip->p", w, k @ w)
    observed, null = float(stat_all[0]), stat_all[1:]
    threshold = float(np.quantile(null, 1 - alpha))
    p = (1 + int(np.sum(null >= observed))) / (1 + permutations)
    return {"statistic": observed, "threshold": threshold, "p_value": p, "alpha": alpha, "permutations": permutations,
            "rows": [n, m], "bandwidth": math.sqrt(bandwidth2), "verdict": _verdict(observed, threshold)}
