"""Capacity planning on paper: how long a 100-million-image backfill takes and what it costs on a
named GPU cluster, from figures measured here (``bench/results/decode.json``, ``driver_memory.json``)
and published ones (below, each with its source). Prints a table and writes ``bench/results/capacity.json``.

    python bench/decode.py && python bench/driver_memory.py && python bench/capacity.py
    python bench/capacity.py --images 100e6 --nodes 16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as results_file  # noqa: E402

# Published figures (not measured here).
# NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/README.md, "Inference
# performance: NVIDIA T4", mixed precision, batch 64, pytorch-21.03 NGC container: 1,165 img/s.
T4_RESNET50_FP16 = 1165.0
# AWS EC2 g4dn.xlarge (1 x T4, 4 vCPU, 16 GiB, "up to 25 Gbps"): on-demand list price, us-east-1,
# as published in 2024 (check the current price list before budgeting).
G4DN_XLARGE_USD_H = 0.526
G4DN_XLARGE_VCPU = 4
# Amazon S3 performance guidelines: at least 5,500 GET/HEAD requests per second per prefix.
S3_GETS_PER_PREFIX = 5500
# A predictor actor keeps one vCPU for collation, host-to-device copies and Arrow output
# (conf/predictor/gpu.yaml: cpus_per_actor), the rest decode.
ACTOR_VCPU = 1


def load(name: str) -> dict:
    path = results_file.RESULTS / f"{name}.json"
    if not path.exists():
        sys.exit(f"{path} missing: run python bench/{name}.py first")
    return json.loads(path.read_text())


def number(cell: str) -> float:
    return float(cell.split()[0].replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=float, default=100e6)
    ap.add_argument("--nodes", type=int, default=16)
    args = ap.parse_args()
    decode, memory = load("decode"), load("driver_memory")
    per_image_driver = number(memory["notes"][0].split("**")[1])  # bytes of driver memory per image
    decode_vcpus = G4DN_XLARGE_VCPU - ACTOR_VCPU
    columns = ["images", "decode/node (measured x vCPUs)", "GPU/node (published)", "bottleneck", "cluster images/s", "S3 GET/s vs one prefix",
               "network/node", "hours", "cost (on-demand)", "input read"]
    table = []
    for row in decode["rows"]:
        workload, size_kib, per_core = row[0], number(row[1]), number(row[3])
        if not workload.startswith("photo"):
            continue
        cpu_rate = per_core * decode_vcpus
        node = min(cpu_rate, T4_RESNET50_FP16)
        rate = node * args.nodes
        hours = args.images / rate / 3600
        table.append([f"{workload[5:]}-px-wide JPEGs, {size_kib:,.0f} KiB", f"{cpu_rate:,.0f} img/s", f"{T4_RESNET50_FP16:,.0f} img/s",
                      "CPU decode" if cpu_rate < T4_RESNET50_FP16 else "GPU", f"{rate:,.0f}", f"{rate / S3_GETS_PER_PREFIX:.1f}x",
                      f"{node * size_kib * 1024 * 8 / 1e9:.1f} Gbit/s", f"{hours:,.1f}", f"${hours * args.nodes * G4DN_XLARGE_USD_H:,.0f}",
                      f"{args.images * size_kib * 1024 / 1e12:,.0f} TB"])
    gib = 2**30
    notes = [
        f"Cluster: {args.nodes} x g4dn.xlarge (1 x NVIDIA T4, {G4DN_XLARGE_VCPU} vCPU, ${G4DN_XLARGE_USD_H}/h on-demand), resnet50 at 224x224 in "
        f"fp16, {args.images / 1e6:,.0f}M images; decode on {decode_vcpus} vCPUs per node at this machine's measured rate per core "
        f"(`bench/decode.py`, commit {decode['commit']}), the GPU at NVIDIA's published T4 figure.",
        f"Head node: planning holds about {per_image_driver:.0f} bytes per image (`bench/driver_memory.py`, commit {memory['commit']}): "
        f"{args.images * per_image_driver / gib:,.0f} GiB for {args.images / 1e6:,.0f}M images.",
    ]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    for line in [columns, *table]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)))
    for n in notes:
        print(n)
    results_file.save("capacity", "python bench/capacity.py " + " ".join(sys.argv[1:]), columns, table, notes, align="lrrlrrrrrr")


if __name__ == "__main__":
    main()
