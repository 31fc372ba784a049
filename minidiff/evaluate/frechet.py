"""The Fréchet distance between two sets of features: FID's formula with our own feature network.

Fit a Gaussian to each feature set, N(mu_1, S_1) and N(mu_2, S_2). The Fréchet (2-Wasserstein)
distance between two Gaussians has a closed form:

    FD = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1^1/2 S_2 S_1^1/2)^1/2)

The matrix square root needs no scipy: S_1 is symmetric positive semi-definite, so ``eigh`` gives
S_1 = V diag(l) V^T and S_1^1/2 = V diag(sqrt(l)) V^T; M = S_1^1/2 S_2 S_1^1/2 is symmetric PSD too,
and tr(M^1/2) = sum_i sqrt(eig_i(M)) (M is similar to S_1 S_2, so this is the usual FID's
tr((S_1 S_2)^1/2), computed without the square root of a non-symmetric matrix).
"""
from __future__ import annotations

import numpy as np


def sqrtm_psd(matrix):
    """Square root of a symmetric positive semi-definite matrix: V diag(sqrt(l)) V^T (eigh).

    Eigenvalues that round-off pushed slightly below zero are clipped to zero."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2) -> float:
    """FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)   (float64)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"frechet_distance: statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    root1 = sqrtm_psd(sigma1)                                   # S1^1/2
    middle = root1 @ sigma2 @ root1                             # S1^1/2 S2 S1^1/2 (symmetric PSD)
    middle = (middle + middle.T) / 2                            # remove round-off asymmetry
    # tr(M^1/2) = sum_i sqrt(eig_i(M))
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum()
    mean_term = float(((mu1 - mu2) ** 2).sum())                # |mu1 - mu2|^2
    distance = mean_term + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
    return max(float(distance), 0.0)                            # >= 0 up to round-off


def feature_statistics(features):
    """(mean (D,), covariance (D, D)) of features (N, D), covariance with the 1/(N-1) estimator."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"frechet_distance: need features (N >= 2, D), got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance_from_features(real_features, generated_features) -> float:
    """FD between Gaussians fitted to two feature sets (N1, D) and (N2, D)."""
    return frechet_distance_from_statistics(*feature_statistics(real_features),
                                            *feature_statistics(generated_features))
