"""Linear probe: logistic regression on frozen image features, as in the CLIP paper.

CLIP's protocol: L-BFGS logistic regression (scikit-learn) on the image encoder's features, the L2 strength
chosen on a validation split by a coarse search over C = 10^-6 .. 10^6 refined around the best. Few-shot
subsets take k training images per class (chosen by seed); C is still chosen on the whole validation split,
so the few-shot figures are a little optimistic, as they are in most papers that use this protocol.

Training, validation and test images never overlap: a source without splits is split per class, seeded, and
the result says how (`split`); see `probe_sets`.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
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


SPLIT_FRACTIONS = (0.6, 0.2, 0.2)  # train / val / test of a source without splits, per class
VAL_FRACTION = 0.2  # of each class's training images, to choose C on when there is no val split


@dataclass
class ProbeSets:
    """Features and labels of the three disjoint parts, and how they were made (reported with the result)."""
    x: tuple[np.ndarray, np.ndarray, np.ndarray]
    y: tuple[np.ndarray, np.ndarray, np.ndarray]
    classnames: list[str]
    split: dict


def linear_probe(model: nn.Module, data_path: str | Path, shots: tuple[int, ...] = DEFAULT_SHOTS, seed: int = 0,
                 splits: tuple[str, str, str] = ("train", "val", "test"),
                 extra_test: dict[str, str | Path] | None = None, split_seed: int = 0) -> dict:
    """`vlm eval linear-probe`: test accuracy (percent) per k-shot setting, with the C chosen for each.

    The images it trains on, chooses C on and scores are always disjoint (`probe_sets`). `splits`: the names of
    the train, val and test splits; `extra_test`: other worlds with the same classes (name -> folder), scored by
    the same classifiers."""
    from vlm.eval.data import load_classification
    from vlm.models.preprocess import model_transform

    transform = model_transform(model)
    sets = probe_sets(model, data_path, splits, split_seed)
    (train_x, val_x, test_x), (train_y, val_y, test_y) = sets.x, sets.y
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
            "split": sets.split, "feature_dim": int(train_x.shape[1]), "classes": len(sets.classnames),
            "results": results}


def probe_sets(model: nn.Module, data_path: str | Path, splits: tuple[str, str, str], split_seed: int) -> ProbeSets:
    """Train, val and test features, never overlapping:

    - a shapes-world folder: its classify splits; `DIR/{train,val,test}/<class>/` (ImageFolder's layout): those
      folders. Without a val split (or when val is the one scored), C is chosen on a seeded VAL_FRACTION of
      each class's training images;
    - anything else (a plain `DIR/<class>/` tree, a labelled pairs file): one set, split per class with
      `split_seed` into SPLIT_FRACTIONS, or refused when a class has too few images for three parts."""
    from vlm.eval.data import is_shapes_world

    root = Path(data_path)
    if splits[2] == splits[0]:
        raise ValueError(f"{root}: --split {splits[2]} is the split the probe trains on; score another")
    if is_shapes_world(root) or has_split_folders(root):
        return _named_splits(model, root, splits, split_seed, folders=not is_shapes_world(root))
    if splits[2] != "test":
        raise ValueError(f"{root}: has no {splits[2]}/ folder (no DIR/{{train,val,test}}/<class> layout): the probe "
                         f"splits it itself, seeded, and scores that split's test part; leave --split out")
    return _seeded_three_way(model, root, split_seed)


def has_split_folders(root: Path) -> bool:
    """`DIR/train/<class>/`: a train folder of class folders (a class named "train" holds images, not folders)."""
    train = root / "train"
    return root.is_dir() and train.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in train.iterdir())


def _features(model: nn.Module, path: Path, split: str | None = None):
    from vlm.eval.data import load_classification
    from vlm.models.preprocess import model_transform

    data = load_classification(path, model_transform(model), split)
    return image_features(model, data.images), data.labels.numpy(), data.classnames


def _named_splits(model: nn.Module, root: Path, splits: tuple[str, str, str], split_seed: int,
                  folders: bool) -> ProbeSets:
    """The train and test splits as named; val as named when it exists and is not the test split, else a seeded
    VAL_FRACTION of each class of train. `folders`: `DIR/<split>/<class>`, else a shapes world's splits."""
    from data_pipelines.sources import shapes_splits

    train_name, val_name, test_name = splits
    available = {p.name for p in root.iterdir() if p.is_dir()} if folders else set(shapes_splits(root))
    missing = [name for name in (train_name, test_name) if name not in available]
    if missing:
        raise ValueError(f"{root}: no split {missing[0]!r} (it has {', '.join(sorted(available))}); pass --split one "
                         "of those")
    has_val = val_name not in (train_name, test_name) and val_name in available
    names = [train_name, test_name] + ([val_name] if has_val else [])
    parts = {name: _features(model, root / name) if folders else _features(model, root, name) for name in names}
    for name in names[1:]:
        if parts[name][2] != parts[train_name][2]:
            raise ValueError(f"{root / name}: its classes differ from {root / train_name}'s; the labels would not "
                             "match: give every split the same class folders (empty ones are fine)")
    (train_x, train_y, classnames), (test_x, test_y, _) = parts[train_name], parts[test_name]
    if has_val:
        val_x, val_y, _ = parts[val_name]
        method = f"the splits {train_name}, {val_name} and {test_name}"
    else:
        keep, held = split_by_class(train_y, (1 - VAL_FRACTION, VAL_FRACTION), split_seed)
        (train_x, val_x), (train_y, val_y) = (train_x[keep], train_x[held]), (train_y[keep], train_y[held])
        method = (f"the splits {train_name} and {test_name}; C chosen on {VAL_FRACTION:.0%} of each class of "
                  f"{train_name} (seeded), held out of training")
    split = {"method": method, "seed": split_seed, "train": len(train_y), "val": len(val_y), "test": len(test_y)}
    return ProbeSets((train_x, val_x, test_x), (train_y, val_y, test_y), classnames, split)


def _seeded_three_way(model: nn.Module, root: Path, split_seed: int) -> ProbeSets:
    x, y, classnames = _features(model, root)
    counts = np.bincount(y, minlength=len(classnames))
    few = [(classnames[c], int(n)) for c, n in enumerate(counts) if 0 < n < len(SPLIT_FRACTIONS)]
    if few:
        raise ValueError(f"{root}: class {few[0][0]!r} has {few[0][1]} image(s); a linear probe splits each class "
                         f"into train, val and test, so it needs at least {len(SPLIT_FRACTIONS)} (or use "
                         "DIR/{train,val,test}/<class> folders)")
    parts = split_by_class(y, SPLIT_FRACTIONS, split_seed)
    fractions = "/".join(f"{f:.0%}" for f in SPLIT_FRACTIONS)
    split = {"method": f"one set split per class into train/val/test {fractions} (seeded, disjoint)",
             "seed": split_seed, **{name: len(p) for name, p in zip(("train", "val", "test"), parts, strict=True)}}
    return ProbeSets(tuple(x[p] for p in parts), tuple(y[p] for p in parts), classnames, split)


def split_by_class(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Disjoint index sets, stratified: of each class's n items, part i > 0 gets round(n * fraction), at least
    one, and part 0 the rest; a class with fewer items than parts stays whole in part 0. Seeded, sorted."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(labels):
        items = rng.permutation(np.flatnonzero(labels == c))
        if len(items) < len(fractions):
            parts[0].append(items)
            continue
        start = 0
        for i, fraction in enumerate(fractions[1:], 1):
            n = max(1, round(len(items) * fraction))
            parts[i].append(items[start:start + n])
            start += n
        parts[0].append(items[start:])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]
