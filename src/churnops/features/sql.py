"""Customer features as SQL, for many snapshots in one pass over the orders.

Instead of recomputing every aggregate for every snapshot, each order is assigned once to its
*bucket*: the first snapshot strictly after it. Aggregates per (customer, bucket) are then
summed cumulatively over the snapshots, so a snapshot's features cover exactly the orders
strictly before it. Trailing windows use a second bucket per window (the first snapshot whose
window start lies after the order); the window count is the difference of two cumulative
counts. Distinct products and categories count each (customer, product) pair once, in the
bucket of its first order. The work is one scan of the orders plus the output grid, whatever
the number of snapshots.

The standard deviation uses sums of squares shifted by the customer's first order amount, which
keeps full float64 precision (identical amounts give exactly 0) and depends on nothing after
the snapshot: a customer with orders before a snapshot has their first order before it too.

The bucket assignment is engine-specific (DuckDB's ASOF join; a sorted-array lookup in Spark);
everything after it is plain SQL that both engines run. Inputs are the relations
`orders(customer_id, order_date, total_amount[, product_id][, category])`,
`customers(customer_id, created_at)` and `snapshots(as_of)`.

DuckDB runs many snapshots differently (`Stepping` below): it walks the snapshots in time
order, aggregating only the orders since the previous snapshot, and carries running totals per
customer from each snapshot to the next (`churnops.features.running`). It never holds the
customer x snapshot grid and streams each snapshot to its own file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dialect:
    """The few expressions that differ between engines."""

    micros: str  # micros since epoch of a timestamp: format with {x}
    minus_days: str  # timestamp minus whole days: format with {ts} and {days}
    pair: str  # an ordered pair, comparable lexicographically: format with {a} and {b}
    fsum: str  # a float sum whose result does not depend on the order rows arrive in


# DuckDB merges per-thread partial sums in no fixed order; its compensated `fsum` makes the
# result independent of that, so reruns give bit-identical features and content hashes.
DUCKDB = Dialect(micros="epoch_us({x})", minus_days="({ts} - INTERVAL ({days}) DAY)", pair="ROW({a}, {b})", fsum="FSUM")
SPARK = Dialect(
    micros="unix_micros({x})",
    minus_days="({ts} - make_interval(0, 0, 0, {days}, 0, 0, 0))",
    pair="struct({a}, {b})",
    fsum="SUM",
)

DAY_US = 86_400_000_000


def _distinct_features(has_product: bool, has_category: bool) -> list[tuple[str, str]]:
    """(raw column, feature name) of the distinct counts the orders allow."""
    pairs = [("product_id", "unique_products")] if has_product else []
    return pairs + ([("category", "unique_categories")] if has_category else [])


def counted_apart(has_product: bool, has_category: bool, category_bits: bool) -> list[tuple[str, str]]:
    """(raw column, feature) of the distinct counts not taken from the 64-bit category mask.

    DuckDB counts these outside the main grouping: by sorting coded pairs for one snapshot
    (`running.distinct_per_position`), by first orders for many (`running.FirstOrders`).
    """
    return [
        (column, name)
        for column, name in _distinct_features(has_product, has_category)
        if not (column == "category" and category_bits)
    ]


def _days_between(dialect: Dialect, later: str, earlier: str) -> str:
    """Whole days elapsed (floor), like pandas' Timedelta.days."""
    return f"CAST(FLOOR(({dialect.micros.format(x=later)} - {dialect.micros.format(x=earlier)}) / {DAY_US}) AS BIGINT)"


