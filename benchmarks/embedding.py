"""Embedding speed and quality, in one run: openTSNE (as convlens uses it) vs scikit-learn's
TSNE on the same 10,000 CNN codes of the trained built-in network (Fashion-MNIST test set):
seconds and leave-one-out 10-NN accuracy of each 2-D embedding (and of the codes themselves);
then the time of a 50x50 mosaic layout (2,500 points, Jonker-Volgenant).

Targets: 10,000 codes embedded in <= 60 s on 2 cores and at least as fast as scikit-learn
(speedup >= 1) with a 10-NN accuracy no more than 0.01 below it; the 2,500-cell layout <= 30 s.
Run: python benchmarks/embedding.py [--n 10000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.manifold import TSNE
from torch.utils.data import Subset

import convlens as cl
from convlens.data import FashionMNIST
from convlens.embedding import codes, grid_layout, knn_accuracy, tsne


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10000)
    args = parser.parse_args()
    loaded = cl.load_model("zfnet-fashion")
    data = Subset(FashionMNIST("test", transform=loaded.transform), range(args.n))
    labels = np.array([data.dataset.labels[i] for i in range(args.n)])
    x = codes(loaded.model, data).numpy()
    started = time.perf_counter()
    ours = tsne(x)
    ours_s = time.perf_counter() - started
    started = time.perf_counter()
    theirs = TSNE(init="pca", random_state=0, n_jobs=-1).fit_transform(x)
    theirs_s = time.perf_counter() - started
    started = time.perf_counter()
    grid_layout(ours[:2500], 50, 50)
    layout_s = time.perf_counter() - started
    print(
        json.dumps(
            {
                "codes": list(x.shape),
                "knn10_codes": round(knn_accuracy(x, labels), 4),
                "opentsne_seconds": round(ours_s, 1),
                "opentsne_knn10": round(knn_accuracy(ours, labels), 4),
                "sklearn_seconds": round(theirs_s, 1),
                "sklearn_knn10": round(knn_accuracy(theirs, labels), 4),
                "speedup": round(theirs_s / ours_s, 2),
                "meets_target": theirs_s >= ours_s
                and knn_accuracy(ours, labels) >= knn_accuracy(theirs, labels) - 0.01,
                "layout_50x50_seconds": round(layout_s, 2),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
