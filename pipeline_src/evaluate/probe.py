"""Leaf-trait probe: does pretraining give features that know the leaf?

Each patch of a tile with plant pixels gets the mean of its plant pixels' traits (the tiles'
`traits`, from the scene's trait raster) as its target. Three feature sets are fitted to it
by ridge regression on the training tiles and scored on the test tiles:
  pretrained  the MAE encoder's output token of the patch (all patches visible, frozen)
  random      the same architecture with freshly initialised weights (seeded as training)
  spectrum    the patch's mean normalised spectrum over its plant pixels
R2 and RMSE over the test traits' standard deviation (NRMSE) per trait, beside the constant
prediction of the training mean (below 0 when the test plants' mean differs). Features and targets
are standardised on the training patches; the ridge penalty is chosen per feature set and
trait by 5-fold cross-validation over the training plants (folds by image: a plant's traits
are drawn once per plant, and training tiles overlap, so folds by tile or patch would
reward memorising plants; the test plants are new plants).
Ridge regression and its cross-validation are a few lines of numpy, written here.
"""

from __future__ import annotations

import numpy as np
import torch

from ..model.tokenizer import patchify

ALPHAS = tuple(10.0 ** k for k in range(-2, 7))
FEATURES = ("pretrained", "random", "spectrum")  # the feature sets evaluate/mae.py probes


def _patches(a: np.ndarray, patch: int) -> np.ndarray:
    """(n, C, H, W) -> (n, L, C, patch*patch): the model's patches (tokenizer.patchify), per patch."""
    return patchify(torch.from_numpy(np.ascontiguousarray(a)), patch).numpy().transpose(0, 2, 1, 3)


def patch_targets(traits: np.ndarray, plants: np.ndarray, patch: int, min_plant: float = 0.5):
    """Per patch of (n, T, H, W) traits and (n, H, W) plant masks: (keep (n, L) bool, mean traits (n, L, T),
    plant fraction (n, L)); a patch counts when at least min_plant of it is plant with known traits."""
    known = _patches((plants & np.isfinite(traits).all(1))[:, None], patch)[:, :, 0]  # (n, L, p*p)
    values = _patches(np.nan_to_num(traits), patch)  # (n, L, T, p*p)
    count = known.sum(-1)
    mean = (values * known[:, :, None]).sum(-1) / np.maximum(count, 1)[..., None]
    fraction = count / (patch * patch)
    return fraction >= min_plant, mean, fraction


def patch_spectra(tiles: np.ndarray, plants: np.ndarray, patch: int) -> np.ndarray:
    """(n, L, bands) mean normalised spectrum of each patch's plant pixels."""
    m = _patches(plants[:, None], patch)  # (n, L, 1, p*p)
    return (_patches(tiles, patch) * m).sum(-1) / np.maximum(m.sum(-1), 1)


def encoder_features(model, tiles: np.ndarray, device, batch: int = 16) -> np.ndarray:
    """(n, L, dim) encoder outputs of every patch, nothing masked (every rank runs the same passes)."""
    out = []
    with torch.no_grad():
        for lo in range(0, len(tiles), batch):
            x = torch.from_numpy(tiles[lo:lo + batch]).to(device)
            out.append(model.encode(x).float().cpu().numpy())
    return np.concatenate(out)


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Weights of standardised-input ridge regression (no intercept: inputs and targets are centred)."""
    gram = x.T @ x
    return np.linalg.solve(gram + alpha * len(x) * np.eye(gram.shape[0]), x.T @ y)


def fit_and_score(x_train, y_train, groups, x_test, y_test) -> dict:
    """Ridge from features to one trait: penalty by 5-fold CV over the groups (plants) of the
    training rows, R2 and NRMSE on test."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-8
    xt, xs = (x_train - mu) / sd, (x_test - mu) / sd
    ym, ys = y_train.mean(), y_train.std() + 1e-12
    yt = (y_train - ym) / ys
    plants = np.unique(groups)
    which = np.searchsorted(plants, groups) % 5  # plant k -> fold k mod 5
    best, best_err = ALPHAS[2], np.inf
    for alpha in ALPHAS if len(plants) >= 5 else ():  # too few plants to cross-validate: penalty 1
        err = 0.0
        for k in range(5):
            tr, va = which != k, which == k
            if not va.any() or not tr.any():
                continue
            w = _ridge(xt[tr], yt[tr], alpha)
            err += float(((xt[va] @ w - yt[va]) ** 2).sum())
        if err < best_err:
            best, best_err = alpha, err
    return {**_scores((xs @ _ridge(xt, yt, best)) * ys + ym, y_test), "alpha": best}


def _scores(pred, y_test: np.ndarray) -> dict:
    """R2 and RMSE over the test standard deviation of a prediction (an array, or a constant)."""
    resid = float(((pred - y_test) ** 2).mean())
    var = float(y_test.var())
    if var <= 0:
        return {"r2": float("nan"), "nrmse": float("nan")}
    return {"r2": 1 - resid / var, "nrmse": float(np.sqrt(resid / var))}


def probe(features: dict[str, tuple[np.ndarray, np.ndarray]], targets: tuple[np.ndarray, np.ndarray],
          groups: np.ndarray, names: list[str]) -> dict:
    """{trait: {feature set: {r2, nrmse, alpha}}} from (train, test) features (patches, dim) and
    (train, test) targets (patches, traits); groups: the training patches' plant (image)."""
    y_train, y_test = targets
    out = {}
    for ti, t in enumerate(names):
        out[t] = {name: fit_and_score(tr, y_train[:, ti], groups, te, y_test[:, ti]) for name, (tr, te) in features.items()}
        out[t]["training mean"] = constant_score(y_train[:, ti], y_test[:, ti])
    return out


def constant_score(y_train: np.ndarray, y_test: np.ndarray) -> dict:
    """R2 and NRMSE of predicting the training mean everywhere: what features must beat (new plants
    whose mean differs from the training plants' put it below 0)."""
    return {**_scores(y_train.mean(), y_test), "alpha": float("nan")}
