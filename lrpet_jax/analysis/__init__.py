"""What a Flax model is, read from one trace, and its surgery.

``layer_table`` (the traced table of kernels: kind, matrix view, MACs,
consumers, BatchNorm pairs, whether a kernel can have a rank), ``tracing``
(its front: ``table``, ``layers``, ``bn_pairs`` → ``Pairing``),
``factorized`` (the exact two-layer form of a ranked kernel, the
``Factorized`` model), ``folding`` (BatchNorm folded into the kernel before
it), ``accounting`` (MACs and params of dense and compact models) and
``nnx_models`` (a Flax NNX model as Linen-style ``init``/``apply``, its
call interception and its compact ``SplitLayer``s).

Imports: ``lrpet_jax.core`` only.
"""
