"""Near-duplicate groups in one model's predictions table, and train/test leakage.

    python jobs/duplicates.py                                      # predictor.checkpoint's table for data's catalog
    python jobs/duplicates.py duplicates.predictions=<table or run folder> duplicates.threshold=0.99

Writes groups.parquet (image_id, duplicate_group_id, group_size), pairs.parquet, summary.json and
contact_sheet.png under <paths.output>/duplicates/<model_id>/<catalog_id>/ (see conf/duplicates/).
"""

import json

import hydra
from omegaconf import DictConfig, OmegaConf

from catalog_vision.analytics import run_duplicates
from catalog_vision.runtime import setup_logging


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    setup_logging()
    s = run_duplicates(OmegaConf.to_container(cfg, resolve=True))
    brief = {k: s[k] for k in ("images", "error_rows_skipped", "threshold", "pairs", "groups", "images_in_groups", "group_size_counts", "search", "seconds")}
    print("duplicates summary: " + json.dumps(brief))
    if s["leakage"]:
        lk = s["leakage"]
        print(f"leakage: {lk['target_with_duplicate_in_source']} of {lk['target_images']} {lk['target']} images have a near-duplicate in {lk['source']}")
    print("largest groups: " + json.dumps([{k: g[k] for k in ("duplicate_group_id", "group_size", "labels", "splits")} for g in s["largest_groups"][:5]]))
    print(f"wrote {s['output']}/groups.parquet, pairs.parquet, summary.json" + (", contact_sheet.png" if "contact_sheet" in s else ""))


if __name__ == "__main__":
    main()
