"""The compact model and what ships it.

``compact`` (the compact checkpoint and report from a projected dense
model), ``serving`` (the ``jax.export`` serving artifact, BatchNorm folded),
``export_check`` (each shipped form against the trained model), ``tuning``
(per-layer latency tuning of the compact model), ``variables_file`` (a
model's variables as an Orbax directory) and ``from_checkpoint`` (a
dense checkpoint to all of these: the library behind
``python -m lrpet_jax.export``).

Imports: ``lrpet_jax.core``, ``analysis``, ``ranking``, ``models``, ``data``.
"""

