"""Evaluation: does a sample obey its prompt, and do samples look like the data?

Two numbers, both measured with a small convolutional classifier trained on the shapes data:

Prompt accuracy, by category
    The classifier predicts every attribute of a scene (number of objects, each object's shape,
    colour and size, the position of a single object, the relation between two objects). A
    generated image counts as correct when *every* attribute its prompt states is predicted as
    stated; attributes the prompt leaves out ("a red circle" says nothing about size or position)
    are not checked. ``prompt_accuracy`` also reports the accuracy of each attribute on its own,
    and ``accuracy_by_category`` splits it the way GenEval does: single objects by attribute,
    two objects by the relation the prompt says, attribute binding, overall. Always read the
    table: an average over a prompt set hides the category that fails.

Relation probe
    ``relation_probe`` asks the text tower itself whether "A above B" differs from "A below B"
    (ARO's relation test): a bag of words scores 50%.

Fréchet distance (FD)
    Fit a Gaussian to the classifier's penultimate features of real images, N(mu_1, S_1), and one
    to those of generated images, N(mu_2, S_2). The Fréchet (2-Wasserstein) distance between two
    Gaussians has a closed form:

        FD = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1^1/2 S_2 S_1^1/2)^1/2)

    It is FID (Heusel et al., 2017) with our classifier in place of Inception-v3: 0 for identical
    feature distributions, growing with any difference in mean or spread. Numbers are comparable
    only between runs that use the same classifier and the same sample sizes (the estimate is
    biased upward for small N).

    The matrix square root needs no scipy. S_1 is symmetric positive semi-definite, so
    ``eigh`` gives S_1 = V diag(l) V^T and S_1^1/2 = V diag(sqrt(l)) V^T. Then
    M = S_1^1/2 S_2 S_1^1/2 is symmetric PSD too, and tr(M^1/2) = sum_i sqrt(eig_i(M)).
    (M is similar to S_1 S_2, so this is the tr((S_1 S_2)^1/2) of the usual FID formula,
    computed without ever taking the square root of a non-symmetric matrix.)

Text-image retrieval
    ``retrieval_accuracy``: for each held-out caption, is the image mini-CLIP finds most similar
    one the caption describes?

Digits
    A checkpoint trained on ``--data digits`` is judged by the digit classifier beside it
    (``digit_classifier.npz``): class accuracy by digit at each guidance scale, and the FD in its
    features beside the real-vs-real floor at the same sample size (``digits.py``).

The package: judge.py (the classifier's view: prompt accuracy, by category), frechet.py,
retrieval.py (mini-CLIP: retrieval, relation probe), digits.py (the digit classifier's view),
checkpoint.py (the command).

Read beside: ``minidiff/models/classifier.py`` (the judge), ``minidiff/datasets/captions.py``
(labels, `parse_caption`, FIXED_PROMPTS), ``minidiff/train/jobs.py`` (the ``classifier`` job
that trains it) and ``minidiff/zoo.py`` (where the shipped judge lives).
"""
from .checkpoint import (add_arguments, evaluate_checkpoint, generate, load_classifier, main,  # noqa: F401
                         match_size, sample_unconditional)
from .digits import (HELDOUT_DIGITS, digit_accuracy, digit_features, digit_frechet,  # noqa: F401
                     digit_frechet_floor, digit_prompts, evaluate_digits, heldout_digits, predict_digits)
from .frechet import (feature_statistics, frechet_distance_from_features,  # noqa: F401
                      frechet_distance_from_statistics, sqrtm_psd)
from .judge import (CLIP_HELDOUT_SEED, DEFAULT_CLASSIFIER, FIXED_PROMPTS, HELDOUT_SEED,  # noqa: F401
                    SINGLE_ATTRIBUTES, accuracy_by_category, arrange_batch, class_targets,
                    classifier_accuracy, classifier_features, format_categories, frechet_distance,
                    predict_labels, prompt_accuracy)
from .retrieval import format_probe, relation_probe, retrieval_accuracy  # noqa: F401
from ..models.classifier import (HEAD_NAMES, HEADS, AttributeClassifier, ClassifierConfig,  # noqa: F401
                                 classifier_loss, head_rows)