def features_from_buckets_sql(dialect: Dialect, windows: tuple[int, ...], has_product: bool, has_category: bool) -> str:
    """The feature query over `bucketed` and `window_bucketed_<w>` relations.

    Args:
        dialect: Engine-specific expressions.
        windows: Trailing windows in days.
        has_product: The orders carry product_id.
        has_category: The orders carry category.

    Returns:
        A SELECT producing customer_id, event_timestamp and every feature column.
    """
    window_ctes = []
    window_joins = []
    window_cum = []
    window_cols = []
    for w in windows:
        window_ctes.append(
            f"""wagg_{w} AS (
    SELECT customer_id, as_of, COUNT(*) AS n, {dialect.fsum}(total_amount) AS amt
    FROM window_bucketed_{w} GROUP BY customer_id, as_of
)"""
        )
        window_joins.append(f"LEFT JOIN wagg_{w} ON wagg_{w}.customer_id = g.customer_id AND wagg_{w}.as_of = g.as_of")
        window_cum.append(f"SUM(COALESCE(wagg_{w}.n, 0)) OVER w AS before_n_{w}")
        window_cum.append(f"SUM(COALESCE(wagg_{w}.amt, 0)) OVER w AS before_amt_{w}")
        window_cols.append(f"CAST(n - before_n_{w} AS BIGINT) AS orders_last_{w}d")
        # a difference of running sums: exactly 0 when the window is empty, never below 0
        window_cols.append(
            f"CAST(CASE WHEN n = before_n_{w} THEN 0.0 ELSE GREATEST(total - before_amt_{w}, 0.0) END AS DOUBLE) "
            f"AS spend_last_{w}d"
        )
    distinct_ctes = []
    distinct_joins = []
    distinct_cum = []
    distinct_cols = []
    for column, name in _distinct_features(has_product, has_category):
        distinct_ctes.append(
            f"""first_{column} AS (
    SELECT customer_id, as_of, COUNT(*) AS n FROM (
        SELECT customer_id, {column}, MIN(as_of) AS as_of
        FROM bucketed WHERE {column} IS NOT NULL GROUP BY customer_id, {column}
    ) AS firsts GROUP BY customer_id, as_of
)"""
        )
        distinct_joins.append(
            f"LEFT JOIN first_{column} ON first_{column}.customer_id = g.customer_id AND first_{column}.as_of = g.as_of"
        )
        distinct_cum.append(f"SUM(COALESCE(first_{column}.n, 0)) OVER w AS {name}")
        distinct_cols.append(f"CAST({name} AS BIGINT) AS {name}")
    ctes = ",\n".join(
        [
            f"""shift AS (
    SELECT customer_id, MIN_BY(total_amount, {dialect.pair.format(a="order_date", b="total_amount")}) AS k
    FROM bucketed GROUP BY customer_id
)""",
            f"""agg AS (
    SELECT b.customer_id, b.as_of, COUNT(*) AS n, {dialect.fsum}(b.total_amount) AS total,
           {dialect.fsum}(b.total_amount - s.k) AS s1,
           {dialect.fsum}((b.total_amount - s.k) * (b.total_amount - s.k)) AS s2,
           MIN(b.total_amount) AS mn, MAX(b.total_amount) AS mx,
           MIN(b.order_date) AS first_at, MAX(b.order_date) AS last_at
    FROM bucketed AS b JOIN shift AS s ON s.customer_id = b.customer_id
    GROUP BY b.customer_id, b.as_of
)""",
            """grid AS (
    SELECT c.customer_id, s.as_of FROM customers AS c JOIN snapshots AS s ON c.created_at < s.as_of
)""",
            *window_ctes,
            *distinct_ctes,
            # each distinct order day counts in the bucket of its first order, with its gap
            # (whole days) to the customer's previous order day
            f"""day_firsts AS (
    SELECT customer_id, day, MIN(as_of) AS as_of FROM (
        SELECT customer_id, CAST(FLOOR({dialect.micros.format(x="order_date")} / {DAY_US}) AS BIGINT) AS day, as_of
        FROM bucketed
    ) AS days GROUP BY customer_id, day
)""",
            """day_gaps AS (
    SELECT customer_id, as_of, COALESCE(day - LAG(day) OVER (PARTITION BY customer_id ORDER BY day), 0) AS gap
    FROM day_firsts
)""",
            """dagg AS (
    SELECT customer_id, as_of, COUNT(*) AS k, SUM(gap) AS g1, SUM(gap * gap) AS g2
    FROM day_gaps GROUP BY customer_id, as_of
)""",
            f"""running AS (
    SELECT g.customer_id, g.as_of,
           SUM(COALESCE(agg.n, 0)) OVER w AS n,
           SUM(COALESCE(agg.total, 0)) OVER w AS total,
           SUM(agg.s1) OVER w AS s1,
           SUM(agg.s2) OVER w AS s2,
           MIN(agg.mn) OVER w AS mn,
           MAX(agg.mx) OVER w AS mx,
           MIN(agg.first_at) OVER w AS first_at,
           MAX(agg.last_at) OVER w AS last_at,
           SUM(COALESCE(dagg.k, 0)) OVER w AS order_days,
           SUM(COALESCE(dagg.g1, 0)) OVER w AS g1,
           SUM(COALESCE(dagg.g2, 0)) OVER w AS g2
           {"".join(", " + c for c in window_cum + distinct_cum)}
    FROM grid AS g
    LEFT JOIN agg ON agg.customer_id = g.customer_id AND agg.as_of = g.as_of
    LEFT JOIN dagg ON dagg.customer_id = g.customer_id AND dagg.as_of = g.as_of
    {" ".join(window_joins + distinct_joins)}
    WINDOW w AS (PARTITION BY g.customer_id ORDER BY g.as_of ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)""",
        ]
    )
    variance = "GREATEST((s2 - s1 * s1 / n) / (n - 1), 0.0)"
    lifetime = _days_between(dialect, "last_at", "first_at")
    recency = _days_between(dialect, "as_of", "last_at")
    mean_gap = "g1 / CAST(order_days - 1 AS DOUBLE)"
    gap_spread = "CAST((order_days - 1) * g2 - g1 * g1 AS DOUBLE) / ((order_days - 1) * (order_days - 2))"
    columns = [
        "customer_id",
        "as_of AS event_timestamp",
        f"CASE WHEN n > 0 THEN {recency} END AS recency",
        "CAST(n AS BIGINT) AS frequency",
        "CAST(total AS DOUBLE) AS monetary",
        "CASE WHEN n > 0 THEN total / n END AS avg_order_value",
        "mx AS max_order_value",
        "mn AS min_order_value",
        f"CASE WHEN n = 1 THEN 0.0 WHEN n > 1 THEN SQRT({variance}) END AS std_order_value",
        f"CASE WHEN n > 0 THEN {lifetime} END AS customer_lifetime_days",
        f"CASE WHEN n > 0 THEN {lifetime} / CAST(GREATEST(n, 1) AS DOUBLE) END AS avg_days_between_orders",
        f"CASE WHEN n > 0 THEN {_days_between(dialect, 'as_of', 'first_at')} END AS customer_age_days",
        "CAST(order_days AS BIGINT) AS order_days",
        f"CASE WHEN order_days > 1 THEN {mean_gap} END AS mean_gap_days",
        f"CASE WHEN order_days = 2 THEN 0.0 WHEN order_days > 2 THEN SQRT(GREATEST({gap_spread}, 0.0)) END "
        "AS std_gap_days",
        f"CASE WHEN order_days > 1 THEN CAST({recency} AS DOUBLE) / ({mean_gap}) END AS overdue_ratio",
        *distinct_cols,
        *window_cols,
    ]
    return f"WITH {ctes}\nSELECT {', '.join(columns)} FROM running"


