"""Linear probe: logistic regression on frozen image features, as in the CLIP paper.

CLIP's protocol: L-BFGS logistic regression (scikit-learn) on the image encoder's features, the L2 strength
chosen on a validation split by a coarse search over C = 10^-6 .. 10^6 refined around the best. Few-shot
subsets take k training images per class (chosen by seed); C is still chosen on the whole validation split,
so the few-shot figures are a little optimistic, as they are in most papers that use this protocol.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

COARSE_C = tuple(10.0**e for e in range(-6, 7, 2))
DEFAULT_SHOTS = (1, 2, 4, 8, 16)


@torch.no_grad()
def image_features(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    """The normalised image embeddings (as CLIP_benchmark probes them): one scale for every model, so the same
    range of C fits all and L-BFGS converges in tens of iterations rather than hundreds."""
    if model.config.arch != "dual_encoder":
        raise ValueError(f"a linear probe needs image features alone; {model.config.name} is early fusion, "
                         "which only scores image-text pairs")
    model.eval()
    return torch.cat([model.encode_image(b) for b in images.split(256)]).numpy()


def kshot_indices(labels: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k items of every class (all of a class with fewer); k = 0: everything."""
    if k == 0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:k] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray):
    """The classifier with the C that scores best on validation: coarse decades, then halves and quarters."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    if len(np.unique(train_y)) < 2:
        raise ValueError("a linear probe needs training images of at least two classes")
    scores: dict[float, float] = {}

    def fit(c: float) -> LogisticRegression:
        # Few-shot problems are small: BLAS threads only add synchronisation (one thread measured ~10x faster
        # on 64 x 32 features with a busy 2-core CPU). k-shot sets have more classes than half their samples.
        threads = 1 if train_x.size < 1_000_000 else None
        with warnings.catch_warnings(), threadpool_limits(threads):
            warnings.simplefilter("ignore", UserWarning)
            return LogisticRegression(C=c, max_iter=1000).fit(train_x, train_y)

    def score(c: float) -> float:
        if c not in scores:
            clf = fit(c)
            scores[c] = float((clf.predict(val_x) == val_y).mean())
        return scores[c]

    best = max(COARSE_C, key=lambda c: (score(c), -c))  # ties: the stronger regularisation
    for step in (10.0, 10.0**0.5):  # refine around the best: one decade, then half a decade, each side
        best = max((best / step, best, best * step), key=lambda c: (score(c), -c))
    return fit(best), best


def accuracy(clf, x: np.ndarray, y: np.ndarray) -> float:
    return 100 * float((clf.predict(x) == y).mean())


def linear_probe(model: nn.Module, data_path: str | Path, shots: tuple[int, ...] = DEFAULT_SHOTS, seed: int = 0,
                 splits: tuple[str, str, str] = ("train", "val", "test"),
                 extra_test: dict[str, str | Path] | None = None) -> dict:
    """`vlm eval linear-probe`: test accuracy (percent) per k-shot setting, with the C chosen for each.

    `extra_test`: other worlds with the same classes (name -> folder), scored by the same classifiers."""
    from vlm.eval.data import load_classification
    from vlm.models.preprocess import model_transform

    transform = model_transform(model)
    sets = [load_classification(data_path, transform, split) for split in splits]
    (train_x, val_x, test_x), (train_y, val_y, test_y) = (
        [image_features(model, s.images) for s in sets], [s.labels.numpy() for s in sets])
    others = {name: load_classification(path, transform, splits[2]) for name, path in (extra_test or {}).items()}
    other_xy = {name: (image_features(model, s.images), s.labels.numpy()) for name, s in others.items()}
    results = []
    for k in shots:
        start = time.perf_counter()
        rows = kshot_indices(train_y, k, seed)
        clf, c = fit_probe(train_x[rows], train_y[rows], val_x, val_y)
        row = {"shots": k, "train_images": len(rows), "C": c, "acc1": accuracy(clf, test_x, test_y),
               "fit_s": time.perf_counter() - start}
        row.update({f"acc1/{name}": accuracy(clf, x, y) for name, (x, y) in other_xy.items()})
        results.append(row)
    return {"task": "linear_probe", "model": model.config.name, "data": str(data_path), "test_split": splits[2],
            "feature_dim": int(train_x.shape[1]), "classes": len(sets[0].classnames), "results": results}
