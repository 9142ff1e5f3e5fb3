"""Model prices from MODEL_PRICES_FILE (JSON or TOML), per million tokens, in one currency.

    {"currency": "USD", "version": "2026-12",
     "models": {"gpt-4o-mini": {"input": 0.15, "cached_input": 0.075, "output": 0.60}}}

`version` is optional (the file's content hash stands in). The file is read again when it
changes; a ledger row keeps the prices it was charged at, so a change never rewrites
history. A model the file does not name costs 0, and is logged once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

from llm.usage import CallUsage

log = logging.getLogger(__name__)

DEFAULT_CURRENCY = "USD"


@dataclass(frozen=True)
class Price:
    """Currency units per million tokens, so a token costs `price` micro-units."""

    input: float
    cached_input: float
    output: float
    version: str
    currency: str

    def cost_micros(self, usage: CallUsage) -> int:
        uncached = usage.input_tokens - usage.cached_input_tokens
        return math.ceil(uncached * self.input + usage.cached_input_tokens * self.cached_input
                         + usage.output_tokens * self.output - 1e-9)


def parse_prices(text: str, suffix: str) -> tuple[str, str, dict[str, Price]]:
    """(currency, version, prices by model) from a prices file's text; ValueError says what is wrong."""
    try:
        document = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"MODEL_PRICES_FILE is not valid {'TOML' if suffix == '.toml' else 'JSON'}: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("models"), dict):
        raise ValueError("MODEL_PRICES_FILE must have a `models` table: {model: {input, cached_input?, output}}")
    currency = str(document.get("currency") or DEFAULT_CURRENCY)
    version = str(document.get("version") or hashlib.sha256(text.encode()).hexdigest()[:12])
    prices = {}
    for model, entry in document["models"].items():
        try:
            values = {key: float(entry[key]) if key in entry else None for key in ("input", "cached_input", "output")}
        except (TypeError, ValueError):
            raise ValueError(f"MODEL_PRICES_FILE: the prices of {model!r} must be numbers") from None
        if values["input"] is None or values["output"] is None or any(
                v is not None and (v < 0 or not math.isfinite(v)) for v in values.values()):
            raise ValueError(f"MODEL_PRICES_FILE: {model!r} needs input and output prices, each 0 or more")
        prices[model] = Price(values["input"], values["cached_input"] if values["cached_input"] is not None
                              else values["input"], values["output"], version, currency)
    return currency, version, prices


class Prices:
    """The current prices; looks at the file's modification time on each lookup (a stat)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._prices: dict[str, Price] = {}
        self.currency = DEFAULT_CURRENCY
        self._unknown_logged: set[str] = set()
        if path is not None:
            self._reload()  # a bad file fails the start, not a turn

    def _reload(self) -> None:
        stat = os.stat(self._path)
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            currency, version, prices = parse_prices(self._path.read_text(encoding="utf-8"), self._path.suffix.lower())
            self._prices, self.currency, self._stamp = prices, currency, stamp
        log.info("model prices loaded", extra={"version": version, "models": len(prices)})

    def price_of(self, model: str) -> Price | None:
        if self._path is not None:
            try:
                self._reload()
            except (OSError, ValueError):  # keep charging the last good prices
                log.warning("MODEL_PRICES_FILE could not be read again; the last prices stay", exc_info=True)
        price = self._prices.get(model)
        if price is None and model not in self._unknown_logged:
            self._unknown_logged.add(model)
            log.warning("no price for this model: its calls cost 0", extra={"model": model})
        return price
