"""Serve's application-builder pattern: ``build_app(args)`` → a bound ``Application``.

``args`` is the resolved project config (``predictor``, ``serve``, ``storage``), as ``jobs/serve.py``
composes it, or the same keys from a Serve config file's ``args``. No I/O happens until a replica
starts: each replica loads the checkpoint itself.
"""

from __future__ import annotations

from typing import Any, Mapping

from .config import check_serve, deployment_options


def app_config(args: Mapping[str, Any]) -> dict:
    """The plain config a replica receives, checked; the checkpoint path made absolute here, since
    replicas run in other working directories."""
    from .. import storage as st
    from ..infer.predictor import TTA
    from ..infer.device import check_dtype

    missing = [k for k in ("predictor", "serve") if k not in args]
    if missing:
        raise ValueError(f"build_app needs the config sections {missing} (compose conf/config.yaml, as jobs/serve.py does)")
    p, s = dict(args["predictor"]), dict(args["serve"])
    check_serve(s)
    check_dtype(p["dtype"])
    if (p.get("tta") or "none") not in TTA:
        raise ValueError(f"predictor.tta={p['tta']!r}; choose one of {list(TTA)}")
    if not p.get("checkpoint"):
        raise ValueError("predictor.checkpoint is not set: a checkpoint directory (local or s3://), e.g. from jobs/train.py")
    p["checkpoint"] = st.absolute(str(p["checkpoint"]))
    if (s.get("predictions") or {}).get("write"):
        from ..backfill.tables import catalog_id

        t = s["predictions"]
        # The model's table for this catalog (<predictions>/<model_id>/<catalog_id>/), the one its backfills skip from.
        catalog = t.get("catalog_id") or catalog_id(args.get("data") or {})
        s["predictions"] = {**t, "root": st.absolute(str(t["root"])), "catalog_id": catalog}
    s["similar_index"] = similar_index(args, s.get("similar_index"), p["checkpoint"])
    return {"predictor": p, "serve": s, "storage": dict(args.get("storage") or {})}


def similar_index(args: Mapping[str, Any], setting: Any, checkpoint: str) -> str | dict | None:
    """Where ``GET /similar`` reads its index (``serve.similar_index``): ``None`` (off), a folder, or
    for ``auto`` the model's index root and catalog id, resolved in the replica once it has loaded
    the model and knows its id (building the application does no I/O)."""
    from .. import storage as st

    if not setting or isinstance(setting, dict):  # off, or resolved already (a generated deploy config's args)
        return setting or None
    if setting != "auto":
        return st.absolute(str(setting))
    if not all(args.get(k) for k in ("index", "data")):
        return None  # a Serve config file without the index and data sections: /similar is off
    from ..backfill.tables import catalog_id

    return {"root": st.absolute(str(args["index"]["root"])), "catalog_id": args["index"].get("catalog_id") or catalog_id(args["data"])}


def build_app(args: Mapping[str, Any]):
    from .app import ImageClassifier

    cfg = app_config(args)
    return ImageClassifier.options(**deployment_options(cfg["serve"])).bind(cfg)
