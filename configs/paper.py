"""Paper preset: the papers' settings (VGG-16 epsilon-nets, 10 repeats, long FUSE), for GPUs."""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location("_tanas_quick_preset",
                                               os.path.join(os.path.dirname(__file__), "quick.py"))
_quick = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_quick)


def get_config():
    c = _quick.get_config()
    c.preset = "paper"
    c.data.max_train = None
    c.data.max_eval = None
    c.train.net = "vgg16"
    c.train.epochs = 50                    # LD-NAS: 50-100 epochs, Adam, batch 64
    c.train.batch_size = 64
    c.train.epsilon = 0.05
    c.bank.seeds = list(range(10))         # 10 repeats, seeds 0-9
    # Fisher / distance: the papers do not state M; 2000 examples per diagonal Fisher,
    # 1000 for full spectra (1000 x 1000 Gram matrices); VGG-16 with the fast path
    c.fisher.examples = 2000
    c.fisher.full_examples = 1000
    c.fisher.memory_budget_mb = 4096
    # TA-NAS §4: the paper's CNN (F = 1024) and a 2048 -> 512 -> 1024 transform
    c.transform.net = "tanas_cnn"
    c.transform.prune_rate = 0.2
    c.transform.refine = 2
    c.transform.min_fraction = 0.001
    c.transform.max_steps = 60
    c.transform.max_train = None
    c.transform.max_val = None
    # FUSE as in the authors' code: 10 stages x (3 child epochs + 10 alpha epochs) per round,
    # 100 rounds, winner retrained 50 epochs (steps here; set from the data size if needed)
    c.fuse.candidates = 5                  # LD-NAS §4: five candidates
    c.fuse.rounds = 100
    c.fuse.max_stages = 10
    c.fuse.weight_steps = 500
    c.fuse.alpha_steps = 200
    c.fuse.final_steps = 40000
    c.fuse.skeleton = "darts"
    c.search.input_shape = (32, 32, 3)     # LD-NAS: MNIST padded to 32, 3 channels
    c.search.max_train = None
    # DARTS search schedule (50 epochs x ~390 steps of 64 on CIFAR-sized data), DARTS' rates
    c.search.darts.skeleton = "darts"
    c.search.darts.steps = 20000
    c.search.darts.batch_size = 64
    c.search.darts.w_optimizer = "sgd"
    c.search.darts.learning_rate = 0.025
    c.search.darts.weight_decay = 3e-4
    c.search.darts.arch_learning_rate = 3e-4
    c.search.darts.unroll_lr = 0.025
    c.search.darts.history_every = 100
    c.search.darts.checkpoint_every = 400
    c.search.darts.final_steps = 40000
    c.search.darts.input_shape = (32, 32, 3)
    c.search.darts.mixed_impl = "grouped"  # C=16..64: the block-diagonal dense conv costs C x the flops
    return c
