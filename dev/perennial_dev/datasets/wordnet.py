"""WordNet noun supersenses as a class-incremental text-classification stream.

Each noun synset in WordNet 3.0 belongs to one lexicographer file (its
*supersense*), e.g. ``noun.animal`` or ``noun.artifact``. An example here is a
synset's definition (the gloss without its quoted usage examples) and its label
is that lexicographer file name. The data comes from Debian's ``wordnet-base``
package (``/usr/share/wordnet/data.noun``); nothing is downloaded.

:func:`read_noun_glosses` parses the data file; :func:`class_incremental_split`
turns the glosses into a deterministic class-incremental stream (classes arrive
a few at a time, in stages) plus held-out test sets per class.

Nothing in this module does work at import time.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "NOUN_LEXNAMES",
    "TOPS_LABEL",
    "WORDNET_DIR",
    "ClassIncrementalSplit",
    "Gloss",
    "class_incremental_split",
    "read_noun_glosses",
    "stage_of",
]

WORDNET_DIR = Path("/usr/share/wordnet")
"""Where Debian's ``wordnet-base`` package installs the WordNet 3.0 database."""

# The noun part of the standard WordNet lexicographer-file table, from
# lexnames(5WN): lex_filenum (the second field of a data.noun line) -> file name.
# Debian's wordnet-base does not ship the lexnames file itself, so it is
# hard-coded here.
NOUN_LEXNAMES: Mapping[int, str] = {
    3: "noun.Tops",
    4: "noun.act",
    5: "noun.animal",
    6: "noun.artifact",
    7: "noun.attribute",
    8: "noun.body",
    9: "noun.cognition",
    10: "noun.communication",
    11: "noun.event",
    12: "noun.feeling",
    13: "noun.food",
    14: "noun.group",
    15: "noun.location",
    16: "noun.motive",
    17: "noun.object",
    18: "noun.person",
    19: "noun.phenomenon",
    20: "noun.plant",
    21: "noun.possession",
    22: "noun.process",
    23: "noun.quantity",
    24: "noun.relation",
    25: "noun.shape",
    26: "noun.state",
    27: "noun.substance",
    28: "noun.time",
}

VERB_LEXNAMES: Mapping[int, str] = {
    29: "verb.body",
    30: "verb.change",
    31: "verb.cognition",
    32: "verb.communication",
    33: "verb.competition",
    34: "verb.consumption",
    35: "verb.contact",
    36: "verb.creation",
    37: "verb.emotion",
    38: "verb.motion",
    39: "verb.perception",
    40: "verb.possession",
    41: "verb.social",
    42: "verb.stative",
    43: "verb.weather",
}
"""The verb part of the lexicographer-file table (lexnames(5WN))."""

TOPS_LABEL = "noun.Tops"
"""The unique beginners of the noun hierarchy: the root, not a category, so excluded."""

_EXAMPLES_START = '; "'  # where the quoted usage examples begin in a gloss
_GLOSS_SEPARATOR = " | "


@dataclass(frozen=True)
class Gloss:
    """One noun synset's definition and its supersense.

    Attributes:
        synset: the 8-digit synset offset in ``data.noun`` (unique per synset).
        text: the definition (gloss without its quoted usage examples).
        label: the lexicographer file name, e.g. ``"noun.animal"``.
    """

    synset: str
    text: str
    label: str


def _definition(gloss: str) -> str:
    """Cut a raw gloss at its first quoted usage example and tidy the ends."""
    definition = gloss.split(_EXAMPLES_START, 1)[0]
    return definition.strip().strip('";').strip()


def read_noun_glosses(wordnet_dir: Path = WORDNET_DIR) -> list[Gloss]:
    """Read every noun synset's definition and supersense from ``data.noun``.

    License lines (starting with two spaces), synsets with an empty definition
    and ``noun.Tops`` synsets are skipped. Glosses come back in file order.

    Args:
        wordnet_dir: the directory holding WordNet's ``data.noun``.

    Raises:
        FileNotFoundError: ``data.noun`` is missing (install ``wordnet-base``).
        ValueError: a line is malformed or has an unknown noun lex_filenum.
    """
    return _read_glosses(Path(wordnet_dir) / "data.noun", "n", NOUN_LEXNAMES)


def read_verb_glosses(wordnet_dir: Path = WORDNET_DIR) -> list[Gloss]:
    """Read every verb synset's definition and supersense (``verb.motion``, …) from
    ``data.verb``, exactly as :func:`read_noun_glosses` reads nouns."""
    return _read_glosses(Path(wordnet_dir) / "data.verb", "v", VERB_LEXNAMES)


def _read_glosses(path: Path, pos: str, lexnames: Mapping[int, str]) -> list[Gloss]:
    if not path.is_file():
        raise FileNotFoundError(
            f"WordNet data not found at {path}; install the Debian package "
            "`wordnet-base` (apt-get install wordnet-base) or pass wordnet_dir"
        )
    glosses: list[Gloss] = []
    with path.open(encoding="utf-8") as lines:
        for lineno, line in enumerate(lines, start=1):
            if line.startswith("  ") or not line.strip():
                continue
            head, sep, gloss = line.partition(_GLOSS_SEPARATOR)
            fields = head.split()
            if not sep or len(fields) < 4 or fields[2] != pos:
                raise ValueError(f"{path}:{lineno}: not a synset line of {pos!r}: {line[:80]!r}")
            synset, lex_filenum = fields[0], fields[1]
            try:
                label = lexnames[int(lex_filenum)]
            except (ValueError, KeyError):
                raise ValueError(f"{path}:{lineno}: unknown lex_filenum {lex_filenum!r}") from None
            if label == TOPS_LABEL:
                continue
            text = _definition(gloss)
            if text:
                glosses.append(Gloss(synset=synset, text=text, label=label))
    return glosses


