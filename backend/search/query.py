"""A search's text, parsed: words, "exact phrases", -excluded, and fragments matched as substrings.

Nothing the user types reaches PostgreSQL as query syntax: each word goes through
`plainto_tsquery` and each phrase through `phraseto_tsquery` (parameters, combined here with
&& and !!), so operators, quotes and parentheses are only text. A word written in a script
without spaces between words (Chinese, Japanese, Thai...) is matched as a substring instead,
since a parser cannot split it into words.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

MAX_QUERY_CHARS = 200
MAX_TERMS = 12

_TOKEN = re.compile(r'(-?)"([^"]*)"?|(\S+)')
# Scripts written without spaces between words: matched as substrings.
_UNSPACED = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")


class QueryError(ValueError):
    """The text cannot be a search (said to the client as a 400)."""


@dataclass
class ParsedQuery:
    words: list[str] = field(default_factory=list)
    phrases: list[str] = field(default_factory=list)
    excluded_words: list[str] = field(default_factory=list)
    excluded_phrases: list[str] = field(default_factory=list)
    fragments: list[str] = field(default_factory=list)  # substrings, case-insensitive

    @property
    def positive(self) -> bool:
        return bool(self.words or self.phrases or self.fragments)

    def highlight_terms(self) -> list[str]:
        """The texts to mark in a snippet besides what the text search found: the fragments."""
        return self.fragments


def _unspaced(text: str) -> bool:
    for ch in text:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            if any(name.startswith(script) for script in _UNSPACED):
                return True
    return False


def parse_query(text: str) -> ParsedQuery:
    """Parse the user's search text; QueryError when nothing in it could be looked for."""
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"at most {MAX_QUERY_CHARS} characters")
    parsed = ParsedQuery()
    terms = 0
    for match in _TOKEN.finditer(text):
        negative, phrase, word = match.group(1), match.group(2), match.group(3)
        if word is not None:
            negative = "-" if word.startswith("-") and len(word) > 1 else ""
            word = word[1:] if negative else word
            if not word.strip('"'):
                continue
            word = word.strip('"')
            if negative:
                parsed.excluded_words.append(word)
            elif _unspaced(word):
                parsed.fragments.append(word)
            else:
                parsed.words.append(word)
        else:
            phrase = " ".join(phrase.split())
            if not phrase:
                continue
            if negative:
                parsed.excluded_phrases.append(phrase)
            elif _unspaced(phrase):
                parsed.fragments.append(phrase)
            else:
                parsed.phrases.append(phrase)
        terms += 1
        if terms > MAX_TERMS:
            raise QueryError(f"at most {MAX_TERMS} words and phrases")
    if not parsed.positive:
        raise QueryError("say what to find: a word, a \"phrase\" or a fragment (not only -excluded words)")
    return parsed


def tsquery_sql(parsed: ParsedQuery, config: str = "cfg") -> tuple[str, list[str]]:
    """The tsquery for the parsed text as SQL over `config` (a column or parameter giving the
    text-search configuration), and its parameters in order; ('', []) with no word or phrase."""
    parts: list[str] = []
    params: list[str] = []
    for word in parsed.words:
        parts.append(f"plainto_tsquery({config}, %s)")
        params.append(word)
    for phrase in parsed.phrases:
        parts.append(f"phraseto_tsquery({config}, %s)")
        params.append(phrase)
    if not parts:
        return "", []
    for word in parsed.excluded_words:
        parts.append(f"!! plainto_tsquery({config}, %s)")
        params.append(word)
    for phrase in parsed.excluded_phrases:
        parts.append(f"!! phraseto_tsquery({config}, %s)")
        params.append(phrase)
    return "(" + " && ".join(parts) + ")", params


def like_pattern(fragment: str) -> str:
    """An ILIKE pattern for the fragment as literal text."""
    escaped = fragment.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
