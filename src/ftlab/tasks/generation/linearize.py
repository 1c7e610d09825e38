"""Structured inputs of the data-to-text tasks as flat text, exactly as the LoRA / Prefix-tuning GPT-2 recipes write them.

Formats (`microsoft/LoRA` examples/NLG/src/format_converting_{e2e,webnlg,dart}.py, whose E2E input comes from
Prefix-tuning's `src1_*.txt`):

* E2E meaning representation `name[The Vaults], eatType[pub], priceRange[more than £30]` becomes
  `name : The Vaults | Type : pub | price : more than £30` — attributes in MR order, `attr : value` joined by ` | `,
  with Prefix-tuning's attribute names (eatType -> Type, priceRange -> price, familyFriendly -> family friendly; the
  others keep their name). Values are kept as the CSV writes them: Prefix-tuning's copy was word-tokenised
  (`£ 30`), the official CSV we read is not (`£30`).
* WebNLG 2017: the `modifiedtripleset` triples `subject | property | object` become `subject : property : object`,
  joined by ` | ` (strings kept verbatim, underscores included).
* DART: each `[subject, relation, object]` becomes `subject : relation.lower() : object`, joined by ` | `.

A model then sees `<linearised input><sep> <target><eos>` (see `ftlab.tasks.generation.datamodule`).
"""
from __future__ import annotations

import re

from ...errors import DataError

Triple = tuple[str, str, str]

E2E_NAMES = {"eatType": "Type", "priceRange": "price", "familyFriendly": "family friendly"}
E2E_NAMES_BACK = {v: k for k, v in E2E_NAMES.items()}
_E2E_SLOT = re.compile(r"\s*([^\[\],]+?)\s*\[(.*?)\]\s*(?:,|$)")

PAIR_SEP, FIELD_SEP = " | ", " : "


def parse_e2e_mr(mr: str) -> list[tuple[str, str]]:
    """`name[X], eatType[Y]` -> [("name", "X"), ("eatType", "Y")]; raises DataError on anything else."""
    slots, pos = [], 0
    while pos < len(mr):
        match = _E2E_SLOT.match(mr, pos)
        if match is None:
            raise DataError(f"malformed E2E meaning representation {mr!r} at character {pos}: expected 'attr[value], ...'")
        slots.append((match.group(1), match.group(2)))
        pos = match.end()
    if not slots:
        raise DataError(f"empty E2E meaning representation {mr!r}")
    return slots


def linearize_e2e(slots: list[tuple[str, str]]) -> str:
    return PAIR_SEP.join(f"{E2E_NAMES.get(a, a)}{FIELD_SEP}{v}" for a, v in slots)


def delinearize_e2e(text: str) -> list[tuple[str, str]]:
    """Inverse of linearize_e2e (E2E values never contain ' | ' or ' : ')."""
    pairs = [p.split(FIELD_SEP, 1) for p in text.split(PAIR_SEP)]
    return [(E2E_NAMES_BACK.get(a, a), v) for a, v in pairs]


def linearize_triples(triples: list[Triple], lower_relation: bool = False) -> str:
    return PAIR_SEP.join(
        f"{s}{FIELD_SEP}{r.lower() if lower_relation else r}{FIELD_SEP}{o}" for s, r, o in triples
    )


def delinearize_triples(text: str) -> list[Triple]:
    """Inverse of linearize_triples when subjects and relations contain no ' : ' (objects may, e.g. a score '2-10 : 0-14')."""
    out = []
    for part in text.split(PAIR_SEP):
        fields = part.split(FIELD_SEP, 2)
        if len(fields) != 3:
            raise DataError(f"not a linearised triple: {part!r} (expected 'subject : relation : object')")
        out.append((fields[0], fields[1], fields[2]))
    return out
