"""Alt+letter mnemonics: one letter per control among those shown together, none taken twice.

Qt gives a mnemonic to every button, group box and label-with-buddy whose text holds "&x". Two controls
on screen with the same letter make Alt+x ambiguous (Qt then only moves the focus between them), and a
control with a menu's letter loses to the menu. The menus' letters (`MENU_TITLES`) are therefore taken
everywhere; a panel keeps its own buttons' letters apart by hand and gives the rows it generates (the
Train tab's settings) letters with `assign_mnemonics`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MENU_TITLES = {"file": "&File", "view": "&View", "help": "&Help"}  # the main window's menu bar


def mnemonic(text: str) -> str | None:
    """The lower-case mnemonic letter of `text` ("Sa&ve" -> "v"; "&&" is a literal ampersand), or None."""
    m = re.search(r"&([^&])", text.replace("&&", ""))
    return m.group(1).lower() if m else None


WINDOW_KEYS = frozenset(mnemonic(t) for t in MENU_TITLES.values())


def _candidates(text: str) -> list[str]:
    """The letters of `text` in order of preference: the first letter of each word, then the others."""
    words = re.findall(r"[A-Za-z0-9]+", text)
    first = [w[0].lower() for w in words]
    rest = [c.lower() for w in words for c in w[1:]]
    return list(dict.fromkeys(first + rest))


def assign_mnemonics(texts: Iterable[str], taken: Iterable[str] = ()) -> list[str]:
    """`texts` with "&" put before a letter each, no two the same and none in `taken` (lower case).

    Finds the largest set of texts that can all have distinct letters (a bipartite matching, each text
    trying its letters in order of preference), so one text's pick never leaves another without a
    letter it could have had. A text that cannot get one (every letter of it taken) stays as it is;
    a text that already has a mnemonic keeps it."""
    texts = list(texts)
    owner: dict[str, int] = {k: -1 for k in taken}  # letter -> index of the text that has it (-1: fixed)
    for i, t in enumerate(texts):
        k = mnemonic(t)
        if k is not None:
            owner.setdefault(k, i)
    options = [[] if mnemonic(t) is not None else _candidates(t) for t in texts]

    def place(i: int, seen: set[str]) -> bool:
        for k in options[i]:
            if k in seen:
                continue
            seen.add(k)
            holder = owner.get(k)
            if holder is None or (holder >= 0 and options[holder] and place(holder, seen)):
                owner[k] = i
                return True
        return False

    # the texts with the fewest letters first: they have the least choice
    for i in sorted(range(len(texts)), key=lambda j: len(options[j])):
        if options[i]:
            place(i, set())
    letter = {i: k for k, i in owner.items() if i >= 0 and options[i]}
    return [_insert(t, letter[i]) if i in letter else t for i, t in enumerate(texts)]


def _insert(text: str, key: str) -> str:
    """`text` with "&" before its first occurrence of `key` that starts a word, else its first one."""
    lower = text.lower()
    for m in re.finditer(r"[A-Za-z0-9]+", text):
        if lower[m.start()] == key:
            return text[: m.start()] + "&" + text[m.start() :]
    i = lower.index(key)
    return text[:i] + "&" + text[i:]
