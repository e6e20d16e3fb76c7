"""Numerical checks of the paper's claims, one module per claim (installed as ``ode_momentum.theory``).

Each module paraphrases its claim in its docstring and exposes ``verify(quick: bool) -> ClaimReport``
(``ode_momentum.analysis.claims``). ``CLAIMS`` lists the modules in the paper's order; ``ode-momentum verify``
runs them all.
"""

CLAIMS: list[str] = [
    "invertibility",
    "finite_precision",
    "continuous_limit",
    "linear_representability",
    "first_order_embedding",
    "crossing",
    "fixed_points",
]
