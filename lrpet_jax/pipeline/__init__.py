"""The training job: ``train.train_and_evaluate(config, workdir)``.

``config_check`` (the config checked up front, handed out in parts),
``methods`` (what is trained: ``lrpet``, ``dense``, ``compact``), ``steps``
(the compiled training step and evaluation), ``setup`` (a run's setup from
its config: model, ranks, optimizer settings, data, step 0), ``train`` (the
loop),
``ending`` (the final phases), ``checkpointing`` (Orbax), ``records`` (the
workdir's own files: lock, config, commands), ``metrics`` (metrics,
progress, spectra logs), ``plots``, ``saved_run`` (a workdir loaded back,
``lrpet_jax.load_run``), ``errors``, and ``experiment``: the public API for
experiments and benchmarks (everything else here is internal).

Imports: every other subpackage; nothing imports it but the commands
(``lrpet_jax.main``, ``lrpet_jax.export``) and ``lrpet_jax.load_run``.
"""
