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

    c.fisher = ml_collections.ConfigDict()
    c.distance = ml_collections.ConfigDict()
    c.transform = ml_collections.ConfigDict()
    c.fuse = ml_collections.ConfigDict()
    c.search = ml_collections.ConfigDict()

    c.tanas = ml_collections.ConfigDict()
    c.tanas.bases = "offline8"
    c.tanas.target = "fashion_4class"      # held out of the bases when it is one of them
    c.tanas.metric = "logdet"
    c.tanas.top_k = 1
    return c
