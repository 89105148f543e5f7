"""Drift between two backfills: label, confidence and embedding shift, each with statistic,
threshold and verdict.

    python jobs/drift.py drift.reference=<run folder or table> drift.current=<run folder or table>

Writes drift.json and PNG figures under drift.output (default <paths.output>/drift/<UTC time>; see conf/drift/).
"""

import json

import hydra
from omegaconf import DictConfig, OmegaConf

from catalog_vision.analytics import run_drift
from catalog_vision.runtime import setup_logging


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    setup_logging()
    r = run_drift(OmegaConf.to_container(cfg, resolve=True))
    print(f"drift: {r['reference']['rows']} reference rows vs {r['current']['rows']} current rows")
    for name, t in r["tests"].items():
        p = f"  p={t['p_value']:.3g}" if "p_value" in t else ""
        print(f"  {name:22s} statistic {t['statistic']:.5g}  threshold {t['threshold']:.5g}{p}  -> {t['verdict']}")
    for note in r["notes"]:
        print("  note: " + note)
    print(f"drift verdict: {r['verdict']} {json.dumps(r['alarms'])}; {r['seconds']['total']} s; wrote {r['output']}/drift.json")


if __name__ == "__main__":
    main()
