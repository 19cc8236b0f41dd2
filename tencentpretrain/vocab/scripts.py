"""Which Unicode scripts a piece is written in: ``merge_tokenizers.py --scripts Han,Hiragana``.

A character belongs to a script by its Unicode **Script_Extensions** (``regex``'s
``\\p{scx=...}``), not by its bare Script property. The difference matters for CJK text: the
prolonged sound mark ``ー`` and the ideographic comma and full stop ``、。`` and brackets ``「」``
have Script Common, but their Script_Extensions name Hiragana and Katakana (and Han for the
punctuation), so they count as Japanese / Chinese here; ``々`` and ``〆`` count as Han.

A piece is kept when every character is in one of the chosen scripts, the ``▁`` word-boundary
marker aside. Characters whose Script_Extensions are only Common or Inherited (digits, ASCII and
full-width punctuation such as ``，``, symbols, emoji, variation selectors) do not count for any
script: name ``Common`` / ``Inherited`` among the scripts to admit them (which admits emoji and
every symbol too).

Names are Unicode's, in any case and with or without underscores or spaces (``Han``,
``Hiragana``, ``Canadian_Aboriginal``), or ISO 15924 codes (``Hani``, ``Kana``, ``Cyrl``).
"""
import difflib
import functools
import re

import regex

from tencentpretrain.tokenizer import TokenizerError

WHITESPACE = "\u2581"
SPELLING = ("Unicode script names or ISO 15924 codes, comma-separated, e.g. "
            "Han,Hiragana,Katakana or Hangul or Cyrillic")


def _known_scripts():
    """Script names ``regex`` knows, for suggestions (from its private tables: empty when
    they move; validation does not depend on them)."""
    try:
        from regex import _regex_core
        return sorted(_regex_core.PROPERTY_NAMES[_regex_core.PROPERTIES["SCRIPT"][0]][1].values())
    except Exception:  # noqa: BLE001 - only suggestions and names in the summary are lost
        return []


def _key(name):
    return re.sub(r"[\s_-]", "", name).upper()


def _same_script(name):
    """One key for a name and its code (``Han`` and ``Hani``), where regex's tables tell."""
    try:
        from regex import _regex_core
        return _regex_core.PROPERTIES["SCX"][1][_key(name)]
    except Exception:  # noqa: BLE001 - then only identical spellings count as the same
        return _key(name)


def parse_scripts(text, option="--scripts"):
    """``"Han,Hiragana"`` -> the names, validated; an unknown one is a one-line error."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise TokenizerError(f"{option} {text!r}: no script named ({SPELLING})")
    for name in names:
        if not re.fullmatch(r"[A-Za-z][A-Za-z_ -]*", name) or not _valid(name):
            close = difflib.get_close_matches(_key(name), _known_scripts(), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(c.title() for c in close)}?" if close else ""
            raise TokenizerError(f"{option}: {name!r} is not a Unicode script{hint} ({SPELLING}; "
                                 "the list: https://www.unicode.org/iso15924/iso15924-codes.html)")
    if len({_same_script(name) for name in names}) < len(names):
        raise TokenizerError(f"{option} {text!r}: a script is named twice")
    return names


def _valid(name):
    try:
        regex.compile(r"\p{scx=%s}" % name)
    except regex.error:
        return False
    return True


class ScriptFilter:
    """Sorts pieces by the chosen scripts: ``label(piece)`` is the scripts the piece is written
    in (``"Han"``, ``"Han+Hiragana"``) or None when a character is outside them;
    ``outside(piece)`` names the script of the first such character, for the summary."""

    def __init__(self, names):
        self.names = list(names)
        self.patterns = [regex.compile(r"\p{scx=%s}" % name) for name in self.names]
        self.other_scripts = [(name.title(), regex.compile(r"\p{sc=%s}" % name))
                              for name in _known_scripts()]

    @functools.lru_cache(maxsize=1 << 16)
    def scripts_of(self, ch):
        """Indices of the chosen scripts whose Script_Extensions hold ``ch``."""
        return frozenset(i for i, pattern in enumerate(self.patterns) if pattern.match(ch))

    def label(self, piece):
        sets = [self.scripts_of(ch) for ch in piece if ch != WHITESPACE]
        if not sets or not all(sets):
            return None
        sure = set().union(*(s for s in sets if len(s) == 1))
        if not sure:  # only characters shared by several scripts (ー, 、): the first named
            common = frozenset.intersection(*sets) or sets[0]
            sure = {min(common)}
        return "+".join(self.names[i] for i in sorted(sure))

    def outside(self, piece):
        """The Script (not the extensions) of the first character outside the chosen ones."""
        ch = next(ch for ch in piece if ch != WHITESPACE and not self.scripts_of(ch))
        return self._script_name(ch)

    @functools.lru_cache(maxsize=1 << 12)
    def _script_name(self, ch):
        for name, pattern in self.other_scripts:
            if pattern.match(ch):
                return name
        return "another script"


def format_counts(counts, limit=8):
    """``Counter`` -> ``"Han 120, Hiragana 40"``, most first (ties by name); past ``limit``
    names the rest are summed up."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{name} {n}" for name, n in ranked[:limit])
    rest = ranked[limit:]
    if rest:
        text += f", {sum(n for _, n in rest)} in {len(rest)} other scripts"
    return text

