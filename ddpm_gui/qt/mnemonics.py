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

    The assignment is the cheapest one (the Hungarian method), a letter costing its place in the text's
    order of preference (the first letter of each word first): so as many texts as possible get a
    letter, and as many of them as can a word's first. A text that cannot get one (every letter of it
    taken) stays as it is; a text that already has a mnemonic keeps it."""
    texts = list(texts)
    fixed = set(taken) | {k for k in map(mnemonic, texts) if k is not None}
    rows = [i for i, t in enumerate(texts) if mnemonic(t) is None]
    letters = sorted({k for i in rows for k in _candidates(texts[i])} - fixed)
    none = 10**9  # the cost of no letter: more than any sum of preferences, so fewest texts go without
    cost = []
    for n, i in enumerate(rows):
        # a letter's place in the preferences, the earlier texts' counting a little more (ties go to them)
        weight = 1000 + len(rows) - n
        rank = {k: r * weight for r, k in enumerate(_candidates(texts[i]))}
        cost.append([rank.get(k, none) for k in letters] + [none] * len(rows))  # + "no letter" columns
    chosen = _cheapest_assignment(cost)
    out = list(texts)
    for row, col in enumerate(chosen):
        if col < len(letters) and cost[row][col] < none:
            out[rows[row]] = _insert(texts[rows[row]], letters[col])
    return out


def _cheapest_assignment(cost: list[list[int]]) -> list[int]:
    """For each row, the column it gets (distinct), at the least total cost; needs rows <= columns. The
    Hungarian method with potentials, O(rows^2 * columns)."""
    n = len(cost)
    if n == 0:
        return []
    m = len(cost[0])
    inf = float("inf")
    u, v = [0.0] * (n + 1), [0.0] * (m + 1)
    owner, way = [0] * (m + 1), [0] * (m + 1)  # column -> row (1-based, 0: none); the path back
    for i in range(1, n + 1):
        owner[0], j0 = i, 0
        least, used = [inf] * (m + 1), [False] * (m + 1)
        while True:
            used[j0] = True
            i0, delta, j1 = owner[j0], inf, 0
            for j in range(1, m + 1):
                if not used[j]:
                    reduced = cost[i0 - 1][j - 1] - u[i0] - v[j]
                    if reduced < least[j]:
                        least[j], way[j] = reduced, j0
                    if least[j] < delta:
                        delta, j1 = least[j], j
            for j in range(m + 1):
                if used[j]:
                    u[owner[j]] += delta
                    v[j] -= delta
                else:
                    least[j] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    chosen = [0] * n
    for j in range(1, m + 1):
        if owner[j]:
            chosen[owner[j] - 1] = j - 1
    return chosen


def _insert(text: str, key: str) -> str:
    """`text` with "&" before its first occurrence of `key` that starts a word, else its first one."""
    lower = text.lower()
    for m in re.finditer(r"[A-Za-z0-9]+", text):
        if lower[m.start()] == key:
            return text[: m.start()] + "&" + text[m.start() :]
    i = lower.index(key)
    return text[:i] + "&" + text[i:]