def single_snapshot_sql(
    as_of: str,
    windows: tuple[int, ...],
    has_product: bool,
    has_category: bool,
    category_bits: bool = False,
) -> str:
    """The DuckDB feature query for one snapshot: one grouping plus the windows and variance.

    Used for one snapshot of amounts that are not all whole cents (whole cents are folded in
    numpy, `duckdb_engine._folded_snapshot`). Same columns and conventions as
    `features_from_buckets_sql`.

    Args:
        as_of: A SQL timestamp literal for the snapshot.
        windows: Trailing windows in days.
        has_product: The orders carry product_id.
        has_category: The orders carry category.
        category_bits: Count categories as set bits of a 64-bit mask, one bit per code of the
            relation `codes_category(value, code)` (codes 0..63). It turns a distinct
            count into a plain aggregate of the main grouping; only for at most 64 categories.

    Returns:
        A SELECT over the relations `orders`, `customers`, `order_day_stats(customer_id,
        order_days, mean_gap_days, std_gap_days)` (computed outside, `duckdb_engine.order_day_stats`)
        and `codes_category`, and, for each distinct count not in the mask,
        `distinct_<column>(customer_id, n)`: the count per customer, computed outside this query
        (`duckdb_engine.distinct_counts`).
    """
    window_aggs = []
    window_cols = []
    for w in windows:
        edge = DUCKDB.minus_days.format(ts=as_of, days=int(w))
        window_aggs.append(f"COUNT(*) FILTER (WHERE order_date >= {edge}) AS n_{w}")
        window_aggs.append(f"FSUM(total_amount) FILTER (WHERE order_date >= {edge}) AS amt_{w}")
        window_cols.append(f"CAST(COALESCE(w.n_{w}, 0) AS BIGINT) AS orders_last_{w}d")
        window_cols.append(f"CAST(COALESCE(w.amt_{w}, 0.0) AS DOUBLE) AS spend_last_{w}d")
    distinct_joins = []
    distinct_cols = []
    bits, codes = "", ""
    if has_category and category_bits:
        bits = ", BIT_COUNT(BIT_OR(CAST(1 AS UBIGINT) << cc.code)) AS category_bits"
        codes = " LEFT JOIN codes_category AS cc ON cc.value = p.category"
        distinct_cols.append("CAST(COALESCE(a.category_bits, 0) AS BIGINT) AS unique_categories")
    for column, name in counted_apart(has_product, has_category, category_bits):
        distinct_joins.append(f"LEFT JOIN distinct_{column} AS d_{column} ON d_{column}.customer_id = c.customer_id")
        distinct_cols.append(f"CAST(COALESCE(d_{column}.n, 0) AS BIGINT) AS {name}")
    lifetime = _days_between(DUCKDB, "a.last_at", "a.first_at")
    # Whole cents below 2^53 in every sum: the float sums of cents and squared cents are exact
    # integers (so in any order), and n * sum(c^2) - sum(c)^2 in HUGEINT is exact, so the
    # variance is exact to one rounding without a second pass. Others take the two-pass `v`.
    exact = (
        "CAST(a.n * CAST(a.cents2 AS HUGEINT) - CAST(a.cents AS HUGEINT) * CAST(a.cents AS HUGEINT) AS DOUBLE)"
        " / (a.n * (a.n - 1)) / 10000.0"
    )
    variance = f"CASE WHEN a.exact THEN {exact} ELSE v.ss / (a.n - 1) END"
    cents_sql = "ROUND(p.total_amount * 100)"
    recency = _days_between(DUCKDB, as_of, "a.last_at")
    columns = [
        "c.customer_id",
        f"{as_of} AS event_timestamp",
        f"CASE WHEN a.n > 0 THEN {recency} END AS recency",
        "CAST(COALESCE(a.n, 0) AS BIGINT) AS frequency",
        "CAST(COALESCE(a.total, 0.0) AS DOUBLE) AS monetary",
        "CASE WHEN a.n > 0 THEN a.total / a.n END AS avg_order_value",
        "a.mx AS max_order_value",
        "a.mn AS min_order_value",
        f"CASE WHEN a.n = 1 THEN 0.0 WHEN a.n > 1 THEN SQRT(GREATEST({variance}, 0.0)) END AS std_order_value",
        f"CASE WHEN a.n > 0 THEN {lifetime} END AS customer_lifetime_days",
        f"CASE WHEN a.n > 0 THEN {lifetime} / CAST(GREATEST(a.n, 1) AS DOUBLE) END AS avg_days_between_orders",
        f"CASE WHEN a.n > 0 THEN {_days_between(DUCKDB, as_of, 'a.first_at')} END AS customer_age_days",
        "CAST(COALESCE(g.order_days, 0) AS BIGINT) AS order_days",
        "g.mean_gap_days",
        "g.std_gap_days",
        f"CAST({recency} AS DOUBLE) / g.mean_gap_days AS overdue_ratio",
        *distinct_cols,
        *window_cols,
    ]
    widest = DUCKDB.minus_days.format(ts=as_of, days=max(windows)) if windows else as_of
    ctes = [
        # not materialized: each use scans only the columns it needs, which beats copying them once
        f"past AS NOT MATERIALIZED (SELECT * FROM orders WHERE order_date < {as_of})",
        f"""a AS (
    SELECT *, in_cents AND cents2 < 9007199254740992 AS exact FROM (
    SELECT p.customer_id, COUNT(*) AS n, FSUM(p.total_amount) AS total, MIN(p.total_amount) AS mn,
           MAX(p.total_amount) AS mx, MIN(p.order_date) AS first_at, MAX(p.order_date) AS last_at{bits},
           BOOL_AND(p.total_amount = {cents_sql} / 100) AS in_cents, SUM({cents_sql}) AS cents,
           SUM({cents_sql} * {cents_sql}) AS cents2
    FROM past AS p{codes} GROUP BY p.customer_id)
)""",
        # the windows group only the last max(windows) days, not every order
        f"""w AS (
    SELECT customer_id{"".join(", " + a for a in window_aggs)}
    FROM past WHERE order_date >= {widest} GROUP BY customer_id
)""",
        # two-pass variance around the mean with a compensated sum: exact to rounding, and
        # the same bits whatever order the threads deliver rows in
        """v AS (
    SELECT p.customer_id, FSUM((p.total_amount - a.total / a.n) * (p.total_amount - a.total / a.n)) AS ss
    FROM past AS p JOIN a ON a.customer_id = p.customer_id WHERE a.n > 1 AND NOT a.exact GROUP BY p.customer_id
)""",
    ]
    return (
        f"WITH {', '.join(ctes)}\nSELECT {', '.join(columns)} FROM customers AS c "
        "LEFT JOIN a ON a.customer_id = c.customer_id LEFT JOIN v ON v.customer_id = c.customer_id "
        "LEFT JOIN order_day_stats AS g ON g.customer_id = c.customer_id "
        f"LEFT JOIN w ON w.customer_id = c.customer_id {' '.join(distinct_joins)} WHERE c.created_at < {as_of}"
    )


