"""Where each encoder's bytes go, on one pruned LeNet-300-100 cell of `cpu/compression_digits.yaml`.

    python benchmarks/papers/encoding_breakdown.py [--sparsity 0.9] [--seed 0]

Runs the twin's setting (LeNet-300-100 on digits, its pretrain and fine-tune recipes, global
magnitude pruning) through each encoder and splits the stored bytes of the final level by part:

- ``values``: the nonzero weights' stored values (float32, packed codes, Huffman payload, SZ3 stream);
- ``positions``: where the nonzeros are (bitmask, zlib'd bitmask, relative-index gaps or their Huffman payload);
- ``filter``: a Bloomier filter's cells, which hold values and positions together;
- ``codebooks``: code tables (scales, centroids) and Huffman codebooks;
- ``headers``: layout bytes, index widths, entry counts, Huffman count words, the filter header;
- ``other``: every parameter that is not a Conv/Linear weight (biases), float32.

``bits/nz`` is 8 · (values + positions + filter + codebooks + headers) over the nonzero weights.
Beside `compression_digits.yaml`'s four encoders: SZ with bounds scaled to these weights (|w| up to
about 0.3, where DeepSZ's 1e-3 … 9e-3 are fine steps), and Bloomier after k-means, which codes the
classifier too (the twin's Bloomier pipeline leaves the unpruned classifier float32), without
retraining (k-means's codes are then frozen, so nothing could absorb the false positives anyway).
"""

from __future__ import annotations

import argparse

from rich.console import Console

from harness.config import Recipe
from harness.encoding import Encoded, huffman
from harness.encoding.bloomier import HEADER as BLOOMIER_HEADER
from harness.masks import prunable_weights
from harness.output import print_table
from harness.testing import run_method

PRETRAIN = Recipe(epochs=10, optimizer="sgd", lr=0.05, momentum=0.9, batch_size=64)  # cpu/compression_digits.yaml
FINETUNE = Recipe(epochs=3, lr=0.01)
PRUNE = "global_magnitude"
ENCODERS = {
    "float32, auto (bitmask)": [PRUNE],
    "bitmask + 4-bit shared": [PRUNE, {"name": "kmeans", "bits": 4}, "bitmask"],
    "relative index + 4-bit shared": [PRUNE, {"name": "kmeans", "bits": 4}, "relative_index"],
    "huffman + 4-bit shared": [PRUNE, {"name": "kmeans", "bits": 4}, "huffman"],
    "sz (DeepSZ, budget 1 %)": [PRUNE, {"name": "sz", "accuracy_budget": 0.01}],
    "sz, bounds 0.01 … 0.05": [PRUNE, {"name": "sz", "accuracy_budget": 0.01, "bounds": [0.01, 0.02, 0.03, 0.05]}],
    "bloomier (Weightless, b=4, t=10)": [PRUNE, {"name": "bloomier", "cluster_bits": 4, "cell_bits": 10}],
    "4-bit shared, then bloomier t=10": [
        PRUNE,
        {"name": "kmeans", "bits": 4},
        {"name": "bloomier", "cell_bits": 10, "retrain_epochs": 0},
    ],
}
PARTS = ("values", "positions", "filter", "codebooks", "headers", "other")


def breakdown(encoded: Encoded, weights: set[str]) -> dict[str, int]:
    """Bytes of ``encoded`` per part (:data:`PARTS`); the parts sum to ``encoded.size_bytes``."""
    out = dict.fromkeys(PARTS, 0)
    for name, parts in encoded.payloads.items():
        if name not in weights:
            out["other"] += sum(map(len, parts.values()))
            continue
        bits = parts["layout"][1] & 0x3F
        for part, data in parts.items():
            if part in ("layout", "index_bits", "count"):
                out["headers"] += len(data)
            elif part == "table":
                out["codebooks"] += len(data)
            elif part == "filter":
                out["headers"] += BLOOMIER_HEADER.size
                out["filter"] += len(data) - BLOOMIER_HEADER.size
            elif encoded.format == "huffman" and part in ("index", "codes"):
                alphabet = 1 << (parts["index_bits"][0] if part == "index" else bits)
                count, codebook, payload = huffman.stream_sizes(data, alphabet)
                out["headers"] += count
                out["codebooks"] += codebook
                out["positions" if part == "index" else "values"] += payload
            elif part in ("mask", "index"):
                out["positions"] += len(data)
            else:  # "values" (float32), "codes" (packed), "sz" (an SZ3 stream, its own header inside)
                out["values"] += len(data)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    for label, stages in ENCODERS.items():
        method, params = (PRUNE, {}) if len(stages) == 1 else ("pipeline", {"stages": stages})
        job = run_method(
            method,
            params,
            sparsity=args.sparsity,
            seed=args.seed,
            pretrain_recipe=PRETRAIN,
            finetune_recipe=FINETUNE,
        )
        level, pruned = job.levels[-1], job.levels[0].final_state  # the pruning stage's fine-tuned model
        weights = prunable_weights(job.model, include_classifier=True)
        nonzero = sum(int((pruned[name] != 0).sum()) for name in weights)  # before any false positive
        parts = breakdown(level.encoded, set(weights))
        assert sum(parts.values()) == level.row["size_bytes"], label
        stored = sum(parts.values()) - parts["other"]
        row = [*map(str, parts.values()), str(level.row["size_bytes"]), f"{8 * stored / nonzero:.2f}"]
        rows.append([label, *row, f"{level.row['top1']:.4f}"])
    title = f"LeNet-300-100 / digits, {PRUNE} at sparsity {args.sparsity:g}, seed {args.seed}, {nonzero} nonzero"
    columns = ["encoder", *PARTS, "total", "bits/nz", "top1"]
    print_table(Console(), columns, rows, title=title, right=columns[1:])


if __name__ == "__main__":
    main()
