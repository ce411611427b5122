"""Noun phrases of a caption, for the open-vocabulary detector.

A small rule-based chunker (no tagger is needed): the caption is cut into runs of words at
function words (prepositions, conjunctions, auxiliaries, pronouns) and before every determiner;
punctuation ends a run, trailing ``-ing`` words are cut from a run of several
content words ("a man riding" -> "a man", "a building" stays), leading determiners and
numbers are kept, runs longer than ``max_words`` keep their last words. Each phrase is returned with
its character span in the caption, so the TSV row records it as ``tokens_positive``. Good captions
("a man riding a horse next to a red car") give good phrases; for a fixed vocabulary pass
``--phrases`` to ``prepare_data.py`` instead.
"""
from __future__ import annotations

import re

__all__ = ["caption_phrases"]

DETERMINERS = frozenset("""a an the some two three four five six seven eight nine ten several many
    few one his her their its my our your this that these those""".split())
FUNCTION_WORDS = frozenset("""in on at of with without near by under over above below behind beside besides
    between next to from into onto for through across along around against inside outside top front
    while and or but nor as than then so is are was were be been being am has have had do does did
    that which who whom whose where when there here it they he she we you i them him us what
    very also just not no up down out off away together each other""".split())
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")
_PUNCT = re.compile(r"[,.;:!?()\[\]\"]")


def _chunks(caption: str):
    run = []
    for m in _WORD.finditer(caption):
        w = m.group(0).lower()
        if run and _PUNCT.search(caption, run[-1].end(), m.start()):
            yield run
            run = []
        if w in FUNCTION_WORDS:
            if run:
                yield run
            run = []
        elif w in DETERMINERS:
            if run and any(x.group(0).lower() not in DETERMINERS for x in run):
                yield run
                run = []
            run.append(m)
        else:
            run.append(m)
    if run:
        yield run


def caption_phrases(caption: str, max_phrases: int = 8, max_words: int = 4) -> list[tuple[str, list[list[int]]]]:
    """``[(phrase, [[start, end]]), ...]`` in caption order, unique (case-insensitive), at most
    ``max_phrases``; ``caption[start:end] == phrase``."""
    out, seen = [], set()
    for run in _chunks(caption or ""):
        def content(r):
            return [m for m in r if m.group(0).lower() not in DETERMINERS]

        while len(content(run)) > 1 and run[-1].group(0).lower().endswith("ing"):
            run = run[:-1]
        if not content(run):
            continue
        if len(run) > max_words:
            run = run[-max_words:]
        start, end = run[0].start(), run[-1].end()
        phrase = caption[start:end]
        if phrase.lower() in seen:
            continue
        seen.add(phrase.lower())
        out.append((phrase, [[start, end]]))
        if len(out) == max_phrases:
            break
    return out