@dataclass(frozen=True)
class ClassIncrementalSplit:
    """A class-incremental stream over glosses, with held-out test sets.

    Attributes:
        classes: every class, in arrival order.
        stages: the classes grouped per stage, in arrival order (the last stage
            may be smaller when the class count is not a multiple of the stage size).
        train: the stream: all of stage 0's examples (shuffled within the stage),
            then stage 1's, and so on.
        test: held-out glosses per class; no synset here is also in ``train``.
    """

    classes: tuple[str, ...]
    stages: tuple[tuple[str, ...], ...]
    train: tuple[Gloss, ...]
    test: dict[str, tuple[Gloss, ...]]
    validation: dict[str, tuple[Gloss, ...]] = field(default_factory=dict)


def _require_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def class_incremental_split(
    glosses: Iterable[Gloss],
    *,
    num_classes: int | None = None,
    classes_per_stage: int = 4,
    train_per_class: int = 60,
    test_per_class: int = 20,
    validation_per_class: int = 0,
    min_per_class: int = 300,
    seed: int = 0,
    sample_seed: int | None = None,
) -> ClassIncrementalSplit:
    """Build a deterministic class-incremental stream from labelled glosses.

    Eligible classes are those other than ``noun.Tops`` with at least
    ``min_per_class`` distinct synsets. Their arrival order is a shuffle under
    ``seed`` (of the sorted class names), truncated to ``num_classes``; a given
    seed's order for fewer classes is a prefix of its order for more. Each class
    gets ``train_per_class + test_per_class`` distinct synsets sampled without
    replacement (by a generator seeded from ``sample_seed``, default ``seed``, and the
    class name, so a class's sample does not depend on which other classes are in the
    split, and with a fixed ``sample_seed`` not on the class order either); the first
    ``test_per_class`` go to test, the next ``validation_per_class`` to validation (carved
    from the training data: for every choice a benchmark makes), the rest to train. Duplicate
    synsets in ``glosses`` are collapsed to their first occurrence, so train
    and test never share a synset.

    Args:
        glosses: labelled glosses, e.g. from :func:`read_noun_glosses`.
        num_classes: how many classes to use; ``None`` means all eligible ones.
        classes_per_stage: how many classes arrive together in one stage.
        train_per_class: stream examples per class.
        test_per_class: held-out examples per class.
        validation_per_class: examples per class for choices (hyper-parameters), not streamed.
        min_per_class: the fewest synsets a class needs to be eligible; at least
            ``train_per_class + test_per_class``.
        seed: seeds every random choice (``random.Random``).
        sample_seed: seeds each class's sample instead of ``seed`` (fixed samples, many orders).

    Raises:
        ValueError: a size is not positive, ``min_per_class`` is smaller than
            ``train_per_class + test_per_class``, or ``num_classes`` exceeds the
            number of eligible classes.
    """
    for name, value in (
        ("classes_per_stage", classes_per_stage),
        ("train_per_class", train_per_class),
        ("test_per_class", test_per_class),
        ("min_per_class", min_per_class),
    ):
        _require_positive(name, value)
    if num_classes is not None:
        _require_positive("num_classes", num_classes)
    needed = train_per_class + test_per_class + validation_per_class
    if min_per_class < needed:
        raise ValueError(
            f"min_per_class={min_per_class} is smaller than train_per_class + "
            f"test_per_class + validation_per_class = {needed}"
        )

    by_class: dict[str, list[Gloss]] = {}
    seen: set[str] = set()
    for gloss in glosses:
        if gloss.synset in seen:
            continue
        seen.add(gloss.synset)
        by_class.setdefault(gloss.label, []).append(gloss)

    eligible = sorted(
        label
        for label, members in by_class.items()
        if label != TOPS_LABEL and len(members) >= min_per_class
    )
    random.Random(seed).shuffle(eligible)
    if num_classes is not None:
        if num_classes > len(eligible):
            raise ValueError(
                f"num_classes={num_classes} but only {len(eligible)} classes have "
                f"at least min_per_class={min_per_class} examples"
            )
        eligible = eligible[:num_classes]
    classes = tuple(eligible)

    train_of: dict[str, list[Gloss]] = {}
    test: dict[str, tuple[Gloss, ...]] = {}
    validation: dict[str, tuple[Gloss, ...]] = {}
    sampling = seed if sample_seed is None else sample_seed
    for label in classes:
        members = sorted(by_class[label], key=lambda g: g.synset)
        sample = random.Random(f"{sampling}:class:{label}").sample(members, needed)
        test[label] = tuple(sample[:test_per_class])
        validation[label] = tuple(sample[test_per_class : test_per_class + validation_per_class])
        train_of[label] = sample[test_per_class + validation_per_class :]

    stages = tuple(
        classes[start : start + classes_per_stage]
        for start in range(0, len(classes), classes_per_stage)
    )
    train: list[Gloss] = []
    for index, stage in enumerate(stages):
        stage_examples = [gloss for label in stage for gloss in train_of[label]]
        random.Random(f"{seed}:stage:{index}").shuffle(stage_examples)
        train.extend(stage_examples)

    return ClassIncrementalSplit(
        classes=classes, stages=stages, train=tuple(train), test=test, validation=validation
    )


def stage_of(split: ClassIncrementalSplit, label: str) -> int:
    """Return the index of the stage in which ``label`` arrives.

    Raises:
        ValueError: ``label`` is not one of the split's classes.
    """
    for index, stage in enumerate(split.stages):
        if label in stage:
            return index
    raise ValueError(f"label {label!r} is not in this split's classes")