@dataclass(frozen=True)
class Stepping:
    """DuckDB SQL for many snapshots taken in time order (see `churnops.features.running`).

    `setup` numbers the customers (`positions`) and prepares the orders; then, for each
    snapshot in time order, the `*_since` queries aggregate per customer position only the
    orders between the previous snapshot and this one: the orders themselves (`orders_since`)
    and, per trailing window, the orders that left the window (`leaving_since`). The running
    totals are folded outside SQL. Distinct products (and categories, when more than 64) count
    the first order of each (customer, value) pair: `coded_orders` hands the coded orders to
    `churnops.features.running.FirstOrders`, which finds those first orders once.

    Each step's sum of squared deviations is two-pass around that step's mean, so it is exact to
    rounding; sums are DuckDB's compensated FSUM, so every figure is the same on every run.
    Categories, when at most 64, are bits of a mask instead of first-order counts. Used when the
    amounts are not all whole cents below 2^53 squared; others step through in numpy
    (`duckdb_engine._start_folding`).
    """

    has_product: bool
    has_category: bool
    category_bits: bool = False

    def firsts(self) -> list[tuple[str, str]]:
        """(raw column, feature) of the distinct counts taken from first orders."""
        return counted_apart(self.has_product, self.has_category, self.category_bits)

    def setup(self, last: str) -> list[str]:
        """Statements preparing the relations the steps read.

        They create `positions` (customer_id, created_at, pos: 0.. by customer_id) and `ordered`:
        the orders before `last` by position, sorted by time, with the code of each optional
        column (`<column>_code`, from the relations `codes_<column>(value, code)`).

        Args:
            last: SQL timestamp literal of the last snapshot.

        Returns:
            Statements to run in order.
        """
        coded = [c for c, _ in _distinct_features(self.has_product, self.has_category)]
        code = "".join(f", codes_{c}.code AS {c}_code" for c in coded)
        codes = "".join(f" LEFT JOIN codes_{c} ON codes_{c}.value = o.{c}" for c in coded)
        return [
            """CREATE OR REPLACE TEMP TABLE positions AS
               SELECT customer_id, created_at, CAST(ROW_NUMBER() OVER (ORDER BY customer_id) - 1 AS BIGINT) AS pos
               FROM customers""",
            f"""CREATE OR REPLACE TEMP TABLE ordered AS
                SELECT p.pos, o.order_date, o.total_amount{code}
                FROM orders AS o JOIN positions AS p ON p.customer_id = o.customer_id{codes}
                WHERE o.order_date < {last} ORDER BY o.order_date""",
        ]

    def coded_orders(self, column: str) -> str:
        """Position, time (micros) and value code of the orders with a `column` value, in time
        order (with `preserve_insertion_order` on)."""
        code = f"{column}_code"
        return f"SELECT pos, epoch_us(order_date) AS at, {code} AS code FROM ordered WHERE {code} IS NOT NULL"

    def order_times(self) -> str:
        """Position and time (micros) of every order, in time order (order days are found from these)."""
        return "SELECT pos, epoch_us(order_date) AS at FROM ordered"

    def orders_since(self, since: str | None, until: str) -> str:
        """Per position, aggregates of the orders in [since, until).

        Count, sum, min, max, first and last time (micros), the sum of squared deviations from
        their mean (m2), the sums of whole cents and squared cents
        (exact below 2^53, used when every amount is whole cents) and, with `category_bits`,
        the category mask.
        """
        bits = self.has_category and self.category_bits
        mask = ", BIT_OR(CAST(1 AS UBIGINT) << category_code) AS category_bits" if bits else ""
        deviation = "(s.total_amount - d.total / d.n)"
        cents = "ROUND(total_amount * 100)"
        grouped = f"""WITH step AS (SELECT * FROM ordered WHERE {_between("order_date", since, until)}),
d AS (
    SELECT pos, COUNT(*) AS n, FSUM(total_amount) AS total, MIN(total_amount) AS mn, MAX(total_amount) AS mx,
           epoch_us(MIN(order_date)) AS first_at, epoch_us(MAX(order_date)) AS last_at,
           SUM({cents}) AS cents, SUM({cents} * {cents}) AS cents2{mask}
    FROM step GROUP BY pos
)"""
        return f"""{grouped},
m AS (SELECT s.pos, FSUM({deviation} * {deviation}) AS m2 FROM step AS s JOIN d ON d.pos = s.pos GROUP BY s.pos)
SELECT d.*, m.m2 FROM d JOIN m ON m.pos = d.pos"""

    def leaving_since(self, days: int, since: str | None, until: str) -> str:
        """Per position, the orders that left the `days` window between the two snapshots."""

        def shifted(ts: str) -> str:
            return DUCKDB.minus_days.format(ts=ts, days=int(days))

        left = _between("order_date", shifted(since) if since else None, shifted(until))
        return (
            "SELECT pos, COUNT(*) AS n, FSUM(total_amount) AS total, SUM(ROUND(total_amount * 100)) AS cents "
            f"FROM ordered WHERE {left} GROUP BY pos"
        )


def _between(column: str, since: str | None, until: str) -> str:
    """`column` in [since, until); no lower bound when `since` is None."""
    lower = f"{column} >= {since} AND " if since else ""
    return f"{lower}{column} < {until}"
