"""Quick preset: small nets and capped data so the whole pipeline runs on a 2-core CPU.

Sections: data, train, bank, fisher, distance, transform, fuse, search, tanas.
Override any field on the command line with ``--set section.field=value``.
"""
import ml_collections
from ml_collections import config_dict


def get_config():
    c = ml_collections.ConfigDict()
    c.preset = "quick"

    c.data = ml_collections.ConfigDict()
    c.data.source = "auto"                 # auto | tfds | files | bundled
    c.data.data_dir = config_dict.placeholder(str)
    c.data.split_seed = 0                  # fixed split, independent of the training seed
    c.data.val_fraction = 0.1
    c.data.max_train = 6000                # cap per task (after balancing); None = all
    c.data.max_eval = 2000                 # cap for val and test
    c.data.normalization = config_dict.placeholder(str)   # None: per dataset (CIFAR 'half')

    c.train = ml_collections.ConfigDict()
    c.train.net = "small_cnn"
    c.train.epochs = 5
    c.train.batch_size = 64
    c.train.learning_rate = 1e-3           # Adam, as the authors
    c.train.epsilon = 0.1                  # epsilon-approximation: test accuracy >= 1 - epsilon
    c.train.eval_batch_size = 500

    c.bank = ml_collections.ConfigDict()
    c.bank.seeds = [0]                     # networks per task (distance repeats use these)

    # Fisher engine (tanas_jax/fisher): per-example diagonal / Gram spectra of banked networks
    c.fisher = ml_collections.ConfigDict()
    c.fisher.examples = 500                # examples of the data task's split per Fisher (diag)
    c.fisher.full_examples = 200           # examples for full spectra (M x M Gram matrices)
    c.fisher.split = "train"               # train | val | test
    c.fisher.estimator = "empirical"       # empirical (LD-NAS eq. 6) | mc | exact
    c.fisher.mc_samples = 1                # labels per example for mc
    c.fisher.method = "auto"               # auto | fast | vmap
    c.fisher.microbatch = config_dict.placeholder(int)   # None: from the memory budget
    c.fisher.memory_budget_mb = 2048
    # Fisher task distances (tanas_jax/distance)
    c.distance = ml_collections.ConfigDict()
    c.distance.metric = "logdet"           # logdet | frechet | transform
    c.distance.spectrum = "diag"           # diag | full
    c.distance.sigma2 = 1e-10              # authors' value (after unit-total normalisation)
    c.distance.normalization = "network"   # network (authors) | layer
    c.distance.reduction = "global"        # global (paper eq. 2) | per_layer (authors' code)
    c.distance.head = "pad"                # pad (authors) | backbone
    c.distance.authors_fisher = False      # authors' batch-mean-squared variant (comparison only)
    # TA-NAS transform-network distance (tanas_jax/distance/transform.py): MLP
    # 2F -> F/2 -> F on the nets' F-wide penultimate features, iterative magnitude pruning
    c.transform = ml_collections.ConfigDict()
    c.transform.net = config_dict.placeholder(str)   # None: train.net (quick: small_cnn, F = 64)
    c.transform.hidden_scale = (2.0, 0.5)  # hidden widths / feature width (paper: 2048, 512 for 1024)
    c.transform.hidden = ()                # explicit hidden widths, override hidden_scale
    c.transform.output_activation = "relu" # target features are post-ReLU
    c.transform.learning_rate = 1e-3
    c.transform.batch_size = 128
    c.transform.train_epochs = 20          # before pruning
    c.transform.finetune_epochs = 2        # after each pruning step (fresh Adam state)
    c.transform.prune_rate = 0.3           # share of remaining weights removed per step
    c.transform.scope = "layer"            # layer | global magnitude ranking
    c.transform.refine = 1                 # after a failed step: halve the rate, retry (times)
    c.transform.min_fraction = 0.005       # stop pruning below this kept fraction
    c.transform.max_steps = 40
    c.transform.criterion = "accuracy"     # accuracy (paper) | mse
    c.transform.tolerance = 0.02           # allowed accuracy drop vs the reference
    c.transform.reference = "own"          # own: B's head on B's features | unpruned: unpruned N_t
    c.transform.mse_factor = 2.0           # criterion=mse: MSE <= factor x unpruned MSE
    c.transform.val_fraction = 0.2         # only when no separate check set is given
    c.transform.max_train = 2000           # examples of B's train split used to fit N_t
    c.transform.max_val = 1000             # examples of B's val split for the quality bar
    c.transform.adapter = False            # allow nets with different feature widths
    c.transform.feature_batch = 500
    # FUSE (tanas_jax/search/fuse.py, TA-NAS Algorithm 2); fields = FuseConfig's
    c.fuse = ml_collections.ConfigDict()
    c.fuse.candidates = 3                  # C: seed + C-1 samples (authors: 3; LD-NAS: 5)
    c.fuse.rounds = 3                      # I (authors' code: 100; LD-NAS: 200)
    c.fuse.max_stages = 3                  # stage cap per round (authors: 10)
    c.fuse.weight_steps = 30               # weight steps per stage, train split
    c.fuse.alpha_steps = 10                # alpha steps per stage, validation split
    c.fuse.batch_size = 64
    c.fuse.learning_rate = 1e-3            # Adam on the candidates' weights
    c.fuse.alpha_learning_rate = 0.05      # Adam on alpha
    c.fuse.tol = 1e-3                      # converged: max |d softmax(alpha)| over a stage < tol
    c.fuse.final_steps = 400               # winner trained from scratch, then tested once
    c.fuse.eval_batch_size = 500
    c.fuse.skeleton = "tiny"               # tiny (authors: 3 ch, 1 cell, linear head) | small | darts
    # persistent XLA compilation cache: a rerun (or resume) loads the round's compiled steps
    # instead of compiling them again; env TANAS_XLA_CACHE=DIR overrides, TANAS_XLA_CACHE=0 disables
    c.fuse.compilation_cache = "~/.cache/tanas_jax/xla"
    # search plumbing shared by FUSE and the random baseline
    c.search = ml_collections.ConfigDict()
    c.search.space = "standard"            # standard | from:TASK | from:closest[:k] | ops:a,b | file.json
    c.search.input_shape = (28, 28, 3)     # MNIST-family 28 px, grey repeated to 3 channels
    c.search.max_train = 3000              # cap on the target's train split for the search
    c.search.write_bank = True             # store the winner as the target's genotype
    # DARTS / TETLO (tanas_jax/search/darts.py, tetlo.py; bin/search); fields = SearchConfig's
    c.search.darts = ml_collections.ConfigDict()
    c.search.darts.skeleton = "tiny"       # supernet skeleton (C >= 2): tiny | small | darts | dict
    c.search.darts.steps = 60              # iterations: one beta step (val) + one weight step (train)
    c.search.darts.warmup_steps = 0        # weight-only iterations first
    c.search.darts.batch_size = 32
    c.search.darts.w_optimizer = "adam"    # adam | sgd (momentum 0.9, DARTS)
    c.search.darts.learning_rate = 1e-3
    c.search.darts.weight_decay = 0.0
    c.search.darts.arch_learning_rate = 3e-3   # Adam(b1=0.5) on beta, DARTS' 3e-4 scaled to few steps
    c.search.darts.arch_weight_decay = 1e-3
    c.search.darts.unroll_lr = 0.01        # xi of the unrolled weight step (darts2, tetlo)
    c.search.darts.beta_init_std = 1e-3
    c.search.darts.history_every = 5
    c.search.darts.checkpoint_every = 20
    c.search.darts.final_steps = 300       # derived cell trained from scratch, then tested once
    c.search.darts.final_learning_rate = 1e-3
    c.search.darts.eval_batch_size = 500
    # MNIST digits sit in the central 20x20 box: the crop halves the supernet's CPU cost
    c.search.darts.input_shape = (20, 20, 1)
    c.search.darts.mixed_impl = "dense"    # dense | grouped | ops: depthwise convs inside the supernet
    c.search.darts.tetlo = ml_collections.ConfigDict()
    c.search.darts.tetlo.aux_channels = (16, 32)   # auxiliary CNN widths
    c.search.darts.tetlo.aux_learning_rate = 1e-3
    c.search.darts.tetlo.aux_unroll_lr = 0.01
    c.search.darts.tetlo.qrs_weight = 1.0          # gamma: aux loss = CE + gamma * QRS
    c.search.darts.tetlo.quadruples = 64
    c.search.darts.tetlo.qrs_margin = 0.0
    c.search.darts.tetlo.qrs_temperature = 0.05
    c.search.darts.tetlo.main_weight = 1.0         # lambda: stage 3 = L_val(V') + lambda L_val(W')

    c.tanas = ml_collections.ConfigDict()
    c.tanas.bases = "offline8"
    c.tanas.target = "fashion_4class"      # held out of the bases when it is one of them
    c.tanas.metric = "logdet"
    c.tanas.top_k = 1
    c.tanas.full_table_max = 10            # full K x K table up to this many tasks, else the target column
    return c
