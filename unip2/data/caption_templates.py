"""Captions for shapes-world scenes: five per image from varied templates over a small closed vocabulary.

Templates name the objects with their colours and counts, sizes, positions in the image, relations
between objects and the background tone, so a caption can only be matched to its image by looking at it.
Captions are lowercase words separated by single spaces (no punctuation): ``raw == " ".join(tokens)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from unip2.data.shapes import COLOURS, SHAPES

NUMBER_WORDS = ("one", "two", "three", "four")  # so a scene holds at most four objects
SIZE_WORDS = ("small", "large")
TONE_WORDS = ("dark", "light")
IMAGE_WORDS = ("image", "picture")
RELATIONS = ("to the left of", "to the right of", "above", "below", "next to")
# 3 x 3 grid of positions, indexed [row][column].
POSITIONS = (("top left", "top", "top right"), ("left", "center", "right"), ("bottom left", "bottom", "bottom right"))
# Every other word a template writes.
TEMPLATE_WORDS = ("a", "an", "and", "at", "there", "is", "are", "of", "on", "with", "in", "the", "background",
                  "shape", "shapes", "object", "objects")


@dataclass(frozen=True)
class ObjectFacts:
    """What a caption may say about one object; (cx, cy) is its centre in pixels."""

    colour: str
    shape: str
    size: str
    cx: float
    cy: float


def caption_vocabulary() -> tuple[str, ...]:
    """Every word the templates can write, sorted."""
    words = set(NUMBER_WORDS) | set(SIZE_WORDS) | set(TONE_WORDS) | set(IMAGE_WORDS) | set(TEMPLATE_WORDS)
    words |= set(COLOURS) | set(SHAPES) | {_plural(s) for s in SHAPES}
    for phrase in RELATIONS + tuple(p for row in POSITIONS for p in row):
        words |= set(phrase.split())
    return tuple(sorted(words))


def _plural(shape: str) -> str:
    return shape + "s"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(count: int, words: tuple[str, ...]) -> str:
    """``words`` = (size?, colour, shape); e.g. (2, ("small", "red", "circle")) -> "two small red circles"."""
    if count == 1:
        return " ".join((_article(words[0]),) + words)
    return " ".join((NUMBER_WORDS[count - 1],) + words[:-1] + (_plural(words[-1]),))


def _groups(objects: Sequence[ObjectFacts], *, with_size: bool) -> dict[tuple[str, ...], list[ObjectFacts]]:
    groups: dict[tuple[str, ...], list[ObjectFacts]] = {}
    for obj in objects:
        key = (obj.size, obj.colour, obj.shape) if with_size else (obj.colour, obj.shape)
        groups.setdefault(key, []).append(obj)
    return groups


def _inventory(groups: dict[tuple[str, ...], list[ObjectFacts]], order: np.ndarray) -> tuple[str, int]:
    """Join the groups' noun phrases in ``order``; also return the first group's count (verb agreement)."""
    keys = list(groups)
    phrases = [_noun_phrase(len(groups[keys[i]]), keys[i]) for i in order]
    return " and ".join(phrases), len(groups[keys[order[0]]])


def _relation(a: ObjectFacts, b: ObjectFacts, image_size: int) -> str | None:
    """Where ``a`` is relative to ``b``, or None when the direction is ambiguous (diagonal)."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(dx) >= 1.5 * abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    if abs(dy) >= 1.5 * abs(dx):
        return "above" if dy < 0 else "below"
    if np.hypot(dx, dy) <= 0.35 * image_size:
        return "next to"
    return None


def _position(obj: ObjectFacts, image_size: int) -> str:
    col = min(int(3 * obj.cx / image_size), 2)
    row = min(int(3 * obj.cy / image_size), 2)
    return POSITIONS[row][col]


def _candidates(objects: Sequence[ObjectFacts], tone: str, image_size: int,
                rng: np.random.Generator) -> list[list[str]]:
    """Candidate captions grouped by template family."""
    plain = _groups(objects, with_size=False)
    sized = _groups(objects, with_size=True)
    inv, first_count = _inventory(plain, rng.permutation(len(plain)))
    inv_sized, first_sized = _inventory(sized, rng.permutation(len(sized)))
    verb = "is" if first_count == 1 else "are"
    picture = IMAGE_WORDS[int(rng.integers(2))]
    families = [
        [inv, f"there {verb} {inv}"],
        [f"{_article(picture)} {picture} of {inv} on {_article(tone)} {tone} background",
         f"{_article(picture)} {picture} of {inv}"],
        [inv_sized, f"there {'is' if first_sized == 1 else 'are'} {inv_sized}",
         f"{_article(picture)} {picture} with {inv_sized}"],
    ]
    n = len(objects)
    noun = ("shape", "object")[int(rng.integers(2))]
    counted = f"{NUMBER_WORDS[n - 1]} {noun if n == 1 else noun + 's'}"
    families.append([f"{counted} on {_article(tone)} {tone} background with {inv}",
                     f"{_article(picture)} {picture} of {counted} with {inv_sized}"])
    # Positions: only for objects whose description is unique in the scene.
    positions = []
    for key, members in sized.items():
        if len(members) == 1:
            where = _position(members[0], image_size)
            positions.append(f"{_noun_phrase(1, key)} at the {where} of the {picture}")
    families.append(positions)
    # Relations between two groups, when every member pair agrees on the direction.
    relations = []
    keys = list(sized)
    for i, key_a in enumerate(keys):
        for j, key_b in enumerate(keys):
            if i == j:
                continue
            found = {_relation(a, b, image_size) for a in sized[key_a] for b in sized[key_b]}
            if len(found) == 1 and None not in found:
                rel = found.pop()
                subject = _noun_phrase(len(sized[key_a]), key_a)
                obj = _noun_phrase(len(sized[key_b]), key_b)
                relations.append(f"{subject} {rel} {obj}")
                relations.append(f"{subject} {'is' if len(sized[key_a]) == 1 else 'are'} {rel} {obj}")
    families.append(relations)
    return [f for f in families if f]


def make_captions(objects: Sequence[ObjectFacts], *, tone: str, image_size: int, rng: np.random.Generator,
                  count: int = 5) -> list[str]:
    """``count`` captions for one scene, distinct when the templates allow, from as many families as possible."""
    if not objects:
        raise ValueError("a scene to caption needs at least one object")
    families = _candidates(objects, tone, image_size, rng)
    pools = [list(rng.permutation(family)) for family in (families[i] for i in rng.permutation(len(families)))]
    chosen: list[str] = []
    while len(chosen) < count and any(pools):
        for pool in pools:
            while pool and pool[-1] in chosen:
                pool.pop()
            if pool and len(chosen) < count:
                chosen.append(str(pool.pop()))
    everything = [c for family in families for c in family]
    while len(chosen) < count:  # too few distinct sentences: repeat some
        chosen.append(everything[int(rng.integers(len(everything)))])
    return chosen
