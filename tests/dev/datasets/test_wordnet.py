"""Tests for perennial_dev.datasets.wordnet against the real wordnet-base files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from perennial_dev.datasets.wordnet import (
    NOUN_LEXNAMES,
    TOPS_LABEL,
    VERB_LEXNAMES,
    WORDNET_DIR,
    ClassIncrementalSplit,
    Gloss,
    class_incremental_split,
    read_noun_glosses,
    read_verb_glosses,
    stage_of,
)

if not (WORDNET_DIR / "data.noun").is_file():  # pragma: no cover - environment guard
    pytest.skip("wordnet-base is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def glosses() -> list[Gloss]:
    return read_noun_glosses()


@pytest.fixture(scope="module")
def split(glosses: list[Gloss]) -> ClassIncrementalSplit:
    return class_incremental_split(glosses)


# --- reading -----------------------------------------------------------------


def test_lexnames_table_is_the_noun_part_of_lexnames_5wn() -> None:
    assert sorted(NOUN_LEXNAMES) == list(range(3, 29))
    assert NOUN_LEXNAMES[3] == TOPS_LABEL
    assert NOUN_LEXNAMES[5] == "noun.animal"
    assert NOUN_LEXNAMES[28] == "noun.time"


def test_labels_are_known_and_never_tops(glosses: list[Gloss]) -> None:
    labels = {g.label for g in glosses}
    assert labels <= set(NOUN_LEXNAMES.values())
    assert TOPS_LABEL not in labels
    assert len(labels) == 25  # 26 noun lexicographer files minus noun.Tops


def test_glosses_are_well_formed(glosses: list[Gloss]) -> None:
    assert len(glosses) > 80_000
    assert len({g.synset for g in glosses}) == len(glosses)
    for g in glosses:
        assert len(g.synset) == 8 and g.synset.isdigit()
        assert g.text and g.text == g.text.strip()
        assert '; "' not in g.text
        assert g.text[0] not in '";' and g.text[-1] not in '";'


def test_dog_synset(glosses: list[Gloss]) -> None:
    # data.noun: 02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 ... |
    # a member of the genus Canis (...) ...; occurs in many breeds; "the dog barked all night"
    dog = next(g for g in glosses if g.synset == "02084071")
    assert dog.label == "noun.animal"
    assert dog.text == (
        "a member of the genus Canis (probably descended from the common wolf) "
        "that has been domesticated by man since prehistoric times; occurs in many breeds"
    )


def test_other_known_synsets(glosses: list[Gloss]) -> None:
    by_synset = {g.synset: g for g in glosses}
    # 00001930 physical_entity is noun.Tops: skipped.
    assert "00001930" not in by_synset
    # 03001627 chair: a seat for one person, with a support for the back
    chair = by_synset["03001627"]
    assert chair.label == "noun.artifact"
    assert chair.text.startswith("a seat for one person")


def test_missing_directory_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        read_noun_glosses(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        read_noun_glosses(tmp_path)


# --- the split ---------------------------------------------------------------


def test_default_split_uses_every_eligible_class(
    glosses: list[Gloss], split: ClassIncrementalSplit
) -> None:
    counts = Counter(g.label for g in glosses)
    eligible = {label for label, n in counts.items() if n >= 300}
    assert set(split.classes) == eligible
    assert len(split.classes) == 24
    assert "noun.motive" not in split.classes  # 42 synsets: below min_per_class


def test_sizes_match_arguments(glosses: list[Gloss]) -> None:
    s = class_incremental_split(
        glosses, num_classes=10, classes_per_stage=3, train_per_class=7, test_per_class=5
    )
    assert len(s.classes) == 10
    assert [len(stage) for stage in s.stages] == [3, 3, 3, 1]
    assert len(s.train) == 10 * 7
    assert Counter(g.label for g in s.train) == {label: 7 for label in s.classes}
    assert set(s.test) == set(s.classes)
    assert all(len(t) == 5 for t in s.test.values())
    for label, held_out in s.test.items():
        assert all(g.label == label for g in held_out)
        assert len({g.synset for g in held_out}) == 5


def test_train_and_test_are_disjoint(split: ClassIncrementalSplit) -> None:
    train_synsets = [g.synset for g in split.train]
    test_synsets = [g.synset for held_out in split.test.values() for g in held_out]
    assert len(set(train_synsets)) == len(train_synsets)
    assert len(set(test_synsets)) == len(test_synsets)
    assert not set(train_synsets) & set(test_synsets)


def test_stages_partition_classes(split: ClassIncrementalSplit) -> None:
    flattened = [label for stage in split.stages for label in stage]
    assert tuple(flattened) == split.classes
    assert len(set(flattened)) == len(flattened)
    assert all(len(stage) == 4 for stage in split.stages)
    assert len(split.stages) == 6


def test_stream_is_stage_by_stage(split: ClassIncrementalSplit) -> None:
    stage_indices = [stage_of(split, g.label) for g in split.train]
    assert stage_indices == sorted(stage_indices)
    per_stage = 60 * 4
    for index, stage in enumerate(split.stages):
        block = split.train[index * per_stage : (index + 1) * per_stage]
        assert {g.label for g in block} == set(stage)
    # Shuffled within a stage: the labels of stage 0 are interleaved, not in runs.
    first = [g.label for g in split.train[:per_stage]]
    runs = sum(1 for a, b in zip(first, first[1:], strict=False) if a != b)
    assert runs > 10


def test_same_seed_is_identical(glosses: list[Gloss], split: ClassIncrementalSplit) -> None:
    again = class_incremental_split(glosses, seed=0)
    assert again == split
    # Independent of input order.
    assert class_incremental_split(list(reversed(glosses)), seed=0) == split


def test_different_seed_differs(glosses: list[Gloss], split: ClassIncrementalSplit) -> None:
    other = class_incremental_split(glosses, seed=1)
    assert set(other.classes) == set(split.classes)
    assert other.classes != split.classes
    assert other.train != split.train


def test_num_classes_truncates_the_same_order(
    glosses: list[Gloss], split: ClassIncrementalSplit
) -> None:
    small = class_incremental_split(glosses, num_classes=8)
    assert small.classes == split.classes[:8]
    assert small.stages == split.stages[:2]
    assert small.train == split.train[: 8 * 60]
    assert small.test == {label: split.test[label] for label in small.classes}


def test_duplicate_synsets_never_leak_into_test() -> None:
    glosses = [Gloss(f"{i:08d}", f"text {i}", "noun.a") for i in range(10)]
    glosses += glosses  # every synset twice
    s = class_incremental_split(glosses, train_per_class=6, test_per_class=4, min_per_class=10)
    assert not {g.synset for g in s.train} & {g.synset for g in s.test["noun.a"]}


def test_tops_is_never_eligible() -> None:
    glosses = [Gloss(f"{i:08d}", f"text {i}", TOPS_LABEL) for i in range(10)]
    glosses += [Gloss(f"{i:08d}", f"text {i}", "noun.a") for i in range(10, 20)]
    s = class_incremental_split(glosses, train_per_class=5, test_per_class=5, min_per_class=10)
    assert s.classes == ("noun.a",)


def test_stage_of(split: ClassIncrementalSplit) -> None:
    for index, stage in enumerate(split.stages):
        for label in stage:
            assert stage_of(split, label) == index
    with pytest.raises(ValueError, match="noun.motive"):
        stage_of(split, "noun.motive")


@pytest.mark.parametrize(
    ("kwargs", "value"),
    [
        ({"num_classes": 25}, "25"),
        ({"num_classes": 0}, "0"),
        ({"classes_per_stage": 0}, "0"),
        ({"train_per_class": -3}, "-3"),
        ({"test_per_class": 0}, "0"),
        ({"min_per_class": -1}, "-1"),
        ({"train_per_class": 290, "test_per_class": 20}, "310"),
    ],
)
def test_bad_arguments(glosses: list[Gloss], kwargs: dict[str, int], value: str) -> None:
    with pytest.raises(ValueError, match=rf"(?<![\d-]){value}(?!\d)"):
        class_incremental_split(glosses, **kwargs)


def test_verb_supersenses_are_read_like_nouns() -> None:
    verbs = read_verb_glosses()
    labels = {g.label for g in verbs}
    assert labels <= set(VERB_LEXNAMES.values()) and "verb.motion" in labels
    assert all(g.text and '; "' not in g.text for g in verbs)
    assert len({g.synset for g in verbs}) == len(verbs)


def test_validation_is_carved_from_training_data_and_samples_can_be_fixed() -> None:
    glosses = read_noun_glosses()
    first, second = (
        class_incremental_split(glosses, num_classes=6, train_per_class=10, test_per_class=5,
                                validation_per_class=4, seed=seed, sample_seed=7)
        for seed in (0, 1)
    )  # fmt: skip
    assert first.classes != second.classes or first.stages != second.stages
    common = set(first.classes) & set(second.classes)
    for label in first.classes:
        train = {g.synset for g in first.train if g.label == label}
        held = {g.synset for g in first.validation[label]} | {g.synset for g in first.test[label]}
        assert len(first.validation[label]) == 4 and len(train) == 10 and not train & held
    for label in common:  # the same class gets the same sample whatever the order
        assert first.validation[label] == second.validation[label]
        assert first.test[label] == second.test[label]
