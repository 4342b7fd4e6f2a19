"""The synthetic market: a seeded tape of trades, pre-rendered, replayed with fresh ``q`` and ``t``.

Speed comes from doing the per-trade work once, at start: a tape of N trades (symbols drawn
Zipf-like, exchanges, lots, conditions, prices on a random walk) is rendered into one
``bytes`` format template per block of ``batch`` trades, with ``%`` slots for the only
fields that change as the tape repeats: ``t`` (one value per frame), ``q`` (per trade) and
``trft``, plus ``i`` with ``--stamp-ids``. A frame is then one ``template % args`` with the
``q`` values computed by C-level ``map`` calls: ``q = q_base + loop * q_step``, where
``q_step`` is the symbol's number of trades in the tape. So ``q`` is consecutive per symbol
for the whole run, and each symbol's prices follow a Brownian bridge that ends each lap of
the tape where it began, so the repetition has no jumps.

Everything is a function of ``--seed`` (and the tape and batch sizes): the same arguments
give the same bytes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import add, itemgetter, mul

from simulator.batches import Groups, Trades
from simulator.symbols import SymbolInfo

DEFAULT_TAPE_SIZE = 65536
PRICE_SCALE = 10_000  # prices are held in 1/100 of a cent
CENT = PRICE_SCALE // 100

TRF_SHARE = 0.38  # off-exchange prints reported to a FINRA TRF (x=4, with trfi/trft)
TRF_IDS = ((201, 0.35), (202, 0.45), (203, 0.20))  # Nasdaq Carteret, NYSE, Nasdaq Chicago
EXCHANGES = (  # Polygon exchange id, share of the lit trades
    (12, 0.22), (11, 0.10), (10, 0.07), (8, 0.10), (19, 0.09), (21, 0.08), (15, 0.05),
    (7, 0.04), (18, 0.04), (2, 0.04), (17, 0.03), (20, 0.03), (3, 0.03), (9, 0.02), (1, 0.02),
    (16, 0.04),
)
ODD_LOT = 37
INTERMARKET_SWEEP = 14
TRADE_THROUGH_EXEMPT = 41
ROUND_LOTS = ((1, 45), (2, 15), (3, 8), (4, 5), (5, 8), (10, 6), (20, 2), (50, 1), (100, 0.3))
STEPS = (0, 1, -1, 2, -2, 3, -3)  # ticks per print, times the name's scale
STEP_WEIGHTS = (0.55, 0.175, 0.175, 0.025, 0.025, 0.025, 0.025)


def format_price(units: int) -> bytes:
    """Price in 1/100 cent -> JSON number as Polygon writes it: ``114.125``, ``52``, ``0.0512``."""
    whole, frac = divmod(units, PRICE_SCALE)
    if not frac:
        return b"%d" % whole
    return (b"%d.%04d" % (whole, frac)).rstrip(b"0")


def price_tick(units: int) -> int:
    """Minimum increment: a cent at or above $1.00, 1/100 cent below (Reg NMS rule 612)."""
    return CENT if units >= PRICE_SCALE else 1


@dataclass(frozen=True)
class TapeTrade:
    symbol: int
    exchange: int
    trade_id: int
    tape: int
    price: int
    size: int
    conditions: tuple[int, ...]
    trf_id: int | None


@dataclass(frozen=True)
class TradeLayout:
    """Which ``%`` argument slots a rendered trade has, in order."""

    stamped: bool

    @property
    def slots(self) -> int:
        return 4 if self.stamped else 3

    @property
    def q_slot(self) -> int:
        return self.slots - 2

    def pattern(self, t: bytes, trft: bytes, stamp: bytes | None) -> list[bytes | int]:
        if self.stamped:
            return [stamp if stamp is not None else b"0", t, 0, trft]
        return [t, 0, trft]


def trade_template(trade: TapeTrade, name: str, layout: TradeLayout) -> bytes:
    """One trade as a ``%`` template: ``t`` then ``q`` then ``trft`` (ignored without a TRF)."""
    trade_id = b"%s" if layout.stamped else b"%d" % trade.trade_id
    head = b'{"ev":"T","sym":"%s","x":%d,"i":"%s","z":%d,"p":%s,"s":%d,' % (
        name.encode(), trade.exchange, trade_id, trade.tape, format_price(trade.price), trade.size)
    conditions = b""
    if trade.conditions:
        conditions = b'"c":[%s],' % b",".join(b"%d" % c for c in trade.conditions)
    if trade.trf_id is None:
        tail = b'"t":%s,"q":%d%.0s}'  # %.0s swallows the trft argument: one layout for all
    else:
        tail = b'"t":%%s,"q":%%d,"trfi":%d,"trft":%%s}' % trade.trf_id
    return head + conditions + tail


def _pick(indexes: Sequence[int]) -> Callable[[Sequence[int]], Sequence[int]]:
    """A C-level gather: ``_pick([2, 0])(seq) == (seq[2], seq[0])`` for any length."""
    if len(indexes) == 1:
        only = indexes[0]
        return lambda seq: (seq[only],)
    return itemgetter(*indexes)


class Block:
    """Consecutive tape trades rendered as one frame template and one grouped template."""

    def __init__(self, pieces: Sequence[bytes], symbols: Sequence[str],
                 q_base: list[int], q_step: list[int]) -> None:
        self.count = len(pieces)
        self.template = b"[" + b",".join(pieces) + b"]"
        self.symbols = list(symbols)
        self.q_base = q_base
        self.q_step = q_step
        order: dict[str, list[int]] = {}
        for position, symbol in enumerate(symbols):
            order.setdefault(symbol, []).append(position)
        self.group_symbols = list(order)
        self.group_sizes = [len(p) for p in order.values()]
        grouped = [i for positions in order.values() for i in positions]
        self.grouped = b"\n".join(b"".join(pieces[i] for i in positions)
                                  for positions in order.values())
        self.gather_grouped = _pick(grouped)
        self.gather_first = _pick([p[0] for p in order.values()])
        self.gather_last = _pick([p[-1] for p in order.values()])

    def qs(self, lap: int) -> list[int]:
        if lap == 0:
            return self.q_base
        return list(map(add, self.q_base, map(mul, self.q_step, repeat(lap))))


class SyntheticBatch:
    """One frame of the synthetic market: a block on a given lap of the tape at time ``t``."""

    __slots__ = ("_args", "_groups", "_payload", "block", "count", "layout", "qs", "t", "trft")

    def __init__(self, block: Block, lap: int, t_ms: int, layout: TradeLayout) -> None:
        self.block = block
        self.count = block.count
        self.layout = layout
        self.qs = block.qs(lap)
        self.t = b"%d" % t_ms
        self.trft = b"%d" % (t_ms - 1)
        self._args: list[bytes | int] = []
        self._payload = b""
        self._groups: Groups | None = None

    def render(self, stamp: bytes | None = None) -> bytes:
        layout = self.layout
        args = layout.pattern(self.t, self.trft, stamp) * self.count
        args[layout.q_slot::layout.slots] = self.qs
        self._args = args
        self._payload = self.block.template % tuple(args)
        return self._payload

    def groups(self) -> Groups:
        if self._groups is None:
            block, layout = self.block, self.layout
            args = self._args[: layout.slots] * self.count
            args[layout.q_slot::layout.slots] = block.gather_grouped(self.qs)
            payloads = (block.grouped % tuple(args)).split(b"\n")
            firsts, lasts = block.gather_first(self.qs), block.gather_last(self.qs)
            self._groups = Groups(block.group_symbols, payloads, block.group_sizes,
                                  list(firsts), list(lasts))
        return self._groups

    def trades(self) -> Trades:
        inner = self._payload[2:-2].split(b"},{")
        return Trades(self.block.symbols, [b"{" + p + b"}" for p in inner], list(self.qs))


class TapeGenerator:
    """Draws the tape's trades from a seeded ``random.Random``; pure and deterministic.

    Trades come in events, as on a real tape: mostly single prints, often a few prints of
    one symbol at once, and intermarket sweeps that walk the price across venues.
    """

    def __init__(self, symbols: Sequence[SymbolInfo], rng: random.Random) -> None:
        self.symbols = symbols
        self.rng = rng
        self.lit_ids, self.lit_weights = zip(*EXCHANGES, strict=True)
        self.trf_ids, self.trf_weights = zip(*TRF_IDS, strict=True)
        self.lots, self.lot_weights = zip(*ROUND_LOTS, strict=True)
        self.next_id = {x: rng.randrange(1_000, 200_000) for x in self.lit_ids}
        self.next_trf_id = rng.randrange(10**13, 6 * 10**13)

    def draw(self, size: int) -> list[TapeTrade]:
        symbols, sweeps, steps = self._events(size)
        prices = self._prices(symbols, steps)
        rng = self.rng
        # per-trade draws in bulk: C-level loops instead of one call per field per trade
        lit = rng.choices(self.lit_ids, self.lit_weights, k=size)
        trf = rng.choices(self.trf_ids, self.trf_weights, k=size)
        lots = rng.choices(self.lots, self.lot_weights, k=size)
        lit_gaps = rng.choices(range(1, 40), k=size)
        trf_gaps = rng.choices(range(1, 400), k=size)
        odd_sizes = [min(99, int(rng.expovariate(1 / 18)) + 1) for _ in range(size)]
        chance = [rng.random() for _ in range(4 * size)]
        trades = []
        for i, symbol in enumerate(symbols):
            to_trf, iso, odd, midpoint = chance[4 * i: 4 * i + 4]
            price, conditions = prices[i], []
            if not sweeps[i] and to_trf < TRF_SHARE:
                self.next_trf_id += trf_gaps[i]
                exchange, trf_id, trade_id = 4, trf[i], self.next_trf_id
                if price >= PRICE_SCALE and midpoint < 0.12:
                    price += CENT // 2  # a midpoint print off-exchange, like 114.125
            else:
                exchange, trf_id = lit[i], None
                self.next_id[exchange] += lit_gaps[i]
                trade_id = self.next_id[exchange]
                if sweeps[i] or iso < 0.1:
                    conditions = [INTERMARKET_SWEEP, TRADE_THROUGH_EXEMPT]
            if odd < 0.55:
                conditions = sorted([*conditions, ODD_LOT])
            trades.append(TapeTrade(symbol, exchange, trade_id, self.symbols[symbol].tape, price,
                                    odd_sizes[i] if odd < 0.55 else 100 * lots[i],
                                    tuple(conditions), trf_id))
        return trades

    def _events(self, size: int) -> tuple[list[int], list[bool], list[int]]:
        """Symbols, whether each print is part of a sweep, and each print's price step."""
        rng = self.rng
        weights = [s.weight for s in self.symbols]
        picks = iter(rng.choices(range(len(self.symbols)), weights, k=size))
        walk = iter(rng.choices(STEPS, STEP_WEIGHTS, k=size))
        symbols: list[int] = []
        sweeps: list[bool] = []
        steps: list[int] = []
        while len(symbols) < size:
            symbol = next(picks)
            r = rng.random()
            sweep = r >= 0.85
            prints = 1 if r < 0.55 else (rng.randint(2, 4) if not sweep else rng.randint(5, 12))
            direction = rng.choice((-1, 1))
            for _ in range(min(prints, size - len(symbols))):
                symbols.append(symbol)
                sweeps.append(sweep)
                # a sweep walks the book one way; other prints wander
                steps.append(direction * (rng.random() < 0.4) if sweep else next(walk))
        return symbols, sweeps, steps

    def _prices(self, symbols: list[int], steps: list[int]) -> list[int]:
        """Per symbol, a random walk on valid ticks bent into a bridge that ends where it began."""
        positions: dict[int, list[int]] = {}
        for position, symbol in enumerate(symbols):
            positions.setdefault(symbol, []).append(position)
        prices = [0] * len(symbols)
        for symbol, where in positions.items():
            base = round(self.symbols[symbol].price * PRICE_SCALE)
            tick = price_tick(base)
            scale = max(1, base // (150 * PRICE_SCALE))  # dearer names move more cents per trade
            level, walk = 0, []
            for position in where:
                level += steps[position] * scale
                walk.append(level)
            n, end = len(walk), walk[-1]
            for j, position in enumerate(where):
                bridged = walk[j] - round((j + 1) * end / n)
                prices[position] = max(tick, base + bridged * tick)
        return prices


class SyntheticMarket:
    """Hands out batches: block after block of the tape, lap after lap, with fresh ``q``."""

    def __init__(self, symbols: Sequence[SymbolInfo], seed: int, batch: int,
                 tape_size: int = DEFAULT_TAPE_SIZE, stamped: bool = False) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        rng = random.Random(seed)
        size = max(batch, -(-tape_size // batch) * batch)  # whole blocks
        self.layout = TradeLayout(stamped)
        self.names = [s.name for s in symbols]
        self.q_start = [rng.randrange(10_000, 9_000_000) for _ in symbols]
        self.tape = TapeGenerator(symbols, rng).draw(size)
        self.pieces = [trade_template(t, self.names[t.symbol], self.layout) for t in self.tape]
        self.q_base, self.q_step = self._q_tables()
        self.batch = batch
        self.blocks = [self._block(start, batch) for start in range(0, size, batch)]
        self.position = 0  # blocks handed out so far

    def _q_tables(self) -> tuple[list[int], list[int]]:
        seen = [0] * len(self.names)
        base = []
        for trade in self.tape:
            base.append(self.q_start[trade.symbol] + seen[trade.symbol])
            seen[trade.symbol] += 1
        return base, [seen[t.symbol] for t in self.tape]

    def _block(self, start: int, count: int) -> Block:
        end = start + count
        return Block(self.pieces[start:end], [self.names[t.symbol] for t in self.tape[start:end]],
                     self.q_base[start:end], self.q_step[start:end])

    def next_batch(self, t_ms: int, count: int | None = None) -> SyntheticBatch:
        """The next frame's trades. ``count`` below the batch size cuts the block short, for the
        last frame of a ``--trades N`` run: the trades left out would leave gaps in ``q``."""
        lap, index = divmod(self.position, len(self.blocks))
        self.position += 1
        block = self.blocks[index]
        if count is not None and count < block.count:
            block = self._block(index * self.batch, count)
        return SyntheticBatch(block, lap, t_ms, self.layout)
