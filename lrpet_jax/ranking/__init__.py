"""Which rank each kernel gets.

``policies`` (rank policies that read each layer's singular values: energy,
greedy budget) and ``selection`` (the config's rule: uniform ratio, ranks
file, a MACs or params budget, a policy, decided up front or during
training).

Imports: ``lrpet_jax.core`` and ``lrpet_jax.analysis``.
"""
