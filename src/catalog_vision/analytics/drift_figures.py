"""PNG figures of a drift report: label fractions, score distributions, domain-classifier scores."""

from __future__ import annotations

import io
from typing import Any, Mapping

import numpy as np

from .. import storage as st


def _save(fig, uri: str, storage: Mapping[str, Any] | None) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    st.write_bytes(uri, buf.getvalue(), storage)
    return uri


def _title(name: str, test: Mapping[str, Any]) -> str:
    return f"{name} = {test['statistic']:.4g} (threshold {test['threshold']:.4g}): {test['verdict']}"


def write_figures(out: str, report: Mapping[str, Any], f: Mapping[str, Any], storage: Mapping[str, Any] | None = None) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tests = report["tests"]
    written = {}
    a, b = f["counts"]
    x = np.arange(len(f["classes"]))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(x) + 2), 4))
    ax.bar(x - 0.2, a / max(a.sum(), 1), 0.4, label=f"reference ({a.sum()})")
    ax.bar(x + 0.2, b / max(b.sum(), 1), 0.4, label=f"current ({b.sum()})")
    ax.set_xticks(x, f["classes"], rotation=45, ha="right")
    ax.set_ylabel("fraction of images")
    ax.set_title(_title("chi2", tests["label_chi2"]) + "\n" + _title("PSI", tests["label_psi"]), fontsize=9)
    ax.legend()
    written["labels"] = _save(fig, st.join(out, "label_distribution.png"), storage)

    sa, sb = f["scores"]
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 41)
    ax.hist(sa, bins, density=True, alpha=0.5, label="reference")
    ax.hist(sb, bins, density=True, alpha=0.5, label="current")
    ax.set_xlabel("top-1 score")
    ax.set_title(_title("KS D", tests["score_ks"]), fontsize=9)
    ax.legend()
    written["scores"] = _save(fig, st.join(out, "score_distribution.png"), storage)

    if "domain_scores" in f:
        p, side = f["domain_scores"], f["domain_side"]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.hist(p[side == 0], bins=40, alpha=0.5, label="reference (held out)")
        ax.hist(p[side == 1], bins=40, alpha=0.5, label="current (held out)")
        ax.set_xlabel("domain classifier P(current) on held-out rows")
        ax.set_title(_title("AUC", tests["embedding_classifier"]) + "\n" + _title("MMD^2", tests["embedding_mmd"]), fontsize=9)
        ax.legend()
        written["embedding"] = _save(fig, st.join(out, "embedding_domain_classifier.png"), storage)
    return written
