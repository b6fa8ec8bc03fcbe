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
    # TA-NAS §4: the paper's CNN (F = 1024) and a 2048 -> 512 -> 1024 transform
    c.transform.net = "tanas_cnn"
    c.transform.prune_rate = 0.2
    c.transform.refine = 2
    c.transform.min_fraction = 0.001
    c.transform.max_steps = 60
    c.transform.max_train = None
    c.transform.max_val = None
    return c
