"""The guardrail's feature cache for FSA versions: the same labels as the predictor's own
scores, each holdout text encoded and projected once per PET and head projection, bounded."""

from __future__ import annotations

from perennial.learners import build_learner, load_predictor
from perennial.store import from_safetensors, to_safetensors
from services.trainer.guardrail import _CHUNK, FeatureCache
from tests.shared.test_fsa import CONFIG, WORDS, feed, stream

HOLDOUT = [text for texts in WORDS.values() for text in texts]


def predictor(learner):
    return load_predictor(learner.backbone, *from_safetensors(to_safetensors(*learner.serving())))


def own_labels(version, texts: list[str]) -> list[str]:
    best = version.scores(version.features.backbone, texts).argmax(-1).tolist()
    return [version.classes[i] for i in best]


def test_labels_equal_the_predictors_and_each_text_is_encoded_once_per_pet(tiny_backbone):
    learner = build_learner(tiny_backbone, CONFIG)
    examples = stream(list(WORDS))
    feed(learner, examples[:8])  # before the warm-up: frozen features only
    before = predictor(learner)
    feed(learner, examples[8:])
    assert learner.adapted
    after, again = predictor(learner), predictor(learner)  # two versions sharing one PET
    cache = FeatureCache()
    for version in (before, after, again):
        assert cache.labeller(version)(HOLDOUT) == own_labels(version, HOLDOUT)
    assert cache.computed == 2 * len(HOLDOUT)  # once frozen, once with the PET; `again` reused


def test_the_cache_is_bounded(tiny_backbone):
    learner = build_learner(tiny_backbone, CONFIG)
    feed(learner, stream(list(WORDS)))
    version = predictor(learner)
    cache = FeatureCache(max_entries=5)
    assert cache.labeller(version)(HOLDOUT) == own_labels(version, HOLDOUT)
    assert len(cache._rows) == 5


def test_rows_warmed_from_the_learner_serve_its_versions_judgements(tiny_backbone):
    """The trainer warms the cache from the learner as examples are held out (and all of them
    when the PET changes): a version's first judgement then encodes nothing."""
    learner = build_learner(tiny_backbone, CONFIG)
    feed(learner, stream(list(WORDS)))
    cache = FeatureCache()
    cache.warm(learner, HOLDOUT)
    assert cache.computed == len(HOLDOUT)
    version = predictor(learner)
    expanded = []
    expand = version.head.expand
    version.head.expand = lambda features: expanded.append(len(features)) or expand(features)
    labels = cache.labeller(version)(HOLDOUT)
    assert cache.computed == len(HOLDOUT)  # the learner's PET is the version's: all reused
    assert expanded == []  # and its head's projection: judging is one product with its weights
    assert labels == own_labels(version, HOLDOUT)


def test_a_paced_warm_calls_its_pacer_before_each_chunk_of_rows(tiny_backbone):
    """A background warm-up computes the holdout rows at its own pace: the pacer it passes runs
    before every backbone pass over a chunk of missing rows, and only for missing rows."""
    learner = build_learner(tiny_backbone, CONFIG)
    feed(learner, stream(list(WORDS)))
    holdout = [f"{text} {i}" for i in range(3) for text in HOLDOUT]  # more than one chunk
    paced: list[int] = []
    cache = FeatureCache()
    cache.warm(learner, holdout, between=lambda: paced.append(1))
    chunks = -(-len(holdout) // _CHUNK)
    assert chunks > 1 and len(paced) == chunks
    assert cache.computed == len(holdout)
    cache.warm(learner, holdout, between=lambda: paced.append(-1))
    assert len(paced) == chunks  # all rows kept: no pass, no pause
    labels = cache.labeller(predictor(learner))(holdout)
    assert labels == own_labels(predictor(learner), holdout)
