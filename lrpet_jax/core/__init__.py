"""The method's math: pure functions of pytrees, no model or file in sight.

``projection`` (truncated SVD with energy transfer and BN rectification of
one kernel or a params tree), ``transform`` (the Optax transformations
``lrpet`` and ``low_rank_projection``), ``bn`` (BN rectification factors,
BatchNorm statistics recomputed), ``ranks`` (rank trees: uniform ratio,
floors, rounding) and ``_trees`` (pytree paths).

Imports: jax, optax and numpy only; nothing else of ``lrpet_jax``.
"""
