r"""The paper's CIFAR-10 setting: ResNet-56, ratio 0.54, 400 epochs.

    python -m lrpet_jax.main --config=configs/cifar.py --workdir=runs/resnet56

Data: ``cifar10`` through tfds (the tfds extra, ``python3 -m pip install -r
requirements-tfds.txt``, and internet or a prepared ``data_dir``); offline
and without TensorFlow, the shared copy: ``--config.dataset=image_folder:
../shared/datasets/cifar10``, normalized with its own mean and std unless
given (the authors' constants: ``--config.mean='(0.4914, 0.4822, 0.4465)'
--config.std='(0.2023, 0.1994, 0.2010)'``, as ``SHARED_CIFAR10`` sets them
for the configs that import it).
"""

import ml_collections

from lrpet_jax.data import datasets


# The shared CIFAR-10 copy (``train|test/<class>/*.jpg``, offline): CIFAR-10,
# so read with the authors' constants, as the tfds cifar10 is.
SHARED_CIFAR10 = dict(dataset="image_folder:../shared/datasets/cifar10",
                      mean=datasets.NORMALIZATION["cifar10"].mean,
                      std=datasets.NORMALIZATION["cifar10"].std)


def get_config():
  c = ml_collections.ConfigDict()
  # What to train (lrpet_jax/pipeline/methods.py): "lrpet" (the paper), "dense" (no
  # projection, the baseline) or "compact" (the factorized model at the ranks
  # below, plain SGD; random init, or init_from a dense variables checkpoint
  # such as WORKDIR/dense_final, truncated by SVD: decompose-and-retrain).
  c.method = "lrpet"
  c.init_from = ml_collections.config_dict.placeholder(str)
  # --- Model ---
  # A zoo name (lrpet_jax/models) or your own model: "package.module:factory",
  # a function (num_classes=, dtype=) -> nn.Module, or a Flax NNX factory
  # (num_classes=, dtype=, rngs=) -> nnx.Module (docs/nnx.md).
  c.model = "resnet56"
  c.model_flag = "train"       # the name of the model's training flag
  c.num_classes = 10
  # --- Ranks (lrpet_jax/ranking/selection.py; the export command takes the same) ---
  c.ratio = 0.54               # r = max(1, int(n − n·ratio)) for every conv
  c.macs_reduction = 0.0       # > 0: the ratio that best meets this MACs cut
  c.params_reduction = 0.0     # > 0: the same for a params cut
  # A JSON file {"layer/kernel": rank} (a run's ranks.json) instead.
  c.ranks_file = ml_collections.config_dict.placeholder(str)
  # Convolutions only, as the authors' code; True also projects Dense kernels
  # (the classifier).
  c.project_dense = False
  # "" (the above), or the layers to rank by role: comma-separated "conv",
  # "mlp", "attention", "classifier", "embedding"; or "re:REGEX" on kernel
  # paths (docs/own-model.md, "Which layers are ranked, folded and counted").
  c.project_layers = ""
  c.rank_floor = 0             # > 0: every rank at least this (configs/vgg16.py)
  c.first_rank_floor = 0       # > 0: the first conv's rank at least this
  # "uniform": the ratio above (the paper). Or decided from each layer's
  # (BN-rectified) spectrum at the first projection after epoch
  # rank_decision_epoch, the run dense until then (lrpet_jax/ranking/policies.py):
  # "energy": each layer's smallest rank keeping rank_energy of its energy;
  # "budget": the most energy within budget_macs_reduction.
  c.rank_policy = "uniform"
  c.rank_energy = 0.9
  c.budget_macs_reduction = 0.0  # the "budget" policy's MACs cut, in (0, 1)
  c.rank_decision_epoch = 1
  # --- Projection ---
  c.project_every_steps = 0    # 0: once per epoch
  c.energy_transfer = True
  c.residual_scale = 0.0       # ρ, factor on the discarded singular values
  c.bn_rectification = True
  c.bn_recompute_batches = 100  # precise-BN batches after the final projection
  c.log_spectra = False        # singular values at each projection → spectra.json
  # --- Data ---
  c.dataset = "cifar10"
  c.data_dir = ml_collections.config_dict.placeholder(str)
  c.train_subset = 0           # 0: all examples
  # > 0: this many training examples held out as a validation split; the best
  # checkpoint is then kept by validation accuracy (never by test accuracy).
  c.val_examples = 0
  c.test_subset = 0
  # Input normalization of pixels in [0, 1], per channel. (): the data set's
  # own: cifar10/cifar100 the authors' constants (data/datasets.py), an image
  # folder the mean and std of its training images (computed once, recorded in
  # WORKDIR/input.json).
  c.mean, c.std = (), ()
  c.image_size = 32            # streamed data sets (ImageNet): the crop size
  # --- Augmentation beyond pad-4 crop + flip (in-memory data sets; the
  # authors' ViT recipe, configs/vit.py; lrpet_jax/data/augmentations.py) ---
  c.auto_augment = ""          # "" or "cifar10": AutoAugment's CIFAR-10 policy
  c.random_erasing = 0.0       # probability per image (their 0.25)
  c.mix_prob = 0.0             # per batch: CutMix or Mixup, even odds (their 0.5)
  c.mixup_alpha = 1.0          # Mixup's λ ~ Beta(α, α)
  c.cutmix_beta = 1.0          # CutMix's λ ~ Beta(β, β)
  # An epoch is this many passes over the training set, each in a new order
  # (their RASampler's "repeated augmentation" 3): epochs, warm-up and the
  # once-per-epoch projection all count these longer epochs.
  c.repeated_augmentation = 1
  # --- Optimization (torch.optim.SGD semantics) ---
  c.num_epochs = 400
  c.num_steps = 0              # > 0 overrides num_epochs
  c.batch_size = 128
  c.optimizer = "sgd"          # or "adamw" (torch.optim.AdamW; configs/vit.py)
  c.learning_rate = 0.1
  # "step": ×lr_decay at each of lr_boundaries_epochs. "cosine": linear
  # warm-up from 0 over warmup_epochs, then cosine to 0 at the last step.
  c.lr_schedule = "step"
  c.lr_boundaries_epochs = (200, 300)
  c.lr_decay = 0.1
  c.warmup_epochs = 0
  c.momentum = 0.9             # SGD only
  c.nesterov = False           # SGD only
  c.weight_decay = 1e-4
  c.label_smoothing = 0.0      # s: targets (1 − s)·one-hot + s/classes
  # --- Speed ---
  # Steps per compiled call (a fixed-length lax.scan; results do not depend
  # on it): calls also end at projections, evaluations and epoch ends.
  # 8: fastest in benchmarks/train_throughput.py on CPU (ResNet-20, batch
  # 128: 302-306 ms/step vs 374-376 at 1); costs one more compilation.
  c.steps_per_call = 8
  # "float32" (the paper) or "bfloat16": activations and convolutions in
  # bf16; params, optimizer state, BN statistics and the projection float32.
  # "float64" (with JAX_ENABLE_X64=1): a reference precision for checks.
  c.compute_dtype = "float32"
  # --- Bookkeeping ---
  c.seed = 0
  c.eval_batch_size = 1000
  c.log_every_steps = 50
  c.checkpoint_every_steps = 0  # 0: once per epoch (with a test evaluation)
  # Kept: the latest keep_checkpoints, and with val_examples the best by
  # validation accuracy.
  c.keep_checkpoints = 3
  # --- More than one process (docs/multi-process.md) ---
  # jax.distributed.initialize(): under SLURM, Open MPI, on TPU pods and
  # Kubernetes the cluster is detected; otherwise give the three below (the
  # address may also come from JAX_COORDINATOR_ADDRESS).
  c.distributed = False
  c.coordinator_address = ml_collections.config_dict.placeholder(str)  # HOST:PORT
  c.num_processes = 0          # 0: detected
  c.process_id = -1            # -1: detected
  # A workdir whose run finished under another config is refused; True goes
  # on from its last checkpoint under this one (e.g. more steps).
  c.extend = False
  return c
