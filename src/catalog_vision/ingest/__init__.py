"""Ingest: catalogs as Ray Datasets and the image decoder shared by training, backfill and serving.

Light on purpose (no torch): Ray Data's decode tasks import these modules.
"""
